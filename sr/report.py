"""The screening report: a TID 1500 Measurement Report in a Comprehensive 3D SR (highdicom).

Layout (an interface others parse; see README, "The Structured Report"):
- one TID 1501 group per evaluated image (per frame for multi-frame images) referencing it, with
  DFN001 "Manipulation score" (0-100 %) and DFN002 "Manipulation suspected" (SCT Yes/No);
- one more group for the series as a whole, referencing every evaluated image;
- when the series is suspected and the model localised the region behind its score: a TID 1410
  planar ROI group (listed first), a closed POLYLINE box on the most suspicious image, with the
  same two concepts;
- observer: the node as a device; TID 4019 algorithm identification: model name and weights version;
- Series Description "DEEPFAKE SCREEN: <verdict>", same study and patient as the source;
- PARTIAL when some images could not be evaluated, else COMPLETE; always UNVERIFIED.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from inference.scoring import Finding, ImageResult, SeriesResult, Verdict
from sr.names import names_kept_out_of_warnings
from sr.uids import derived_uids

SCHEME = "99DFNODE"
MANIPULATION_SCORE = hd.sr.CodedConcept("DFN001", SCHEME, "Manipulation score")
MANIPULATION_SUSPECTED = hd.sr.CodedConcept("DFN002", SCHEME, "Manipulation suspected")
YES = hd.sr.CodedConcept("373066001", "SCT", "Yes")
NO = hd.sr.CodedConcept("373067005", "SCT", "No")
PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")
SERIES_DESCRIPTION_PREFIX = "DEEPFAKE SCREEN: "
IMAGING_MEASUREMENTS = codes.DCM.ImagingMeasurements
# Procedure reported: codes of CID 100 (Quantitative Diagnostic Imaging Procedures), as TID 1500 asks
_PROCEDURES = {
    "CT": hd.sr.CodedConcept("25045-6", "LN", "CT unspecified body region"),
    "default": hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure"),
}


@dataclass(frozen=True)
class ReportIdentity:
    """Who writes the report and under which UIDs (deterministic, so a resend is a duplicate)."""

    device_uid: str
    device_name: str
    manufacturer: str
    series_uid: str
    sop_instance_uid: str
    instance_number: int
    series_number: int = 9901


def report_uids(source_series_uid: str, version: int) -> tuple[str, str]:
    """(SR series UID, SR SOP Instance UID) for a source series and evaluation version."""
    return derived_uids(source_series_uid, version, "sr")


def _score_content(uid_seed: str, label: str, score: float, threshold: float,
                   algorithm: hd.sr.AlgorithmIdentification) -> dict:
    """What every group holds: tracking, algorithm, DFN001 score (%) and DFN002 verdict."""
    return {
        "tracking_identifier": hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=[uid_seed]), identifier=label),
        "algorithm_id": algorithm,
        "measurements": [hd.sr.Measurement(name=MANIPULATION_SCORE, value=round(score * 100, 2), unit=PERCENT,
                                           algorithm_id=algorithm)],
        "qualitative_evaluations": [hd.sr.QualitativeEvaluation(MANIPULATION_SUSPECTED,
                                                                YES if score >= threshold else NO)],
    }


def _group(uid_seed: str, label: str, score: float, threshold: float, algorithm: hd.sr.AlgorithmIdentification,
           sources: list[hd.sr.SourceImageForMeasurementGroup]) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        source_images=sources, **_score_content(uid_seed, label, score, threshold, algorithm))


def _region_group(uid_seed: str, finding: Finding, image: Dataset, threshold: float,
                  algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410: the box around the region behind the most suspicious image's score."""
    assert finding.box is not None
    frames = [finding.frame_number] if finding.frame_number is not None else None
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array(finding.box.corners(), dtype=np.float32),
        source_image=hd.sr.SourceImageForRegion.from_source_image(image, referenced_frame_numbers=frames))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        referenced_region=region,
        **_score_content(uid_seed, "suspicious region", finding.score, threshold, algorithm))


def _source_ref(image: Dataset, result: ImageResult) -> hd.sr.SourceImageForMeasurementGroup:
    frames = [result.frame_number] if result.frame_number is not None else None
    return hd.sr.SourceImageForMeasurementGroup.from_source_image(image, referenced_frame_numbers=frames)


def citable(sources: Sequence[Dataset]) -> list[Dataset]:
    """The instances an SR can reference: those with the image attributes a source image needs."""
    usable = []
    for ds in sources:
        try:
            hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)
        except Exception:  # a malformed header fails in many ways (pydicom raises NotImplementedError for a bad VR)
            continue
        usable.append(ds)
    return usable


