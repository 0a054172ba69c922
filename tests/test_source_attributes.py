"""Every received series gets an SR: a source without any one of the attributes the SR and the key
image copy from it (or with a value a strict builder refuses) still gets both, and both pass dciodvfy."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from inference.localisation import Box
from inference.preprocess import Preprocessing
from inference.scoring import Finding, ImageResult, SeriesResult, Verdict
from sr.key_image import build_key_image
from sr.report import ReportIdentity, build_report, report_uids
from sr.source_attributes import COPIED_FROM_SOURCE
from sr.uids import ObjectIdentity
from tests.helpers import copy_with_new_uids, dciodvfy_errors, real_file, send, wait_for

CASES = [(keyword, None) for keyword, _vr in COPIED_FROM_SOURCE] + [("PatientSex", "MALE"), ("PatientBirthDate", "")]


def _source(keyword: str, value: str | None) -> pydicom.Dataset:
    source = pydicom.dcmread(real_file("RG3_UNCR.dcm"))
    if value is None:
        if keyword in source:
            del source[keyword]
    else:
        setattr(source, keyword, value)
    return source


@pytest.mark.parametrize(("keyword", "value"), CASES)
def test_a_source_without_it_gets_a_valid_sr_and_key_image(keyword: str, value: str | None, tmp_path: Path) -> None:
    source = _source(keyword, value)
    uid = str(source.SOPInstanceUID)
    focus = Finding(uid, None, 0.97, Box(10, 10, 60, 80))
    result = SeriesResult([ImageResult(uid, None, 0.97)], 0.97, Verdict.SUSPECTED, "knee", "0" * 12, 0.5, focus)
    series_uid, sr_uid = report_uids(str(source.SeriesInstanceUID), 1)
    sr = build_report([source], result, ReportIdentity(generate_uid(), "DFNODE", "dfnode", series_uid, sr_uid, 1))
    image = build_key_image(source, focus, result.verdict, result.score, Preprocessing("xray", 512, native=True),
                            ObjectIdentity.derived(str(source.SeriesInstanceUID), 1, "key"))
    for name, made in (("sr", sr), ("key", image)):
        path = tmp_path / f"{name}.dcm"
        made.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], (name, keyword)
        read = pydicom.dcmread(path)
        assert keyword in read  # Type 2: present, empty when the source had nothing usable
        if keyword in source and value is None:
            assert read[keyword].value == source[keyword].value


def test_a_report_that_cannot_be_built_is_sent_as_not_evaluated(running_node, receiver, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise ValueError("a value highdicom refuses")

    monkeypatch.setattr("sr.report.measurement_group", broken)
    monkeypatch.setattr("sr.report.image_group", broken)
    path = copy_with_new_uids(real_file("RG3_UNCR.dcm"), tmp_path, StudyDescription="knee")
    assert send([path], running_node.port) == [0x0000]
    study = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    reports = wait_for(lambda: [sr for sr in receiver.reports() if sr.StudyInstanceUID == study], timeout=120)
    sr = reports[0]
    assert sr.SeriesDescription == "DEEPFAKE SCREEN: NOT EVALUATED" and sr.CompletionFlag == "PARTIAL"
    assert "could not be built" in sr.CompletionFlagDescription
