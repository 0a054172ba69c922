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
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from inference.scoring import Finding, ImageResult, SeriesResult, Verdict
from sr.groups import (
    IMAGING_MEASUREMENTS,
    group_values,
    image_group,
    image_values,
    measurement_group,
    score_content,
    source_ref,
)
from sr.image_groups import ImageGroupWriter
from sr.item_template import insert_items, mark_encoded
from sr.names import names_kept_out_of_warnings
from sr.source_attributes import with_copyable_attributes
from sr.uids import derived_uids

SERIES_DESCRIPTION_PREFIX = "DEEPFAKE SCREEN: "
# Procedure reported: codes of CID 100 (Quantitative Diagnostic Imaging Procedures), as TID 1500 asks
_PROCEDURES = {
    "CT": hd.sr.CodedConcept("25045-6", "LN", "CT unspecified body region"),
    "default": hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure"),
}


class NothingToCite(ValueError):
    """No instance of the series can be referenced by a report (none has the attributes an SR cites)."""


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
        **score_content(group_values(uid_seed, "suspicious region", finding.score, threshold), algorithm))


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
        raise NothingToCite("SourceImageSequence: a report needs at least one source instance")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    algorithm = hd.sr.AlgorithmIdentification(name=result.model_name, version=result.model_version)
    evaluated = [r for r in result.evaluated if r.sop_instance_uid in by_uid]
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]
    groups = []
    focus = result.focus
    if focus is not None and focus.box is not None and focus.sop_instance_uid in by_uid:
        # first: TID 1500 lists the planar ROI groups (TID 1410) before TID 1501, and validators read in order
        groups.append(_region_group(f"{identity.sop_instance_uid}-region", focus, by_uid[focus.sop_instance_uid],
                                    result.threshold, algorithm))
    series_group = bool(evaluated) and result.score is not None
    if series_group:  # citing the first image; the others are added once the document is built
        refs = [source_ref(by_uid[evaluated[0].sop_instance_uid], evaluated[0].frame_number)]
        values = group_values(f"{identity.sop_instance_uid}-series", "series", result.score or 0.0,
                              result.threshold)
        groups.append(measurement_group(values, algorithm, refs))
    else:  # no series group cites the images for them: the per-image groups go in with the rest
        groups += [image_group(image_values(identity.sop_instance_uid, n, r, result.threshold), algorithm,
                               by_uid[r.sop_instance_uid], r.frame_number)
                   for n, r in enumerate(evaluated, start=1)]
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
            evidence=[with_copyable_attributes(first), *sources[1:]], content=content,
            series_instance_uid=identity.series_uid,
            series_number=identity.series_number, sop_instance_uid=identity.sop_instance_uid,
            instance_number=identity.instance_number, manufacturer=identity.manufacturer,
            is_complete=not not_evaluated and result.verdict is not Verdict.NOT_EVALUATED, is_final=False,
            is_verified=False, previous_versions=[previous] if previous is not None else None,
            series_description=series_description(result.verdict),
        )
    if series_group:
        _add_per_image_parts(sr, [(r, by_uid[r.sop_instance_uid]) for r in evaluated],
                             ImageGroupWriter(identity.sop_instance_uid, result.threshold, algorithm, _encodings(sr)))
    _copy_deidentification(first, sr)
    if not_evaluated:
        sr.CompletionFlagDescription = _not_evaluated_summary(result)[:64]  # LO
    return sr


def _encodings(sr: Dataset) -> list[str]:
    """The character sets text in the SR's content is written in."""
    return convert_encodings(sr.get("SpecificCharacterSet", default_encoding))


def _add_per_image_parts(sr: Dataset, images: list[tuple[ImageResult, Dataset]], writer: ImageGroupWriter) -> None:
    """Add the series group's other image references, and the per-image groups before the series group.

    highdicom copies and searches the whole content tree while it builds a document (about 10 ms a
    group), and pydicom writes about 95 elements a group: 2.5 s for a 300-slice CT. So the document is
    built with the series group citing only the first image (the evidence lists them all), and the rest
    is added here as encoded items (`ImageGroupWriter`), the same bytes pydicom would write for them."""
    encodings = _encodings(sr)
    container = next(item for item in sr.ContentSequence
                     if item.ConceptNameCodeSequence[0].CodeValue == IMAGING_MEASUREMENTS.value)
    series = container.ContentSequence[-1]
    after_first_image = next(n for n, item in enumerate(series.ContentSequence) if item.ValueType == "IMAGE") + 1
    insert_items(series, after_first_image, b"".join(writer.source(r, image) for r, image in images[1:]), encodings)
    groups = b"".join(writer.group(n, r, image) for n, (r, image) in enumerate(images, start=1))
    insert_items(container, len(container.ContentSequence) - 1, groups, encodings)
    mark_encoded(sr)


REPORT_NOT_BUILT = "its report could not be built from the series' attributes (details in the node's log)"


def not_evaluated(result: SeriesResult, reason: str) -> SeriesResult:
    """The same series with every image not evaluated for `reason`: what is reported when the report of
    its scores cannot be built."""
    images = [ImageResult(r.sop_instance_uid, r.frame_number, None, reason) for r in result.images]
    return SeriesResult(images, None, Verdict.NOT_EVALUATED, result.model_name, result.model_version,
                        result.threshold)


def _not_evaluated_summary(result: SeriesResult) -> str:
    skipped = [r for r in result.images if r.score is None]
    reasons = sorted({r.reason or "unknown reason" for r in skipped})
    return f"{len(skipped)}/{len(result.images)} not evaluated: " + "; ".join(reasons)


def _not_evaluated_groups(result: SeriesResult, by_uid: dict[str, Dataset], identity: ReportIdentity
                          ) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """When nothing could be evaluated: a group per image naming it and the reason, with no score."""
    groups = []
    for n, r in enumerate((r for r in result.images if r.sop_instance_uid in by_uid), start=1):
        label = f"image {n} not evaluated: {r.reason or 'unknown reason'}"  # TEXT (UT): the whole reason
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(entropy_srcs=[identity.sop_instance_uid, str(n)]), identifier=label),
            source_images=[source_ref(by_uid[r.sop_instance_uid], r.frame_number)]))
    if not groups:
        raise NothingToCite("ContentSequence: no image of the series can be referenced")
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
