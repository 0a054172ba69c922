"""Orthanc as the hospital's PACS: it sends studies to dfnode, and dfnode's results land in the study."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from inference.model import Classifier
from node.service import Node
from scp.stow import stow_files
from tests.conftest import node_config
from tests.helpers import copy_with_new_uids, ct_series, free_port, real_file, send
from tests.orthanc import FORWARD_ON_ARRIVAL, Orthanc, start_orthanc
from tests.sr_contract import check_key_image, check_report

pytestmark = pytest.mark.interop


def _node_for(orthanc: Orthanc, tmp_path: Path, model_dir: Path, classifiers: dict[str, Classifier],
              dicomweb: bool = False) -> Node:
    """dfnode with Orthanc as its one peer: Orthanc sends studies and receives the results."""
    peer = {"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "may_send": True}
    peer |= {"dicomweb_url": f"{orthanc.url}/dicom-web"} if dicomweb else {"port": orthanc.dicom_port}
    node = Node(node_config(tmp_path / "var", model_dir, peers=[peer]), classifiers).start(port=0)
    orthanc.register_dfnode(node.port)
    return node


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    pacs = start_orthanc(tmp_path / "orthanc")
    yield pacs
    pacs.stop()


def _check_results(orthanc: Orthanc, study_id: str, files: list[Path], tmp_path: Path) -> None:
    """The SR and the key image are in the very study Orthanc sent, and honour the contract."""
    results = orthanc.wait_for_results(study_id)
    assert len(results["SR"]) == 1 and len(results["OT"]) == 1
    sr, key_image = results["SR"][0], results["OT"][0]
    check_report(sr, files, tmp_path)
    check_key_image(key_image, sr, files)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert sr.StudyInstanceUID == key_image.StudyInstanceUID == source.StudyInstanceUID


def test_knee_study_round_trip(orthanc: Orthanc, tmp_path: Path, model_dir: Path, classifiers) -> None:
    node = _node_for(orthanc, tmp_path, model_dir, classifiers)
    try:
        files = [copy_with_new_uids(real_file("RG3_UNCR.dcm"), tmp_path / "in")]
        study_id = orthanc.upload(files)
        assert orthanc.post("/modalities/dfnode/echo") == {}
        orthanc.post("/modalities/dfnode/store", {"Resources": [study_id], "Synchronous": True})
        _check_results(orthanc, study_id, files, tmp_path)
    finally:
        node.stop()


def test_ct_series_round_trip(orthanc: Orthanc, tmp_path: Path, model_dir: Path, classifiers) -> None:
    node = _node_for(orthanc, tmp_path, model_dir, classifiers)
    try:
        files = ct_series(tmp_path / "ct", slices=24)
        study_id = orthanc.upload(files)
        orthanc.post("/modalities/dfnode/store", {"Resources": [study_id], "Synchronous": True})
        _check_results(orthanc, study_id, files, tmp_path)
    finally:
        node.stop()


def test_orthanc_forwards_on_arrival(tmp_path: Path, model_dir: Path, classifiers) -> None:
    """A modality sends to the PACS; the PACS's own rule forwards each image to dfnode, not the results."""
    orthanc = start_orthanc(tmp_path / "orthanc", lua=FORWARD_ON_ARRIVAL)
    node = _node_for(orthanc, tmp_path, model_dir, classifiers)
    try:
        files = ct_series(tmp_path / "ct", slices=8) + [copy_with_new_uids(real_file("RG3_UNCR.dcm"), tmp_path / "x")]
        assert send(files[:8], orthanc.dicom_port, calling="CT1", called="ORTHANC") == [0x0000] * 8
        assert send(files[8:], orthanc.dicom_port, calling="CR1", called="ORTHANC") == [0x0000]
        for group in (files[:8], files[8:]):
            uid = pydicom.dcmread(group[0], stop_before_pixels=True).StudyInstanceUID
            study_id = orthanc.post("/tools/lookup", raw=str(uid).encode())[0]["ID"]
            _check_results(orthanc, study_id, group, tmp_path)
    finally:
        node.stop()
        orthanc.stop()


def test_results_by_stow_rs(orthanc: Orthanc, tmp_path: Path, model_dir: Path, classifiers) -> None:
    """A DICOMweb destination: the SR and key image go by STOW-RS and can be found by QIDO-RS."""
    node = _node_for(orthanc, tmp_path, model_dir, classifiers, dicomweb=True)
    try:
        files = [copy_with_new_uids(real_file("RG3_UNCR.dcm"), tmp_path / "in")]
        study_id = orthanc.upload(files)
        orthanc.post("/modalities/dfnode/store", {"Resources": [study_id], "Synchronous": True})
        _check_results(orthanc, study_id, files, tmp_path)
    finally:
        node.stop()
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    found = DICOMwebClient(f"{orthanc.url}/dicom-web").search_for_series(study_instance_uid=uid)
    assert {s["00080060"]["Value"][0] for s in found} == {"CR", "SR", "OT"}


def test_stow_rs_failures_are_classified(orthanc: Orthanc, tmp_path: Path) -> None:
    report = copy_with_new_uids(real_file("CT_small.dcm"), tmp_path)
    assert stow_files([report], f"{orthanc.url}/dicom-web", 10).delivered
    down = stow_files([report], f"http://127.0.0.1:{free_port()}/dicom-web", 5)
    assert not down.delivered and down.retryable and "no connection" in down.detail
    wrong = stow_files([report], f"{orthanc.url}/no-such-root", 10)
    assert not wrong.delivered and not wrong.retryable and "HTTP 404" in wrong.detail
