"""Evaluating due series: claim one, score it, write its report, commit under the lease.

The work is split by job: `Schedule` (which series is due, claims), `Scorer` (early and whole
scoring), `ReportWriter` (the SR and key image files) and `ReportStore` (reading the claimed series
and committing its outcome while the lease holds). The evaluator runs them in order, words the audit
events, and keeps one bad series from stopping the others.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core.events import AuditEventName
from inference.model import Classifier
from inference.scoring import SeriesResult
from node.audit import Audit, emit
from node.claims import Lease, LeaseLost
from node.config import Config, Route
from node.db import Database
from node.early_scoring import EarlyScores
from node.report_store import ReportStore
from node.report_writer import ReportSettings, ReportWriter, WrittenReport
from node.schedule import Schedule
from node.scorer import Scorer
from sr.report import NothingToCite

log = logging.getLogger(__name__)

INTERNAL_ERROR = "evaluation failed with an internal error (details in the node's log)"


@dataclass(frozen=True)
class Outcome:
    series_uid: str
    result: SeriesResult
    report_path: Path


class EvaluationMetrics(Protocol):
    """What the evaluator tells the node's metrics."""

    def observe_inference(self, model: str, seconds: float) -> None:
        """One series scored and reported with `model` in `seconds`."""

    def count_scored_early(self, model: str, images: int) -> None:
        """`images` more of a waiting series scored with `model` before its stable time."""


class Evaluator:
    """Evaluates the due series with their routes' models, one claimed series at a time."""

    def __init__(self, config: Config, db: Database, audit: Audit, classifiers: dict[str, Classifier],
                 device_uid: str, metrics: EvaluationMetrics | None = None):
        self.config = config
        self.metrics = metrics
        self.audit = audit
        self.schedule = Schedule(config, db)
        self.scorer = Scorer(config, classifiers, metrics)
        self.writer = ReportWriter(ReportSettings(device_uid, config.node.ae_title, config.storage.reports_dir,
                                                  config.reports.key_image))
        self.store = ReportStore(db, audit, self.schedule.claims)
        self.evaluating: int | None = None  # the series id being evaluated now (the console shows it)
        self.early_work_left = False

    @property
    def early(self) -> EarlyScores:
        """What has been scored of the waiting series (the console shows the counts)."""
        return self.scorer.early

    def close(self) -> None:
        self.scorer.close()

    def start(self) -> None:
        self.schedule.start()

    def seconds_to_next_due(self, longest: float = 0.5) -> float:
        """How long the evaluator may sleep: not at all while early scoring has work left."""
        return 0.0 if self.early_work_left else self.schedule.seconds_to_sleep(longest)

    def run_once(self) -> int:
        """Evaluate every due series, or when none is due score a batch of one waiting; returns how many
        series were evaluated."""
        look = self.schedule.look(time.time())
        self.scorer.early.keep_only(look.unevaluated)
        self.early_work_left = not look.due and self.scorer.score_early(look.waiting, self.store.files)
        if look.due:  # instances that arrive while these are evaluated wake nobody: look again at once after
            self.schedule.next_due_at = time.time()
        done = 0
        for lease in iter(self.schedule.claim_due, None):
            self.evaluating = lease.row_id
            try:
                if self.evaluate(lease) is not None:
                    done += 1
            except LeaseLost as exc:
                log.warning("series id %d: lease lost while evaluating, nothing committed (%s)", lease.row_id, exc)
            except Exception:  # one bad series must not stop the others
                log.exception("evaluation of series id %d failed", lease.row_id)
                self._record_failure(lease, INTERNAL_ERROR)
            finally:
                self.evaluating = None
        return done

    def evaluate(self, lease: Lease) -> Outcome | None:
        """Evaluate the claimed series and commit its report while the lease still holds."""
        with self.schedule.claims.keeper(lease):
            return self._evaluate(lease)

    def _evaluate(self, lease: Lease) -> Outcome | None:
        series = self.store.read(lease.row_id)
        if series is None:
            return None
        route = self.config.route(series.route or "")
        if route is None or not self.scorer.has_model(route):
            self._record_failure(lease, f"route {series.route!r} or its model is no longer configured")
            return None
        to_score = self.scorer.take_early(series.series_id, series.files)
        early = f", {to_score.scored_early} scored while it waited" if to_score.scored_before is not None else ""
        self.audit.record(AuditEventName.SERIES_EVALUATING, study_uid=series.study_uid, series_uid=series.series_uid,
                          detail=f"version {series.version}: {len(series.files)} file(s), model {route.model}{early}")
        started = time.monotonic()
        scored = self.scorer.score(to_score, route)
        try:
            written = self.writer.write(series.series_uid, series.version, scored.headers, scored.result,
                                        {f.sop_instance_uid: f.path for f in series.files},
                                        self.scorer.classifiers[route.model], series.previous_report_path)
        except NothingToCite:  # nothing to hang a report on: recorded, not raised
            reasons = sorted({r.reason or "" for r in scored.result.images})[:3]
            self._record_failure(lease, "not evaluated: no usable instance: " + "; ".join(reasons))
            return None
        seconds = time.monotonic() - started
        emit(self.store.commit(lease, series.version, written, route.destinations,
                               report_summary(series.version, route, written, seconds)))
        if self.metrics is not None:
            self.metrics.observe_inference(route.model, seconds)
        return Outcome(series.series_uid, written.result, written.path)

    def _record_failure(self, lease: Lease, error: str) -> None:
        try:
            event = self.store.record_failure(lease, error)
        except LeaseLost as exc:
            log.warning("series id %d: lease lost, failure not recorded (%s)", lease.row_id, exc)
            return
        if event is not None:
            emit(event, logging.WARNING)


def report_summary(version: int, route: Route, written: WrittenReport, seconds: float) -> str:
    """The REPORT_CREATED event's detail: version, verdict, score, images, time, destinations."""
    result = written.result
    score = "-" if result.score is None else f"{result.score * 100:.1f}%"
    key = ", with key image" if written.key_image_path else ""
    return (f"version {version}: {result.verdict.value}, score {score}, {len(result.images)} images "
            f"in {seconds:.1f}s{key}; to {', '.join(route.destinations) or 'no destination'}")
