"""Scoring a series: per-image results, the card's aggregation rule, the verdict."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from inference.localisation import Box
from inference.model import Classifier
from inference.preprocess import Preprocessing, prepare_dataset
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


@dataclass
class _PreparedChunk:
    """Some files of a series read and prepared: model inputs, what they are, and what failed."""

    keys: list[tuple[str, int | None]]  # (SOP Instance UID, frame number) per image
    images: list[np.ndarray]
    shapes: list[tuple[int, int]]
    failures: list[ImageResult]
    headers: list[Dataset]


def _prepare_chunk(paths: list[Path], prep: Preprocessing) -> _PreparedChunk:
    """Read and prepare files; unusable images become failures, never exceptions."""
    chunk = _PreparedChunk([], [], [], [], [])
    for path in paths:
        try:
            ds = dcmread(path)
            uid = str(ds.SOPInstanceUID)
        except Exception as exc:  # a spooled file that cannot be read is reported, not raised
            chunk.failures.append(ImageResult(path.stem, None, None, f"cannot be read: {exc}"))
            continue
        try:
            for frame in prepare_dataset(ds, prep):
                chunk.keys.append((uid, frame.frame_number))
                chunk.images.append(frame.pixels)
                chunk.shapes.append(frame.source_shape)
        except NotEvaluable as exc:
            chunk.failures.append(ImageResult(uid, None, None, str(exc)))
        except Exception as exc:  # malformed attributes surface as many types; one image never fails a series
            chunk.failures.append(ImageResult(uid, None, None, f"cannot be prepared: {exc.__class__.__name__}: {exc}"))
        for keyword in _PIXEL_KEYWORDS:  # keep the series' memory to headers
            if keyword in ds:
                del ds[keyword]
        chunk.headers.append(ds)
    return chunk


def score_files(classifier: Classifier, paths: Iterable[Path]) -> tuple[SeriesResult, list[Dataset]]:
    """Evaluate the DICOM files of one series; unusable images are reported, never raised.

    Each file is read once; its header (the dataset without pixel data) comes back for the report.
    The next batch of files is read and prepared on a second thread while the model scores this one,
    and only the most suspicious image is kept, so a long series costs one batch of images in memory."""
    prep = classifier.card.preprocessing_spec()
    files = list(paths)
    parts = [files[i:i + classifier.batch_size] for i in range(0, len(files), classifier.batch_size)]
    failures: list[ImageResult] = []
    evaluated: list[ImageResult] = []
    headers: list[Dataset] = []
    top: tuple[float, tuple[str, int | None], np.ndarray, tuple[int, int]] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare") as pool:
        upcoming = [pool.submit(_prepare_chunk, part, prep) for part in parts[:1]]
        for n in range(len(parts)):
            chunk = upcoming.pop().result()
            if n + 1 < len(parts):
                upcoming.append(pool.submit(_prepare_chunk, parts[n + 1], prep))
            probabilities = classifier.scores(chunk.images)
            failures += chunk.failures
            headers += chunk.headers
            evaluated += [ImageResult(uid, frame, float(p)) for (uid, frame), p in zip(chunk.keys, probabilities,
                                                                                      strict=True)]
            if len(probabilities):
                best = int(np.argmax(probabilities))
                if top is None or probabilities[best] > top[0]:
                    top = (float(probabilities[best]), chunk.keys[best], chunk.images[best], chunk.shapes[best])
    results = failures + evaluated
    scores = [r.score for r in evaluated if r.score is not None]
    score = aggregate(scores, classifier.card.series_aggregation) if scores else None
    verdict = verdict_for(score, classifier.card.threshold)
    focus = None
    if top is not None:
        probability, (uid, frame), image, shape = top
        box = classifier.localise(image, shape) if verdict is Verdict.SUSPECTED else None
        focus = Finding(uid, frame, probability, box)
    result = SeriesResult(results, score, verdict, classifier.name, classifier.version, classifier.card.threshold,
                          focus)
    return result, headers
