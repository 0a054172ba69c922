"""The evaluator's reads and writes of the index: what a claimed series holds, and its outcome
committed only while the evaluator's lease on it still holds.

The report row, its deliveries, the superseding of older reports and the new `evaluated_version` are
one transaction, so a crash either repeats the evaluation (with the same SR UID) or finds it done; a
stale lease (`LeaseLost`) writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select, update

from core.events import AuditEventName
from node.audit import Audit
from node.claims import Claims, Lease
from node.db import AuditEvent, Database, Delivery, DeliveryState, Report, Series
from node.early_scoring import SeriesFile, series_files
from node.report_writer import WrittenReport


@dataclass(frozen=True)
class ClaimedSeries:
    """A claimed series as the index has it when its evaluation starts."""

    series_id: int
    series_uid: str
    study_uid: str
    route: str | None
    version: int  # the received version this evaluation reports on
    files: list[SeriesFile]
    previous_report_path: str | None  # the series' latest report, which the new one replaces


class ReportStore:
    def __init__(self, db: Database, audit: Audit, claims: Claims):
        self.db = db
        self.audit = audit
        self.claims = claims

    def files(self, series_id: int) -> list[SeriesFile]:
        with self.db.session() as s:
            return series_files(s, series_id)

    def read(self, series_id: int) -> ClaimedSeries | None:
        """The series as it is now; None when it is gone (purged)."""
        with self.db.session() as s:
            series = s.get(Series, series_id)
            if series is None:
                return None
            previous = s.scalars(select(Report.path).where(Report.series_id == series_id)
                                 .order_by(Report.version.desc())).first()
            return ClaimedSeries(series_id, series.series_uid, series.study_uid, series.route,
                                 series.received_version, series_files(s, series_id), previous)

    def record_failure(self, lease: Lease, error: str) -> AuditEvent | None:
        """The series could not be evaluated: its error, and nothing more to do until more arrives."""
        with self.db.write_lock, self.db.session() as s, s.begin():
            self.claims.holds(s, lease)
            series = s.get(Series, lease.row_id)
            if series is None:
                return None
            series.error = error[:2000]
            series.evaluated_version = series.received_version  # retried when more instances arrive
            return self.audit.add(s, AuditEventName.SERIES_NOT_EVALUATED, study_uid=series.study_uid,
                                  series_uid=series.series_uid, detail=error)

    def commit(self, lease: Lease, version: int, written: WrittenReport, destinations: list[str],
               summary: str) -> AuditEvent:
        """The report, its deliveries and the evaluated version in one transaction (`LeaseLost` when
        another evaluator has taken the series over)."""
        now = time.time()
        series_id = lease.row_id
        result = written.result
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
            report = s.scalars(select(Report).where(Report.sop_instance_uid == written.sop_instance_uid)).first()
            if report is None:
                report = Report(series_id=series_id, version=version, sop_instance_uid=written.sop_instance_uid,
                                path=str(written.path),
                                key_image_path=str(written.key_image_path) if written.key_image_path else None,
                                verdict=result.verdict.value, score=result.score, created_at=now)
                s.add(report)
                s.flush()
                for dest in destinations:
                    s.add(Delivery(report_id=report.id, destination=dest, next_attempt_at=now))
            series.evaluated_version = max(series.evaluated_version, version)
            series.score, series.verdict, series.error = result.score, result.verdict.value, None
            return self.audit.add(s, AuditEventName.REPORT_CREATED, study_uid=series.study_uid,
                                  series_uid=series.series_uid, sop_instance_uid=written.sop_instance_uid,
                                  detail=summary)
