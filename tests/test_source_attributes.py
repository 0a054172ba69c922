"""Every received series gets an SR: a source without any one of the attributes the SR and the key
image copy from it (or with a value a strict builder refuses) still gets both, and both pass dciodvfy."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from sr.source_attributes import COPIED_FROM_SOURCE
from tests.helpers import copy_with_new_uids, dciodvfy_errors, real_file, send, wait_for
from tests.sr_contract import suspected_report_and_key_image

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
    sr, image = suspected_report_and_key_image(source)
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
