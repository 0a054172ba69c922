"""Scoring a series: per-image results, the card's aggregation rule, the verdict."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from inference.localisation import Box
from inference.model import Classifier
from inference.preparing import ImageResult, PreparedFiles, PreparingProcesses, prepare_files
from inference.slices import neighbour_positions, sampled_positions, slice_order


class Verdict(StrEnum):
    SUSPECTED = "SUSPECTED"
    NOT_SUSPECTED = "NOT SUSPECTED"
    NOT_EVALUATED = "NOT EVALUATED"


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


def _prepare_with_batch(paths: list[Path], classifier: Classifier) -> PreparedFiles:
    """`prepare_files` and the network's input batch of what it prepared (on a preparing thread)."""
    prepared = prepare_files(paths, classifier.card.preprocessing_spec())
    if prepared.images:
        prepared.batch = classifier.input_batch(prepared.images)
    return prepared


_Top = tuple[float, tuple[str, int | None], np.ndarray, tuple[int, int]]  # the most suspicious image


@dataclass
class ScoredFiles:
    """What scoring some files of a series gave: results, failures, headers, the most suspicious image
    (kept prepared, for the region when the series is suspected)."""

    evaluated: list[ImageResult]
    failures: list[ImageResult]
    headers: list[Dataset]
    top: _Top | None

    @classmethod
    def empty(cls) -> ScoredFiles:
        return cls([], [], [], None)

    def merge(self, other: ScoredFiles) -> None:
        self.evaluated += other.evaluated
        self.failures += other.failures
        self.headers += other.headers
        if other.top is not None and (self.top is None or other.top[0] > self.top[0]):
            self.top = other.top


def score_files(classifier: Classifier, paths: Iterable[Path], slice_stride: int = 1,
                preparing: int | PreparingProcesses = 1,
                scored_before: ScoredFiles | None = None) -> tuple[SeriesResult, list[Dataset]]:
    """Evaluate the DICOM files of one series; unusable images are reported, never raised.

    Each file is read once; its header (the dataset without pixel data) comes back for the report.
    With `slice_stride` n > 1, every n-th slice and the neighbours of suspicious ones are scored
    (`inference.slices`); the others are reported as not evaluated, with the stride as the reason.
    `preparing` threads (a number), or the node's preparing processes, read and prepare the next
    batches while the model scores one. `scored_before` holds what `score_paths` gave for the series'
    first files (scored while the series arrived); `paths` are then the files after them, every one scored."""
    files = list(paths)
    if scored_before is not None:
        if slice_stride > 1:
            raise ValueError("files scored before join only a series whose every slice is scored")
        scored = ScoredFiles.empty()
        for part in (scored_before, score_paths(classifier, files, preparing)):
            scored.merge(part)
    elif slice_stride > 1 and len(files) > slice_stride:
        scored = _score_strided(classifier, files, slice_stride, preparing)
    else:
        scored = score_paths(classifier, files, preparing)
    return _series_result(classifier, scored), scored.headers


def score_paths(classifier: Classifier, files: list[Path], preparing: int | PreparingProcesses = 1) -> ScoredFiles:
    """Score files in batches. The next batches (one per preparing thread or process) are read and
    prepared while the model scores this one, in order, and only the most suspicious image is kept, so
    a long series costs a few batches of images in memory."""
    parts = [files[i:i + classifier.batch_size] for i in range(0, len(files), classifier.batch_size)]
    scored = ScoredFiles.empty()
    with _preparer(classifier, preparing) as (ahead, start):
        upcoming = deque(start(part) for part in parts[:ahead])
        for n in range(len(parts)):
            chunk = upcoming.popleft()()
            if n + ahead < len(parts):
                upcoming.append(start(parts[n + ahead]))
            batch = chunk.batch if chunk.batch is not None or not chunk.images else classifier.input_batch(chunk.images)
            probabilities = (classifier.batch_scores(batch) if batch is not None
                             else np.zeros(0, dtype=np.float32))
            top = None
            if len(probabilities):
                best = int(np.argmax(probabilities))
                top = (float(probabilities[best]), chunk.keys[best], chunk.images[best], chunk.shapes[best])
            scored.merge(ScoredFiles([ImageResult(uid, frame, float(p))
                                      for (uid, frame), p in zip(chunk.keys, probabilities, strict=True)],
                                     chunk.failures, chunk.headers, top))
    return scored


_Start = Callable[[list[Path]], Callable[[], PreparedFiles]]  # begins preparing files; the call waits for them


@contextmanager
def _preparer(classifier: Classifier, preparing: int | PreparingProcesses) -> Iterator[tuple[int, _Start]]:
    """(how many parts to prepare ahead, how to start one) on the node's processes or on new threads."""
    if isinstance(preparing, PreparingProcesses):
        prep = classifier.card.preprocessing_spec()
        yield preparing.workers, lambda part: preparing.start(part, prep)
        return
    with ThreadPoolExecutor(max_workers=max(1, preparing), thread_name_prefix="prepare") as pool:
        yield max(1, preparing), lambda part: pool.submit(_prepare_with_batch, part, classifier).result


def _score_strided(classifier: Classifier, files: list[Path], stride: int,
                   preparing: int | PreparingProcesses) -> ScoredFiles:
    """Every `stride`-th slice in anatomical order, then the unscored neighbours of suspicious ones."""
    headers = [_read_header(path) for path in files]
    order = slice_order(headers)
    uid_at = [_sop_instance_uid(headers[i]) for i in order]
    unreadable = [p for p, uid in enumerate(uid_at) if uid is None]  # scored first, so reported as failures
    first = sorted(set(sampled_positions(len(files), stride)) | set(unreadable))
    scored = score_paths(classifier, [files[order[p]] for p in first], preparing)
    score_of = {r.sop_instance_uid: r.score or 0.0 for r in scored.evaluated}
    flagged = [p for p in first if score_of.get(uid_at[p] or "", 0.0) >= classifier.card.threshold]
    more = neighbour_positions(flagged, stride, len(files), set(first))
    if more:
        scored.merge(score_paths(classifier, [files[order[p]] for p in more], preparing))
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


def _series_result(classifier: Classifier, scored: ScoredFiles) -> SeriesResult:
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
