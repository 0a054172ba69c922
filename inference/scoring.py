"""Scoring a series: per-image results, the card's aggregation rule, the verdict."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from pydicom import dcmread
from pydicom.dataset import Dataset

from inference.localisation import Box
from inference.model import Classifier
from inference.pixels import keep_header_only, read_image
from inference.preprocess import prepare_dataset
from inference.slices import neighbour_positions, sampled_positions, slice_order
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


@dataclass
class _PreparedChunk:
    """Some files of a series read and prepared: model inputs, what they are, and what failed."""

    keys: list[tuple[str, int | None]]  # (SOP Instance UID, frame number) per image
    images: list[np.ndarray]
    shapes: list[tuple[int, int]]
    failures: list[ImageResult]
    headers: list[Dataset]
    batch: torch.Tensor | None = None  # the images as the network's input


def _prepare_chunk(paths: list[Path], classifier: Classifier) -> _PreparedChunk:
    """Read and prepare files, and make the network's input batch of them; unusable images become
    failures, never exceptions."""
    prep = classifier.card.preprocessing_spec()
    chunk = _PreparedChunk([], [], [], [], [])
    for path in paths:
        try:
            ds = read_image(path)
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
        keep_header_only(ds)  # keep the series' memory to headers
        chunk.headers.append(ds)
    if chunk.images:
        chunk.batch = classifier.input_batch(chunk.images)
    return chunk


_Top = tuple[float, tuple[str, int | None], np.ndarray, tuple[int, int]]  # the most suspicious image


@dataclass
class _Scored:
    """What scoring some files of a series gave: results, failures, headers, the most suspicious image."""

    evaluated: list[ImageResult]
    failures: list[ImageResult]
    headers: list[Dataset]
    top: _Top | None

    def merge(self, other: _Scored) -> None:
        self.evaluated += other.evaluated
        self.failures += other.failures
        self.headers += other.headers
        if other.top is not None and (self.top is None or other.top[0] > self.top[0]):
            self.top = other.top


def score_files(classifier: Classifier, paths: Iterable[Path], slice_stride: int = 1, preparing_threads: int = 1
                ) -> tuple[SeriesResult, list[Dataset]]:
    """Evaluate the DICOM files of one series; unusable images are reported, never raised.

    Each file is read once; its header (the dataset without pixel data) comes back for the report.
    With `slice_stride` n > 1, every n-th slice and the neighbours of suspicious ones are scored
    (`inference.slices`); the others are reported as not evaluated, with the stride as the reason.
    `preparing_threads` read and prepare the next batches while the model scores one."""
    files = list(paths)
    if slice_stride > 1 and len(files) > slice_stride:
        scored = _score_strided(classifier, files, slice_stride, preparing_threads)
    else:
        scored = _score_paths(classifier, files, preparing_threads)
    return _series_result(classifier, scored), scored.headers


def _score_paths(classifier: Classifier, files: list[Path], preparing_threads: int = 1) -> _Scored:
    """Score files in batches. The next batches (one per preparing thread) are read and prepared while
    the model scores this one, in order, and only the most suspicious image is kept, so a long series
    costs a few batches of images in memory."""
    parts = [files[i:i + classifier.batch_size] for i in range(0, len(files), classifier.batch_size)]
    ahead = max(1, preparing_threads)
    scored = _Scored([], [], [], None)
    with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="prepare") as pool:
        upcoming = deque(pool.submit(_prepare_chunk, part, classifier) for part in parts[:ahead])
        for n in range(len(parts)):
            chunk = upcoming.popleft().result()
            if n + ahead < len(parts):
                upcoming.append(pool.submit(_prepare_chunk, parts[n + ahead], classifier))
            probabilities = (classifier.batch_scores(chunk.batch) if chunk.batch is not None
                             else np.zeros(0, dtype=np.float32))
            top = None
            if len(probabilities):
                best = int(np.argmax(probabilities))
                top = (float(probabilities[best]), chunk.keys[best], chunk.images[best], chunk.shapes[best])
            scored.merge(_Scored([ImageResult(uid, frame, float(p))
                                  for (uid, frame), p in zip(chunk.keys, probabilities, strict=True)],
                                 chunk.failures, chunk.headers, top))
    return scored


def _score_strided(classifier: Classifier, files: list[Path], stride: int, preparing_threads: int) -> _Scored:
    """Every `stride`-th slice in anatomical order, then the unscored neighbours of suspicious ones."""
    headers = [_read_header(path) for path in files]
    order = slice_order(headers)
    uid_at = [_sop_instance_uid(headers[i]) for i in order]
    unreadable = [p for p, uid in enumerate(uid_at) if uid is None]  # scored first, so reported as failures
    first = sorted(set(sampled_positions(len(files), stride)) | set(unreadable))
    scored = _score_paths(classifier, [files[order[p]] for p in first], preparing_threads)
    score_of = {r.sop_instance_uid: r.score or 0.0 for r in scored.evaluated}
    flagged = [p for p in first if score_of.get(uid_at[p] or "", 0.0) >= classifier.card.threshold]
    more = neighbour_positions(flagged, stride, len(files), set(first))
    if more:
        scored.merge(_score_paths(classifier, [files[order[p]] for p in more], preparing_threads))
    rank = {uid: p for p, uid in enumerate(uid_at) if uid is not None}
    scored.evaluated.sort(key=lambda r: (rank.get(r.sop_instance_uid, len(rank)), r.frame_number or 0))
    done = set(first) | set(more)
    scored.failures += [ImageResult(uid, None, None, f"skipped by slice stride {stride}")
                        for p, uid in enumerate(uid_at) if uid is not None and p not in done]
    readable = {order[p] for p, uid in enumerate(uid_at) if uid is not None}
    scored.headers = [ds for n, ds in enumerate(headers) if n in readable and ds is not None]  # all are cited
    return scored


def _sop_instance_uid(ds: Dataset | None) -> str | None:
    try:
        return str(ds.SOPInstanceUID) if ds is not None else None
    except Exception:  # a malformed header: the slice is scored with the first ones and reported from there
        return None


def _read_header(path: Path) -> Dataset | None:
    try:
        return dcmread(path, stop_before_pixels=True)
    except Exception:  # scored (and reported as unreadable) with the first slices
        return None


def _series_result(classifier: Classifier, scored: _Scored) -> SeriesResult:
    evaluated = scored.evaluated
    scores = [r.score for r in evaluated if r.score is not None]
    score = aggregate(scores, classifier.card.series_aggregation) if scores else None
    verdict = verdict_for(score, classifier.card.threshold)
    focus = None
    if scored.top is not None:
        probability, (uid, frame), image, shape = scored.top
        box = classifier.localise(image, shape) if verdict is Verdict.SUSPECTED else None
        focus = Finding(uid, frame, probability, box)
    return SeriesResult(scored.failures + evaluated, score, verdict, classifier.name, classifier.version,
                        classifier.card.threshold, focus)
