"""The SR object on its own: strict round trip, the contract's codes, predecessor, not-evaluated."""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.uid import generate_uid

import sr.image_groups
from inference.scoring import ImageResult, SeriesResult, Verdict
from sr.groups import group_values, image_label, measurement_group, source_ref
from sr.image_groups import ImageGroupWriter
from sr.item_template import encode_items
from sr.report import ReportIdentity, build_report, report_uids
from tests.helpers import ct_series, real_file
from tests.sr_contract import image_groups, item, referenced_images


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


def _images_of_both_shapes(tmp_path: Path) -> list[tuple[ImageResult, pydicom.Dataset]]:
    """CT slices (whole images) and both frames of an Enhanced CT, with scores either side of 0.5."""
    slices = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct_series(tmp_path, slices=6, size=32)]
    enhanced = pydicom.dcmread(real_file("eCT_Supplemental.dcm"), stop_before_pixels=True)
    scores = [0.0, 0.4999, 0.5, 0.123456, 0.98765, 1.0]
    pairs: list[tuple[ImageResult, pydicom.Dataset]] = [
        (ImageResult(str(ds.SOPInstanceUID), None, s), ds) for ds, s in zip(slices, scores, strict=True)]
    return pairs + [(ImageResult(str(enhanced.SOPInstanceUID), f, s), enhanced) for f, s in ((1, 0.7), (2, 0.01))]


def _usual_encoding(report_uid: str, n: int, result: ImageResult, image: pydicom.Dataset,
                    algorithm: hd.sr.AlgorithmIdentification) -> bytes:
    values = group_values(f"{report_uid}-{n}", image_label(n, result.frame_number), result.score or 0.0, 0.5)
    return encode_items(list(measurement_group(values, algorithm, [source_ref(image, result.frame_number)])),
                        ["iso8859"])


def test_per_image_parts_are_the_bytes_highdicom_and_pydicom_make(tmp_path: Path, caplog) -> None:
    algorithm = hd.sr.AlgorithmIdentification(name="lung", version="0123456789ab")
    writer = ImageGroupWriter("2.25.9", 0.5, algorithm, ["iso8859"])
    with caplog.at_level(logging.WARNING):
        for n, (result, image) in enumerate(_images_of_both_shapes(tmp_path), start=1):
            assert writer.group(n, result, image) == _usual_encoding("2.25.9", n, result, image, algorithm), n
            assert writer.source(result, image) == encode_items([source_ref(image, result.frame_number)],
                                                                ["iso8859"])
    assert not caplog.records  # both kinds and both shapes came from their templates


def test_a_template_that_differs_is_not_used(tmp_path: Path, caplog, monkeypatch) -> None:
    """If highdicom ever lays these items out otherwise, the report is still right: built the usual way."""
    group_holes, source_holes = ImageGroupWriter._group_holes, sr.image_groups._source_holes
    monkeypatch.setattr(ImageGroupWriter, "_group_holes", lambda self, g: {**group_holes(self, g), "label": "other"})
    monkeypatch.setattr(sr.image_groups, "_source_holes", lambda image: {**source_holes(image), "sop_class": "1.2"})
    algorithm = hd.sr.AlgorithmIdentification(name="lung", version="0123456789ab")
    writer = ImageGroupWriter("2.25.9", 0.5, algorithm, ["iso8859"])
    with caplog.at_level(logging.WARNING):
        for n, (result, image) in enumerate(_images_of_both_shapes(tmp_path), start=1):
            assert writer.group(n, result, image) == _usual_encoding("2.25.9", n, result, image, algorithm)
            assert writer.source(result, image) == encode_items([source_ref(image, result.frame_number)],
                                                                ["iso8859"])
    assert sum("differ from highdicom" in r.getMessage() for r in caplog.records) == 4  # per kind and shape


def test_a_long_series_report_reads_back_and_rewrites_unchanged(tmp_path: Path, strict_reading) -> None:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct_series(tmp_path, slices=40, size=32)]
    scores = [i / 40 for i in range(40)]
    result = SeriesResult([ImageResult(str(ds.SOPInstanceUID), None, s) for ds, s in zip(headers, scores, strict=True)],
                          max(scores), Verdict.SUSPECTED, "lung", "0123456789ab", 0.5)
    built = build_report(headers, result, _identity(str(headers[0].SeriesInstanceUID), 1))
    first = BytesIO()
    built.save_as(first, enforce_file_format=True)
    read = pydicom.dcmread(BytesIO(first.getvalue()))
    groups = image_groups(read)
    assert len(groups) == 41  # one per slice, then the series
    for group, ds, score in zip(groups, headers, scores, strict=False):
        assert referenced_images(group) == {(str(ds.SOPInstanceUID), None)}
        assert float(item(group, ("DFN001", "99DFNODE", "Manipulation score")).MeasuredValueSequence[0]
                     .NumericValue) == pytest.approx(score * 100)
        verdict = item(group, ("DFN002", "99DFNODE", "Manipulation suspected")).ConceptCodeSequence[0].CodeValue
        assert verdict == ("373066001" if score >= 0.5 else "373067005")
    again = BytesIO()
    read.save_as(again, enforce_file_format=True)
    assert again.getvalue() == first.getvalue()  # what was written is pydicom's own encoding of it


def test_a_long_reason_is_whole_in_the_content_and_short_in_the_flag(strict_reading) -> None:
    source = pydicom.dcmread(real_file("CT_small.dcm"), stop_before_pixels=True)
    uid = str(source.SOPInstanceUID)
    reason = ("pixel data cannot be decoded: the number of bytes of pixel data is less than expected for "
              "512 x 512 pixels of 16 bits")
    result = SeriesResult([ImageResult(uid, None, None, reason)], None, Verdict.NOT_EVALUATED, "lung", "0" * 12, 0.5)
    sr = _round_trip(build_report([source], result, _identity(str(source.SeriesInstanceUID), 1)))
    assert len(sr.CompletionFlagDescription) <= 64 and sr.CompletionFlagDescription.startswith("1/1 not evaluated")
    texts = [elem.value for elem in sr.iterall() if elem.keyword == "TextValue"]
    assert f"image 1 not evaluated: {reason}" in texts  # the whole reason, as a TEXT item
