"""Scoring a series: per-image results, the card's aggregation rule, the verdict."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from inference.localisation import Box
from inference.model import Classifier
from inference.preprocess import prepare_dataset
from node.errors import NotEvaluable


class Verdict(StrEnum):
    SUSPECTED = "SUSPECTED"
    NOT_SUSPECTED = "NOT SUSPECTED"
    NOT_EVALUATED = "NOT EVALUATED"


@dataclass(frozen=True)
class ImageResult:
    """The result for one image (one frame of a multi-frame image has its own)."""

    sop_instance_uid: str
    frame_number: int | None
    score: float | None  # probability in [0, 1]; None when not evaluated
    reason: str | None = None  # why not evaluated


@dataclass(frozen=True)
class Finding:
    """The series' most suspicious image; `box` outlines what drove its score when the series is suspected."""

    sop_instance_uid: str
    frame_number: int | None
    score: float
    box: Box | None


@dataclass(frozen=True)
class SeriesResult:
    """All image results of one series, the series score and the verdict."""

    images: list[ImageResult]
    score: float | None
    verdict: Verdict
    model_name: str
    model_version: str
    threshold: float
    focus: Finding | None = None

    @property
    def evaluated(self) -> list[ImageResult]:
        return [r for r in self.images if r.score is not None]


def aggregate(scores: list[float], rule: str) -> float:
    """Series score from image scores: `max` lets one tampered slice flag the series."""
    if not scores:
        raise ValueError("no scores to aggregate")
    if rule == "max":
        return max(scores)
    if rule == "mean":
        return sum(scores) / len(scores)
    raise ValueError(f"unknown aggregation rule {rule!r}")


def verdict_for(score: float | None, threshold: float) -> Verdict:
    if score is None:
        return Verdict.NOT_EVALUATED
    return Verdict.SUSPECTED if score >= threshold else Verdict.NOT_SUSPECTED


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def score_files(classifier: Classifier, paths: Iterable[Path]) -> tuple[SeriesResult, list[Dataset]]:
    """Evaluate the DICOM files of one series; unusable images are reported, never raised.

    Each file is read once; its header (the dataset without pixel data) comes back for the report."""
    prep = classifier.card.preprocessing_spec()
    pending: list[tuple[str, int | None]] = []
    images = []
    shapes: list[tuple[int, int]] = []
    results: list[ImageResult] = []
    headers: list[Dataset] = []
    for path in paths:
        try:
            ds = dcmread(path)
            uid = str(ds.SOPInstanceUID)
        except Exception as exc:  # a spooled file that cannot be read is reported, not raised
            results.append(ImageResult(path.stem, None, None, f"cannot be read: {exc}"))
            continue
        try:
            for frame in prepare_dataset(ds, prep):
                pending.append((uid, frame.frame_number))
                images.append(frame.pixels)
                shapes.append(frame.source_shape)
        except NotEvaluable as exc:
            results.append(ImageResult(uid, None, None, str(exc)))
        except Exception as exc:  # malformed attributes surface as many types; one image never fails a series
            results.append(ImageResult(uid, None, None, f"cannot be prepared: {exc.__class__.__name__}: {exc}"))
        for keyword in _PIXEL_KEYWORDS:  # keep the series' memory to headers
            if keyword in ds:
                del ds[keyword]
        headers.append(ds)
    probabilities = classifier.scores(images)
    results.extend(ImageResult(uid, frame, float(p)) for (uid, frame), p in zip(pending, probabilities,
                                                                                 strict=True))
    evaluated = [r.score for r in results if r.score is not None]
    score = aggregate(evaluated, classifier.card.series_aggregation) if evaluated else None
    verdict = verdict_for(score, classifier.card.threshold)
    focus = None
    if len(probabilities):
        top = int(np.argmax(probabilities))
        box = classifier.localise(images[top], shapes[top]) if verdict is Verdict.SUSPECTED else None
        focus = Finding(pending[top][0], pending[top][1], float(probabilities[top]), box)
    result = SeriesResult(results, score, verdict, classifier.name, classifier.version, classifier.card.threshold,
                          focus)
    return result, headers
