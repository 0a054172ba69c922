"""Retention: received instances are deleted `retention_hours` after their series' report reached
every destination. Nothing is deleted before that: a series with a pending or failed delivery, or
with instances not yet evaluated, keeps all its files."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import case, func, select, update

from core.events import AuditEventName
from node.audit import Audit, emit
from node.config import Config
from node.db import Database, Delivery, DeliveryState, Instance, Report, Series
from node.spool_budget import SpoolBudget

RETENTION_LOCK = 0x64666E6F6466  # the advisory lock one purging node holds


class Retention:
    def __init__(self, config: Config, db: Database, budget: SpoolBudget, audit: Audit):
        self.config = config
        self.db = db
        self.budget = budget
        self.audit = audit

    def expired_series(self, now: float) -> list[int]:
        """Series whose current report was delivered everywhere before the retention period."""
        cutoff = now - self.config.storage.retention_hours * 3600
        with self.db.session() as s:
            delivered = (select(Report.series_id, func.max(Delivery.sent_at).label("last_sent"),
                                func.count(Delivery.id).label("total"),
                                func.sum(case((Delivery.state == DeliveryState.SENT, 1), else_=0)).label("sent"))
                         .join(Delivery, Delivery.report_id == Report.id)
                         .where(Report.superseded.is_(False))
                         .group_by(Report.series_id).subquery())
            rows = s.execute(select(Series.id).join(delivered, delivered.c.series_id == Series.id)
                             .where(delivered.c.total == delivered.c.sent, delivered.c.last_sent <= cutoff,
                                    Series.received_version == Series.evaluated_version)).all()
            with_files = {r[0] for r in s.execute(select(Instance.series_id).where(Instance.purged_at.is_(None))
                                                  .distinct()).all()}
        return [r[0] for r in rows if r[0] in with_files]

    def run_once(self) -> int:
        """Delete the files of every expired series; returns how many files were deleted."""
        with self._only_here() as alone:
            if not alone:  # another node is purging now
                return 0
            deleted = 0
            now = time.time()
            for series_id in self.expired_series(now):
                deleted += self._purge(series_id, now)
            return deleted

    @contextmanager
    def _only_here(self) -> Iterator[bool]:
        """Whether this node may purge now: on PostgreSQL, one node at a time (a session advisory lock
        held while it purges); a node alone on SQLite always may."""
        if self.db.engine.dialect.name != "postgresql":
            yield True
            return
        with self.db.engine.connect() as connection:
            alone = bool(connection.scalar(select(func.pg_try_advisory_lock(RETENTION_LOCK))))
            try:
                yield alone
            finally:
                if alone:
                    connection.scalar(select(func.pg_advisory_unlock(RETENTION_LOCK)))
                connection.commit()

    def _purge(self, series_id: int, now: float) -> int:
        with self.db.session() as s:
            files = list(s.execute(select(Instance.id, Instance.path, Instance.size)
                                   .where(Instance.series_id == series_id, Instance.purged_at.is_(None))).all())
        freed = 0
        for _, path, size in files:
            Path(path).unlink(missing_ok=True)
            freed += size
        with self.db.write_lock, self.db.session() as s, s.begin():
            s.execute(update(Instance).where(Instance.id.in_([f[0] for f in files])).values(purged_at=now))
            series = s.get(Series, series_id)
            assert series is not None
            event = self.audit.add(s, AuditEventName.RETENTION_PURGED, study_uid=series.study_uid,
                                   series_uid=series.series_uid,
                                   detail=f"{len(files)} file(s), {freed} bytes, "
                                          f"{self.config.storage.retention_hours:g} h after delivery")
        self.budget.released(freed)
        emit(event)
        return len(files)
