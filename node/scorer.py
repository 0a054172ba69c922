"""Scoring a series with its route's model: a batch at a time while it waits, the rest when it is due.

What was scored early is kept in `EarlyScores` and used at the stable time only while those files are
still the series' first ones, unchanged. The preparing work (decoding, resampling) runs in threads or
processes as `inference.preparing_in` says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pydicom.dataset import Dataset

from inference.model import Classifier
from inference.preparing import PreparingProcesses
from inference.scoring import ScoredFiles, SeriesResult, score_files, score_paths
from node.config import Config, Route
from node.early_scoring import EarlyScores, SeriesFile
from node.schedule import Waiting

log = logging.getLogger(__name__)


class ScoringMetrics(Protocol):
    """What the scorer tells the node's metrics."""

    def count_scored_early(self, model: str, images: int) -> None:
        """`images` more of a waiting series scored with `model` before its stable time."""


@dataclass(frozen=True)
class ToScore:
    """A due series' files: what was scored of them while it waited, and the rest."""

    series_id: int
    scored_before: ScoredFiles | None  # None: nothing (a strided route is not scored early)
    rest: list[SeriesFile]
    scored_early: int  # how many of its files were scored while it waited


@dataclass(frozen=True)
class Scored:
    """A whole series scored: the result and the headers of its images."""

    result: SeriesResult
    headers: list[Dataset]


class Scorer:
    """Scores series with the configured models."""

    def __init__(self, config: Config, classifiers: dict[str, Classifier], metrics: ScoringMetrics | None = None):
        self.classifiers = classifiers
        self.metrics = metrics
        self.early = EarlyScores()
        workers = config.inference.preparing_thread_count()
        self.preparing: int | PreparingProcesses = (
            PreparingProcesses(workers) if config.inference.preparing_in == "processes" else workers)

    def close(self) -> None:
        """Stop the preparing processes, if any."""
        if isinstance(self.preparing, PreparingProcesses):
            self.preparing.close()

    def has_model(self, route: Route) -> bool:
        return route.model in self.classifiers

    def score_early(self, waiting: list[Waiting], files_of: Callable[[int], list[SeriesFile]]) -> bool:
        """Score the next batch of the first waiting series that has files left to score; whether there
        was one. A failure gives up on the series until its stable time, where it is scored whole."""
        if self.early.full():
            return False
        for series in waiting:
            if self.early.caught_up(series.series_id, series.received_version) or not self.has_model(series.route):
                continue
            rest = self.early.unscored(series.series_id, files_of(series.series_id), series.received_version)
            if not rest:
                continue
            classifier = self.classifiers[series.route.model]
            part = rest[:classifier.batch_size]
            try:
                self.early.add(series.series_id, part, score_paths(classifier, [f.path for f in part], self.preparing))
                if self.metrics is not None:
                    self.metrics.count_scored_early(series.route.model, len(part))
            except Exception:  # scored whole at the stable time instead, where a failure is reported
                log.exception("series id %d: scoring while it waits failed; it is scored at its stable time",
                              series.series_id)
                self.early.give_up(series.series_id, series.received_version)
            return True
        return False

    def take_early(self, series_id: int, files: list[SeriesFile]) -> ToScore:
        """What was scored of the series' `files` while it waited, and the files left (forgets the series)."""
        scored_before, rest = self.early.take(series_id, files)
        return ToScore(series_id, scored_before, rest, len(files) - len(rest))

    def score(self, series: ToScore, route: Route) -> Scored:
        """Score the rest of the series with the route's model, merged with what was scored before."""
        result, headers = score_files(self.classifiers[route.model], [f.path for f in series.rest],
                                      route.slice_stride, self.preparing, series.scored_before)
        return Scored(result, headers)
