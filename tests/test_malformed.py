"""Bad input gets a DICOM failure status and loses nothing else; the node keeps serving."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import select

from node.db import Series
from node.service import Node
from tests.helpers import Receiver, copy_with_new_uids, real_file, send, wait_for


def _send_dataset(port: int, ds: pydicom.Dataset, sop_class: str, syntax: str) -> int | None:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="DFNODE")
    assert assoc.is_established
    rsp = assoc.send_c_store(ds)
    assoc.release()
    return int(rsp.Status) if rsp and "Status" in rsp else None


def test_missing_study_uid_and_bad_uids_are_refused(running_node: Node, receiver: Receiver, tmp_path: Path) -> None:
    good = copy_with_new_uids(real_file("CT_small.dcm"), tmp_path)
    ds = pydicom.dcmread(good)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    del ds.StudyInstanceUID
    assert _send_dataset(running_node.port, ds, ds.SOPClassUID, syntax) == 0xC000
    ds = pydicom.dcmread(good)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom rightly warns: this is the malformed input under test
        ds.SeriesInstanceUID = "../../etc/passwd"
    assert _send_dataset(running_node.port, ds, ds.SOPClassUID, syntax) == 0xC000
    assert not list(running_node.config.storage.data_dir.rglob("*.dcm"))
    # the node goes on serving, and the good instance is evaluated
    assert send([good], running_node.port) == [0x0000]
    wait_for(lambda: receiver.reports(), timeout=60)


def test_truncated_pixel_data_is_stored_and_reported_not_evaluated(running_node: Node, receiver: Receiver,
                                                                    tmp_path: Path) -> None:
    ds = pydicom.dcmread(real_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.PixelData = ds.PixelData[:1000]
    status = _send_dataset(running_node.port, ds, ds.SOPClassUID, str(ds.file_meta.TransferSyntaxUID))
    assert status == 0x0000  # acknowledged: the PACS may forward anything; the reason is in the SR
    sr = wait_for(lambda: receiver.reports(), timeout=60)[0]
    assert sr.SeriesDescription == "DEEPFAKE SCREEN: NOT EVALUATED"
    assert "cannot be decoded" in sr.CompletionFlagDescription


def test_series_with_nothing_an_sr_can_cite_is_recorded_not_reported(running_node: Node, receiver: Receiver) -> None:
    """Stored and acknowledged, but no report can reference it: the series records why, and no SR goes out."""
    ds = pydicom.dcmread(real_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    for keyword in ("PixelData", "Rows", "Columns", "SamplesPerPixel", "PixelRepresentation"):
        delattr(ds, keyword)
    assert _send_dataset(running_node.port, ds, ds.SOPClassUID, str(ds.file_meta.TransferSyntaxUID)) == 0x0000

    def recorded() -> str | None:
        with running_node.db.session() as s:
            series = s.scalars(select(Series).where(Series.series_uid == ds.SeriesInstanceUID)).first()
            return series.error if series is not None else None
    error = wait_for(recorded, timeout=60)
    assert error == "not evaluated: no usable instance: no pixel data"
    assert not receiver.reports()
