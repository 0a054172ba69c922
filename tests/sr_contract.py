"""DESIGN.md's SR contract, checked on an SR as a PACS received it (shared by the interop tests)."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from inference.localisation import Box
from inference.preprocess import Preprocessing
from inference.scoring import Finding, ImageResult, SeriesResult, Verdict
from sr.key_image import build_key_image
from sr.report import ReportIdentity, build_report, report_uids
from sr.uids import ObjectIdentity
from tests.helpers import dciodvfy_errors

SCORE = ("DFN001", "99DFNODE", "Manipulation score")
SUSPECTED = ("DFN002", "99DFNODE", "Manipulation suspected")
YES_NO = {"373066001", "373067005"}


def _measurement_groups(sr: Dataset) -> list[Dataset]:
    container = next(item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126010")
    return [g for g in container.ContentSequence if g.ConceptNameCodeSequence[0].CodeValue == "125007"]


def _is_region(group: Dataset) -> bool:
    return any(item.ValueType == "SCOORD" for item in group.ContentSequence)


def image_groups(sr: Dataset) -> list[Dataset]:
    """The TID 1501 groups of a TID 1500 report: one per image, then the series group."""
    return [g for g in _measurement_groups(sr) if not _is_region(g)]


def region_groups(sr: Dataset) -> list[Dataset]:
    """The TID 1410 planar ROI groups: a box on the most suspicious image."""
    return [g for g in _measurement_groups(sr) if _is_region(g)]


def region_box(group: Dataset) -> tuple[str, list[float]]:
    """(referenced SOP Instance UID, graphic data) of a region group's closed polyline."""
    scoord = next(item for item in group.ContentSequence if item.ValueType == "SCOORD")
    assert scoord.GraphicType == "POLYLINE"
    points = [float(v) for v in scoord.GraphicData]
    assert len(points) == 10 and points[:2] == points[-2:]  # a closed rectangle
    return str(scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID), points


def item(group: Dataset, concept: tuple[str, str, str]) -> Dataset:
    for item in group.ContentSequence:
        code = item.ConceptNameCodeSequence[0]
        if (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == concept:
            return item
    raise AssertionError(f"{concept} missing from group")


def referenced_images(group: Dataset) -> set[tuple[str, int | None]]:
    refs: set[tuple[str, int | None]] = set()
    for item in group.ContentSequence:
        if item.ValueType == "IMAGE":
            ref = item.ReferencedSOPSequence[0]
            frames = ref.get("ReferencedFrameNumber")
            frame_list = [int(f) for f in (frames if isinstance(frames, list | pydicom.multival.MultiValue)
                                           else [frames])] if frames is not None else [None]
            refs.update((str(ref.ReferencedSOPInstanceUID), f) for f in frame_list)
    return refs


def check_report(sr: Dataset, sources: list[Path], tmp_path: Path) -> None:
    """Every point of DESIGN.md's SR contract, on an SR as the PACS received it."""
    first = pydicom.dcmread(sources[0], stop_before_pixels=True)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert sr.Modality == "SR"
    assert sr.StudyInstanceUID == first.StudyInstanceUID
    assert sr.SeriesInstanceUID != first.SeriesInstanceUID
    assert sr.PatientID == first.PatientID and sr.PatientName == first.PatientName
    assert sr.SeriesDescription.startswith("DEEPFAKE SCREEN: ")
    verdict = sr.SeriesDescription.removeprefix("DEEPFAKE SCREEN: ")
    assert verdict in ("SUSPECTED", "NOT SUSPECTED", "NOT EVALUATED")
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.CompletionFlag in ("PARTIAL", "COMPLETE")
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    observer = {i.ConceptNameCodeSequence[0].CodeValue: i for i in sr.ContentSequence}
    assert observer["121005"].ConceptCodeSequence[0].CodeValue == "121007"  # observer type: device
    groups = image_groups(sr)
    assert len(groups) >= 2
    source_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources}
    per_image, series_group = groups[:-1], groups[-1]
    referenced = set()
    for group in groups:
        score = item(group, SCORE)
        value = float(score.MeasuredValueSequence[0].NumericValue)
        assert 0 <= value <= 100
        assert score.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "%"
        assert item(group, SUSPECTED).ConceptCodeSequence[0].CodeValue in YES_NO
        algorithm = {i.ConceptNameCodeSequence[0].CodeValue: i.TextValue for i in group.ContentSequence
                     if i.ValueType == "TEXT"}
        assert algorithm["111001"] and len(algorithm["111003"]) == 12  # TID 4019: name, version
    for group in per_image:
        refs = referenced_images(group)
        assert len(refs) == 1
        referenced |= refs
    assert {uid for uid, _ in referenced} <= source_uids
    assert referenced_images(series_group) == referenced
    series_score = float(item(series_group, SCORE).MeasuredValueSequence[0].NumericValue)
    image_scores = [float(item(g, SCORE).MeasuredValueSequence[0].NumericValue) for g in per_image]
    assert abs(series_score - max(image_scores)) < 0.02  # the cards' rule is max
    suspected = item(series_group, SUSPECTED).ConceptCodeSequence[0].CodeValue == "373066001"
    assert verdict == ("SUSPECTED" if suspected else "NOT SUSPECTED")
    check_region(sr, sources, suspected)
    out = tmp_path / f"{sr.SOPInstanceUID}.dcm"
    sr.save_as(out, enforce_file_format=True)
    assert dciodvfy_errors(out) == []




