"""What a TID 1501 measurement group holds: the contract's codes, and the highdicom objects that carry them.

Every group (per image, per series, the region) has a tracking identifier, the algorithm, DFN001
"Manipulation score" in percent and DFN002 "Manipulation suspected" Yes/No (see DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from inference.scoring import ImageResult

SCHEME = "99DFNODE"
MANIPULATION_SCORE = hd.sr.CodedConcept("DFN001", SCHEME, "Manipulation score")
MANIPULATION_SUSPECTED = hd.sr.CodedConcept("DFN002", SCHEME, "Manipulation suspected")
YES = hd.sr.CodedConcept("373066001", "SCT", "Yes")
NO = hd.sr.CodedConcept("373067005", "SCT", "No")
PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")
IMAGING_MEASUREMENTS = codes.DCM.ImagingMeasurements


@dataclass(frozen=True)
class GroupValues:
    """The values one group carries: its tracking UID and label, the score in percent, the verdict code."""

    tracking_uid: str
    label: str
    percent: float
    verdict: hd.sr.CodedConcept


def group_values(uid_seed: str, label: str, score: float, threshold: float) -> GroupValues:
    """A group's values: a tracking UID derived from `uid_seed`, the score (0-1) as a percentage."""
    return GroupValues(generate_uid(entropy_srcs=[uid_seed]), label, round(score * 100, 2),
                       YES if score >= threshold else NO)


def score_content(values: GroupValues, algorithm: hd.sr.AlgorithmIdentification) -> dict:
    """The keyword arguments every group shares: tracking, algorithm, DFN001 score (%) and DFN002 verdict."""
    return {
        "tracking_identifier": hd.sr.TrackingIdentifier(uid=values.tracking_uid, identifier=values.label),
        "algorithm_id": algorithm,
        "measurements": [hd.sr.Measurement(name=MANIPULATION_SCORE, value=values.percent, unit=PERCENT,
                                           algorithm_id=algorithm)],
        "qualitative_evaluations": [hd.sr.QualitativeEvaluation(MANIPULATION_SUSPECTED, values.verdict)],
    }


def measurement_group(values: GroupValues, algorithm: hd.sr.AlgorithmIdentification,
                      sources: list[hd.sr.SourceImageForMeasurementGroup]
                      ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A TID 1501 group citing `sources`."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(source_images=sources, **score_content(values, algorithm))


def source_ref(image: Dataset, frame_number: int | None) -> hd.sr.SourceImageForMeasurementGroup:
    """A reference to an image (and its frame, for multi-frame images)."""
    frames = [frame_number] if frame_number is not None else None
    return hd.sr.SourceImageForMeasurementGroup.from_source_image(image, referenced_frame_numbers=frames)


def image_label(n: int, frame_number: int | None) -> str:
    """The tracking identifier of the n-th per-image group."""
    return f"image {n}" + (f" frame {frame_number}" if frame_number else "")


def image_values(report_uid: str, n: int, result: ImageResult, threshold: float) -> GroupValues:
    """The values of a report's n-th (1-based) per-image group."""
    return group_values(f"{report_uid}-{n}", image_label(n, result.frame_number), result.score or 0.0, threshold)


def image_group(values: GroupValues, algorithm: hd.sr.AlgorithmIdentification, image: Dataset,
                frame_number: int | None) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A per-image TID 1501 group citing `image` (and its frame)."""
    return measurement_group(values, algorithm, [source_ref(image, frame_number)])