def build_report(sources: Sequence[Dataset], result: SeriesResult, identity: ReportIdentity,
                 previous: Dataset | None = None) -> hd.sr.Comprehensive3DSR:
    """The SR for one evaluated series. `sources` are the series' instances (headers suffice); those
    that cannot be cited (see `citable`) are left out."""
    sources = citable(sources)
    if not sources:
        raise ValueError("SourceImageSequence: a report needs at least one source instance")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    algorithm = hd.sr.AlgorithmIdentification(name=result.model_name, version=result.model_version)
    per_image: list[hd.sr.MeasurementsAndQualitativeEvaluations] = []
    evaluated = [r for r in result.evaluated if r.sop_instance_uid in by_uid]
    for n, image_result in enumerate(evaluated, start=1):
        label = f"image {n}" + (f" frame {image_result.frame_number}" if image_result.frame_number else "")
        ref = _source_ref(by_uid[image_result.sop_instance_uid], image_result)
        per_image.append(_group(f"{identity.sop_instance_uid}-{n}", label, image_result.score or 0.0,
                                result.threshold, algorithm, [ref]))
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]
    groups = []
    focus = result.focus
    if focus is not None and focus.box is not None and focus.sop_instance_uid in by_uid:
        # first: TID 1500 lists the planar ROI groups (TID 1410) before TID 1501, and validators read in order
        groups.append(_region_group(f"{identity.sop_instance_uid}-region", focus, by_uid[focus.sop_instance_uid],
                                    result.threshold, algorithm))
    if evaluated and result.score is not None:
        refs = [_source_ref(by_uid[r.sop_instance_uid], r) for r in evaluated]
        groups.append(_group(f"{identity.sop_instance_uid}-series", "series", result.score, result.threshold,
                             algorithm, refs))
    else:  # no series group cites the images for them: the per-image groups go in with the rest
        groups += per_image
        per_image = []
    if not groups:
        groups = list(_not_evaluated_groups(result, by_uid, identity))
    first = sources[0]
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=identity.device_uid, name=identity.device_name,
                                                       manufacturer_name=identity.manufacturer,
                                                       model_name="dfnode")
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    procedure = _PROCEDURES.get(str(first.get("Modality", "")), _PROCEDURES["default"])
    content = hd.sr.MeasurementReport(observation_context=context, procedure_reported=procedure,
                                      imaging_measurements=groups or None)
    not_evaluated = any(r.score is None for r in result.images)
    with names_kept_out_of_warnings():
        sr = hd.sr.Comprehensive3DSR(
            evidence=list(sources), content=content, series_instance_uid=identity.series_uid,
            series_number=identity.series_number, sop_instance_uid=identity.sop_instance_uid,
            instance_number=identity.instance_number, manufacturer=identity.manufacturer,
            is_complete=not not_evaluated and result.verdict is not Verdict.NOT_EVALUATED, is_final=False,
            is_verified=False, previous_versions=[previous] if previous is not None else None,
            series_description=series_description(result.verdict),
        )
    _insert_before_last_group(sr, per_image)
    _copy_deidentification(first, sr)
    if not_evaluated:
        sr.CompletionFlagDescription = _not_evaluated_summary(result)[:64]  # LO
    return sr


def _insert_before_last_group(sr: hd.sr.Comprehensive3DSR,
                              groups: list[hd.sr.MeasurementsAndQualitativeEvaluations]) -> None:
    """Put the per-image groups into the Imaging Measurements container before the series group.

    highdicom copies and searches the whole content tree while it builds a document (about 10 ms a
    group; 3 s for a 300-slice CT). The series group cites every image the per-image groups cite,
    so the document is built without them (same evidence) and they are inserted here. The dataset is
    what is saved and sent; highdicom's parsed `content` view of it is not used afterwards."""
    if not groups:
        return
    container = next(item for item in sr.ContentSequence
                     if item.ConceptNameCodeSequence[0].CodeValue == IMAGING_MEASUREMENTS.value)
    items = list(container.ContentSequence)
    container.ContentSequence = items[:-1] + [item for group in groups for item in group] + items[-1:]


def _not_evaluated_summary(result: SeriesResult) -> str:
    skipped = [r for r in result.images if r.score is None]
    reasons = sorted({r.reason or "unknown reason" for r in skipped})
    return f"{len(skipped)}/{len(result.images)} not evaluated: " + "; ".join(reasons)


def _not_evaluated_groups(result: SeriesResult, by_uid: dict[str, Dataset], identity: ReportIdentity
                          ) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """When nothing could be evaluated: a group per image naming it and the reason, with no score."""
    groups = []
    for n, r in enumerate((r for r in result.images if r.sop_instance_uid in by_uid), start=1):
        label = f"image {n} not evaluated: {r.reason or 'unknown reason'}"[:64]
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(entropy_srcs=[identity.sop_instance_uid, str(n)]), identifier=label),
            source_images=[_source_ref(by_uid[r.sop_instance_uid], r)]))
    if not groups:
        raise ValueError("ContentSequence: no image of the series can be referenced")
    return groups


def _copy_deidentification(source: Dataset, sr: Dataset) -> None:
    """PatientIdentityRemoved YES requires a method (Type 1C); a source that omits it gets a plain one."""
    if str(source.get("PatientIdentityRemoved", "")).upper() != "YES":
        return
    sr.PatientIdentityRemoved = "YES"
    for keyword in ("DeidentificationMethod", "DeidentificationMethodCodeSequence"):
        if keyword in source:
            setattr(sr, keyword, source[keyword].value)
    if "DeidentificationMethod" not in sr and "DeidentificationMethodCodeSequence" not in sr:
        sr.DeidentificationMethod = "SOURCE DE-IDENTIFIED; METHOD NOT STATED"


def series_description(verdict: Verdict) -> str:
    return SERIES_DESCRIPTION_PREFIX + verdict.value