def check_region(sr: Dataset, sources: list[Path], suspected: bool) -> None:
    """A suspected series with a localised score has one box, inside the image it outlines."""
    regions = region_groups(sr)
    if not suspected:
        assert regions == []
        return
    assert len(regions) <= 1
    for group in regions:
        uid, points = region_box(group)
        image = next(ds for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in sources)
                     if ds.SOPInstanceUID == uid)
        columns, rows = points[0::2], points[1::2]
        assert 0 <= min(columns) < max(columns) < image.Columns and 0 <= min(rows) < max(rows) < image.Rows
        assert float(item(group, SCORE).MeasuredValueSequence[0].NumericValue) >= 0


def check_key_image(image: Dataset, sr: Dataset, sources: list[Path]) -> None:
    """The Secondary Capture sent beside the SR: same study, derived, burned in, pointing at its source,
    a banner on top and, when the SR has a region, a red outline."""
    assert image.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (image.StudyInstanceUID, image.PatientID) == (sr.StudyInstanceUID, sr.PatientID)
    assert list(image.ImageType) == ["DERIVED", "SECONDARY"] and image.BurnedInAnnotation == "YES"
    source_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources}
    referenced = str(image.SourceImageSequence[0].ReferencedSOPInstanceUID)
    assert referenced in source_uids
    pixels = image.pixel_array
    assert image.PhotometricInterpretation == "RGB" and pixels.ndim == 3
    banner_rows = pixels[: max(20, pixels.shape[1] // 12)]
    assert (banner_rows.min(axis=2) > 200).any(), "no banner text"
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    regions = region_groups(sr)
    if regions:
        assert region_box(regions[0])[0] == referenced
        assert red.sum() > 20, "the suspicious region is not outlined"
    else:
        assert red.sum() == 0


def suspected_report_and_key_image(source: Dataset, threshold: float | None = None) -> tuple[Dataset, Dataset]:
    """The SR and key image the node makes for a one-image series found suspected (score 0.97, a box)."""
    uid = str(source.SOPInstanceUID)
    focus = Finding(uid, None, 0.97, Box(10, 10, 60, 80))
    result = SeriesResult([ImageResult(uid, None, 0.97)], 0.97, Verdict.SUSPECTED, "knee", "0" * 12, 0.5, focus)
    series_uid, sr_uid = report_uids(str(source.SeriesInstanceUID), 1)
    sr = build_report([source], result, ReportIdentity(generate_uid(), "DFNODE", "dfnode", series_uid, sr_uid, 1))
    key = build_key_image(source, focus, result.verdict, result.score, Preprocessing("xray", 512, native=True),
                          ObjectIdentity.derived(str(source.SeriesInstanceUID), 1, "key"), threshold)
    return sr, key
