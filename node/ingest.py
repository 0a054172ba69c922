"""Ingest: a received instance goes to the spool (atomic, fsynced) and into the database.

Only after both does the C-STORE handler answer success. The first instance of a series decides
its route; a series no route wants is recorded and not processed.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from node.config import Config
from node.db import Database, Instance, Series
from node.errors import SpoolError
from node.routing import SeriesTags, route_for
from node.spool_budget import SpoolBudget
from scp.spool import write_atomically
from scp.storage_scp import ReceivedInstance

log = logging.getLogger(__name__)


def spool_path(spool_dir: Path, instance: ReceivedInstance) -> Path:
    """UIDs are validated digits and dots, so they are safe as path parts."""
    return spool_dir / instance.study_uid / instance.series_uid / f"{instance.sop_instance_uid}.dcm"


class Ingest:
    """The `InstanceSink` of the Storage SCP."""

    def __init__(self, config: Config, db: Database, budget: SpoolBudget, wake: threading.Event | None = None):
        self.config = config
        self.db = db
        self.budget = budget
        self.wake = wake or threading.Event()

    def store(self, instance: ReceivedInstance) -> None:
        """Spool and record one instance; `SpoolError` (answered 0xA700) when either cannot be done."""
        self.budget.reserve(instance.nbytes)
        path = spool_path(self.config.storage.spool_dir, instance)
        size = write_atomically(path, instance.write)
        try:
            self.budget.added(size - self._record(instance, path, size))
        except SQLAlchemyError as exc:
            raise SpoolError(f"database write failed: {exc.__class__.__name__}") from exc
        log.info("stored %s (series %s, %d bytes, from %s)", instance.sop_instance_uid, instance.series_uid,
                 size, instance.calling_ae)
        self.wake.set()

    def _record(self, instance: ReceivedInstance, path: Path, size: int) -> int:
        """Record the instance; returns the size of the file it replaced (0 for a new one)."""
        now = time.time()
        replaced = 0
        with self.db.write_lock, self.db.session() as s, s.begin():
            series = s.scalars(select(Series).where(Series.series_uid == instance.series_uid)).first()
            if series is None:
                series = self._new_series(instance, now)
                s.add(series)
                s.flush()
            row = s.scalars(select(Instance).where(Instance.sop_instance_uid == instance.sop_instance_uid)).first()
            if row is None:
                s.add(Instance(sop_instance_uid=instance.sop_instance_uid, sop_class_uid=instance.sop_class_uid,
                               series_id=series.id, path=str(path), size=size,
                               transfer_syntax=instance.transfer_syntax, received_at=now,
                               calling_ae=instance.calling_ae))
                series.instance_count += 1
            else:  # sent again: the new copy replaced the old file (or came back after retention)
                replaced = row.size if row.purged_at is None else 0
                row.size, row.received_at, row.transfer_syntax = size, now, instance.transfer_syntax
                row.purged_at = None
            series.last_received_at = now
            series.received_version += 1
        return replaced

    def _new_series(self, instance: ReceivedInstance, now: float) -> Series:
        header = instance.header
        tags = SeriesTags.from_dataset(header, instance.calling_ae)
        route = route_for(self.config.routes, tags)
        if route is None:
            log.info("series %s (%s %s) matches no route: recorded, not processed", instance.series_uid,
                     tags.modality, tags.body_part or "-")
        return Series(series_uid=instance.series_uid, study_uid=instance.study_uid,
                      patient_id=str(header.get("PatientID", "") or "")[:64], modality=tags.modality,
                      body_part=tags.body_part[:64],
                      description=str(header.get("SeriesDescription", "") or "")[:128],
                      calling_ae=instance.calling_ae, route=route.name if route else None,
                      model=route.model if route else None, first_received_at=now, last_received_at=now)
