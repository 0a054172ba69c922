"""Series completion and evaluation: stable series are scored, reported, and queued for sending.

A series is due when it has a route, `received_version > evaluated_version`, and nothing has
arrived for `series_stable_seconds`. While it waits, what it has is scored whenever no series is
due (`node.early_scoring`). The SR file, the report row, the deliveries and the new
`evaluated_version` are committed together, so a crash either repeats the evaluation (with the
same deterministic SR UID) or finds it done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import func, select, update

from core.durable import write_atomically
from core.events import AuditEventName
from inference.model import Classifier
from inference.preparing import PreparingProcesses
from inference.scoring import SeriesResult, score_files, score_paths
from node.audit import Audit, emit
from node.claims import Claims, Lease, LeaseLost
from node.config import Config, Route
from node.db import AuditEvent, Database, Delivery, DeliveryState, Report, Series
from node.early_scoring import EarlyScores, scores_early, series_files
from node.ingest import stable_seconds
from sr.key_image import build_key_image
from sr.report import (
    REPORT_NOT_BUILT,
    NothingToCite,
    ReportIdentity,
    build_report,
    not_evaluated,
    report_uids,
)
from sr.uids import ObjectIdentity

log = logging.getLogger(__name__)


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
    """Finds due series and evaluates them with the route's model."""

    def __init__(self, config: Config, db: Database, audit: Audit, classifiers: dict[str, Classifier],
                 device_uid: str, metrics: EvaluationMetrics | None = None):
        self.config = config
        self.metrics = metrics
        self.db = db
        self.audit = audit
        self.classifiers = classifiers
        self.device_uid = device_uid
        self.next_due_at: float | None = None  # when the earliest series not yet due becomes due
        self.evaluating: int | None = None  # the series id being evaluated now (the console shows it)
        self.early = EarlyScores()
        self.claims = Claims(db, Series, config.node.name, config.node.lease_seconds)
        # (series id, received version, route) to score early, due soonest first
        self.waiting: list[tuple[int, int, Route]] = []
        self.early_work_left = False
        workers = config.inference.preparing_thread_count()
        self.preparing: int | PreparingProcesses = (
            PreparingProcesses(workers) if config.inference.preparing_in == "processes" else workers)

    def close(self) -> None:
        """Stop the preparing processes, if any."""
        if isinstance(self.preparing, PreparingProcesses):
            self.preparing.close()

    def due_series(self, now: float) -> list[int]:
        """Series whose stable time has passed; notes those to score while they wait (`waiting`) and
        when the next one will be due or quiet long enough to be scored early."""
        with self.db.session() as s:
            candidates = s.execute(select(Series.id, Series.route, Series.last_received_at, Series.received_version,
                                          Series.lease_owner, Series.lease_expires_at)
                                   .where(Series.route.is_not(None),
                                          Series.received_version > Series.evaluated_version)).all()
        due: list[int] = []
        waiting: list[tuple[float, int, int, Route]] = []
        wake_at: list[float] = []
        for series_id, route_name, last, version, holder, held_until in candidates:
            if holder not in (None, self.claims.owner) and held_until is not None and held_until > now:
                wake_at.append(held_until)  # another evaluator works on it; look again if its lease runs out
                continue
            route = self.config.route(route_name or "")
            stable = route.series_stable_seconds if route else 0.0
            if now - last >= stable:
                due.append(series_id)
                continue
            wake_at.append(last + stable)
            if route is not None and scores_early(route):
                quiet_at = last + (route.early_scoring_seconds or 0.0)
                if now >= quiet_at:
                    waiting.append((last + stable, series_id, version, route))
                else:
                    wake_at.append(quiet_at)
        self.next_due_at = min(wake_at) if wake_at else None
        self.waiting = [(series_id, version, route) for _, series_id, version, route in
                        sorted(waiting, key=lambda w: w[:3])]
        self.early.keep_only({c[0] for c in candidates})
        return due

    def seconds_to_next_due(self, longest: float = 0.5) -> float:
        """How long the evaluator may sleep: until the next series is due, at most `longest` (a new
        instance wakes it anyway)."""
        if self.early_work_left:
            return 0.0
        if self.next_due_at is None:
            return longest
        return min(longest, max(0.005, self.next_due_at - time.time()))

    def run_once(self) -> int:
        """Evaluate every due series, or when none is due score a batch of one waiting; returns how many
        series were evaluated."""
        done = 0
        due = self.due_series(time.time())
        self.early_work_left = not due and self.score_early()
        if due:  # instances that arrive while these are evaluated wake nobody: look again at once after
            self.next_due_at = time.time()
        for lease in iter(self.claim_due, None):
            self.evaluating = lease.row_id
            try:
                if self.evaluate(lease) is not None:
                    done += 1
            except LeaseLost as exc:
                log.warning("series id %d: lease lost while evaluating, nothing committed (%s)", lease.row_id, exc)
            except Exception:  # one bad series must not stop the others
                log.exception("evaluation of series id %d failed", lease.row_id)
                try:
                    self._record_failure(lease, "evaluation failed with an internal error (details in the "
                                                "node's log)")
                except LeaseLost as exc:
                    log.warning("series id %d: lease lost, failure not recorded (%s)", lease.row_id, exc)
            finally:
                self.evaluating = None
        return done

    def start(self) -> None:
        """At start: take back what this evaluator's name held when it stopped, and make the series that
        wait due by the routes' stable times as configured now."""
        taken_back = self.claims.release_own()
        if taken_back:
            log.info("took back %d series this node (%s) held when it stopped", taken_back, self.claims.owner)
        with self.db.write_lock, self.db.session() as s, s.begin():
            s.execute(update(Series).where(Series.received_version > Series.evaluated_version)
                      .values(stable_at=Series.last_received_at + stable_seconds(self.config.routes)))

    def claim_due(self) -> Lease | None:
        """Claim the due series waiting longest that no other evaluator holds."""
        due_at = func.coalesce(Series.stable_at, Series.last_received_at)
        leases = self.claims.claim(Series.route.is_not(None), Series.received_version > Series.evaluated_version,
                                   due_at <= self.claims.clock, order_by=due_at)
        return leases[0] if leases else None

    def score_early(self) -> bool:
        """Score the next batch of the waiting series due soonest that has files left to score; whether
        there was one."""
        if self.early.full():
            return False
        for series_id, version, route in self.waiting:
            if self.early.caught_up(series_id, version) or route.model not in self.classifiers:
                continue
            with self.db.session() as s:
                files = series_files(s, series_id)
            rest = self.early.unscored(series_id, files, version)
            if not rest:
                continue
            classifier = self.classifiers[route.model]
            part = rest[:classifier.batch_size]
            try:
                self.early.add(series_id, part, score_paths(classifier, [f.path for f in part], self.preparing))
                if self.metrics is not None:
                    self.metrics.count_scored_early(route.model, len(part))
            except Exception:  # scored whole at the stable time instead, where a failure is reported
                log.exception("series id %d: scoring while it waits failed; it is scored at its stable time",
                              series_id)
                self.early.give_up(series_id, version)
            return True
        return False

    def _record_failure(self, lease: Lease, error: str) -> None:
        with self.db.write_lock, self.db.session() as s, s.begin():
            self.claims.holds(s, lease)
            series = s.get(Series, lease.row_id)
            if series is None:
                return
            series.error = error[:2000]
            series.evaluated_version = series.received_version  # retried when more instances arrive
            event = self.audit.add(s, AuditEventName.SERIES_NOT_EVALUATED, study_uid=series.study_uid,
                                   series_uid=series.series_uid, detail=error)
        emit(event, logging.WARNING)

    def evaluate(self, lease: Lease) -> Outcome | None:
        """Evaluate the claimed series and commit its report while the lease still holds."""
        with self.claims.keeper(lease):
            return self._evaluate(lease)

    def _evaluate(self, lease: Lease) -> Outcome | None:
        series_id = lease.row_id
        with self.db.session() as s:
            series = s.get(Series, series_id)
            if series is None:
                return None
            version = series.received_version
            listed = series_files(s, series_id)
            previous = s.scalars(select(Report).where(Report.series_id == series_id)
                                 .order_by(Report.version.desc())).first()
        route = self.config.route(series.route or "")
        if route is None or route.model not in self.classifiers:
            self._record_failure(lease, f"route {series.route!r} or its model is no longer configured")
            return None
        classifier = self.classifiers[route.model]
        scored_before, rest = self.early.take(series_id, listed)  # none for a strided route: not scored early
        early = f", {len(listed) - len(rest)} scored while it waited" if scored_before is not None else ""
        self.audit.record(AuditEventName.SERIES_EVALUATING, study_uid=series.study_uid, series_uid=series.series_uid,
                          detail=f"version {version}: {len(listed)} file(s), model {route.model}{early}")
        started = time.monotonic()
        result, headers = score_files(classifier, [f.path for f in rest], route.slice_stride, self.preparing,
                                      scored_before)
        files = {f.sop_instance_uid: f.path for f in listed}
        sr_series_uid, sr_uid = report_uids(series.series_uid, version)
        identity = ReportIdentity(self.device_uid, self.config.node.ae_title, "dfnode", sr_series_uid, sr_uid, version)
        try:
            sr, result = self._report(series.series_uid, headers, result, identity, _read_previous(previous))
        except NothingToCite:  # nothing to hang a report on: recorded, not raised
            reasons = sorted({r.reason or "" for r in result.images})[:3]
            self._record_failure(lease, "not evaluated: no usable instance: " + "; ".join(reasons))
            return None
        report_path = self.config.storage.reports_dir / f"{sr_uid}.dcm"
        write_atomically(report_path, lambda f: sr.save_as(f, enforce_file_format=True))
        key_path = self._write_key_image(series.series_uid, version, result, files, classifier)
        summary = (f"version {version}: {result.verdict.value}, score "
                   f"{'-' if result.score is None else f'{result.score * 100:.1f}%'}, {len(result.images)} images "
                   f"in {time.monotonic() - started:.1f}s{', with key image' if key_path else ''}; "
                   f"to {', '.join(route.destinations) or 'no destination'}")
        event = self._commit(lease, version, result, sr_uid, report_path, key_path, route.destinations, summary)
        emit(event)
        if self.metrics is not None:
            self.metrics.observe_inference(route.model, time.monotonic() - started)
        return Outcome(series.series_uid, result, report_path)

    @staticmethod
    def _report(series_uid: str, headers: list[Dataset], result: SeriesResult, identity: ReportIdentity,
                previous: Dataset | None) -> tuple[Dataset, SeriesResult]:
        """The series' SR and the result it reports; when the report of its scores cannot be built, one
        that says NOT EVALUATED and why, so that the PACS still gets an answer for every series it sent."""
        try:
            return build_report(headers, result, identity, previous), result
        except NothingToCite:
            raise
        except Exception:
            log.exception("series %s: the report could not be built; a NOT EVALUATED report is sent instead",
                          series_uid)
        fallback = not_evaluated(result, REPORT_NOT_BUILT)
        return build_report(headers, fallback, identity, previous), fallback

    def _write_key_image(self, series_uid: str, version: int, result: SeriesResult, files: dict[str, Path],
                         classifier: Classifier) -> Path | None:
        """The key image file, when configured and an image was evaluated; a failure costs only the key image."""
        focus = result.focus
        if not self.config.reports.key_image or focus is None or focus.sop_instance_uid not in files:
            return None
        identity = ObjectIdentity.derived(series_uid, version, "key")
        path = self.config.storage.reports_dir / f"{identity.sop_instance_uid}.dcm"
        try:
            image = build_key_image(dcmread(files[focus.sop_instance_uid]), focus, result.verdict, result.score,
                                    classifier.card.preprocessing_spec(), identity, result.threshold)
            write_atomically(path, lambda f: image.save_as(f, enforce_file_format=True))
        except Exception:  # the SR goes out regardless
            log.exception("series %s: key image not made; the SR is sent alone", series_uid)
            return None
        return path

    def _commit(self, lease: Lease, version: int, result: SeriesResult, sr_uid: str, path: Path,
                key_path: Path | None, destinations: list[str], summary: str) -> AuditEvent:
        """The report, its deliveries and the evaluated version in one transaction, only while this
        evaluator still holds the series (`LeaseLost` otherwise: another one has taken it over)."""
        now = time.time()
        series_id = lease.row_id
        with self.db.write_lock, self.db.session() as s, s.begin():
            self.claims.holds(s, lease)
            series = s.get(Series, series_id)
            assert series is not None
            older = list(s.scalars(select(Report.id).where(Report.series_id == series_id,
                                                           Report.superseded.is_(False))))
            if older:
                s.execute(update(Report).where(Report.id.in_(older)).values(superseded=True))
                s.execute(update(Delivery).where(Delivery.report_id.in_(older), Delivery.state == DeliveryState.PENDING)
                          .values(state=DeliveryState.SUPERSEDED))
            report = s.scalars(select(Report).where(Report.sop_instance_uid == sr_uid)).first()
            if report is None:
                report = Report(series_id=series_id, version=version, sop_instance_uid=sr_uid, path=str(path),
                                key_image_path=str(key_path) if key_path else None,
                                verdict=result.verdict.value, score=result.score, created_at=now)
                s.add(report)
                s.flush()
                for dest in destinations:
                    s.add(Delivery(report_id=report.id, destination=dest, next_attempt_at=now))
            series.evaluated_version = max(series.evaluated_version, version)
            series.score, series.verdict, series.error = result.score, result.verdict.value, None
            return self.audit.add(s, AuditEventName.REPORT_CREATED, study_uid=series.study_uid,
                                  series_uid=series.series_uid, sop_instance_uid=sr_uid, detail=summary)


def _read_previous(previous: Report | None) -> Dataset | None:
    if previous is None:
        return None
    try:
        return dcmread(previous.path)
    except Exception:
        log.warning("previous report %s unreadable; the new one will not name its predecessor", previous.path)
        return None
