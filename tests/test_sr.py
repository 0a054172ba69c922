"""The SR object on its own: strict round trip, the contract's codes, predecessor, not-evaluated."""

from __future__ import annotations

from io import BytesIO

import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.uid import generate_uid

from inference.scoring import ImageResult, SeriesResult, Verdict
from sr.report import ReportIdentity, build_report, report_uids
from tests.helpers import real_file


@pytest.fixture
def strict_reading():
    old = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
    yield
    pydicom_config.settings.reading_validation_mode = old


def _identity(source_series: str, version: int) -> ReportIdentity:
    series, instance = report_uids(source_series, version)
    return ReportIdentity(generate_uid(), "DFNODE", "dfnode", series, instance, version)


def _round_trip(sr) -> pydicom.Dataset:
    buf = BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buf.getvalue()))


def test_uids_are_deterministic_per_series_and_version() -> None:
    assert report_uids("1.2.3", 1) == report_uids("1.2.3", 1)
    assert report_uids("1.2.3", 1)[0] == report_uids("1.2.3", 2)[0]  # one SR series per source series
    assert report_uids("1.2.3", 1)[1] != report_uids("1.2.3", 2)[1]


def test_strict_round_trip_and_codes(strict_reading) -> None:
    source = pydicom.dcmread(real_file("RG3_UNCR.dcm"), stop_before_pixels=True)
    uid = str(source.SOPInstanceUID)
    result = SeriesResult([ImageResult(uid, None, 0.973)], 0.973, Verdict.SUSPECTED, "knee", "0123456789ab", 0.5)
    sr = _round_trip(build_report([source], result, _identity(str(source.SeriesInstanceUID), 1)))
    assert sr.SeriesDescription == "DEEPFAKE SCREEN: SUSPECTED"
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    text = str(sr)
    for code in ("DFN001", "DFN002", "99DFNODE", "373066001", "Manipulation score", "97.3"):
        assert code in text


def test_predecessor_and_not_evaluated(strict_reading) -> None:
    source = pydicom.dcmread(real_file("CT_small.dcm"), stop_before_pixels=True)
    series_uid, uid = str(source.SeriesInstanceUID), str(source.SOPInstanceUID)
    first = _round_trip(build_report([source], SeriesResult([ImageResult(uid, None, 0.1)], 0.1,
                                                            Verdict.NOT_SUSPECTED, "lung", "0" * 12, 0.5),
                                     _identity(series_uid, 1)))
    assert first.SeriesDescription == "DEEPFAKE SCREEN: NOT SUSPECTED"
    skipped = SeriesResult([ImageResult(uid, None, None, "localizer (scout) image")], None, Verdict.NOT_EVALUATED,
                           "lung", "0" * 12, 0.5)
    second = _round_trip(build_report([source], skipped, _identity(series_uid, 2), previous=first))
    assert second.SeriesDescription == "DEEPFAKE SCREEN: NOT EVALUATED"
    assert second.CompletionFlag == "PARTIAL"
    assert "localizer" in second.CompletionFlagDescription
    ref = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert "DFN001" not in str(second)


def test_report_needs_a_source() -> None:
    result = SeriesResult([], None, Verdict.NOT_EVALUATED, "knee", "0" * 12, 0.5)
    with pytest.raises(ValueError, match="SourceImageSequence"):
        build_report([], result, _identity("1.2.3", 1))
