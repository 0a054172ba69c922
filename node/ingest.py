"""Ingest: a received instance goes to the spool (atomic, fsynced), then into the database.

The C-STORE handler answers success once the file is durable; the instance is indexed in the database
right after the answer is sent, while the sender readies its next message. The spool is the record of
what was acknowledged: an index that a power cut or a database failure takes back is written again
(before the next instance is taken, or from the spool at the next start, `node.spool_recovery`). The
first instance of a series decides its route; a series no route wants is recorded and not processed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import ColumnElement, Update, bindparam, case, literal, select, update

from core.durable import write_atomically
from core.errors import SpoolError
from core.events import AuditEventName
from node.audit import Audit, emit
from node.claims import database_clock
from node.config import Config, Route
from node.db import AuditEvent, Database, Instance, Series, insert_unless_present
from node.routing import SeriesTags, route_for
from node.spool_budget import SpoolBudget
from scp.storage_scp import ReceivedInstance

log = logging.getLogger(__name__)

SERIES_ID_CACHE = 4096

_FIND_SERIES = select(Series.id).where(Series.series_uid == bindparam("uid"))
_FIND_INSTANCE = (select(Instance.id, Instance.size, Instance.purged_at)
                  .where(Instance.sop_instance_uid == bindparam("uid")))
_REPLACE_INSTANCE = (update(Instance).where(Instance.id == bindparam("row_id"))
                     .values(size=bindparam("new_size"), received_at=bindparam("now"),
                             transfer_syntax=bindparam("syntax"), file_mtime_ns=bindparam("mtime_ns"),
                             purged_at=None))


def stable_seconds(routes: list[Route]) -> ColumnElement[float]:
    """A series' route's stable time, in SQL (0 for a route no longer configured)."""
    if not routes:
        return literal(0.0)
    return case({r.name: r.series_stable_seconds for r in routes}, value=Series.route, else_=0.0)


def count_instance_statement(clock: ColumnElement[float], routes: list[Route]) -> Update:
    """Count one instance into its series, in one statement: the version goes up, and the series is due
    for evaluation at the database's clock plus its route's stable time (`stable_at`)."""
    stable = stable_seconds(routes)
    return (update(Series).where(Series.id == bindparam("series_id"))
            .values(instance_count=Series.instance_count + bindparam("added"),
                    last_received_at=case((Series.last_received_at > bindparam("now"), Series.last_received_at),
                                          else_=bindparam("now")),
                    received_version=Series.received_version + 1, stable_at=clock + stable)
            .returning(Series.route, Series.received_version, Series.evaluated_version))


def spool_path(spool_dir: Path, instance: ReceivedInstance) -> Path:
    """UIDs are validated digits and dots, so they are safe as path parts."""
    return spool_dir / instance.study_uid / instance.series_uid / f"{instance.sop_instance_uid}.dcm"


@dataclass(frozen=True)
class Spooled:
    """An instance durable in the spool, to be indexed."""

    instance: ReceivedInstance
    path: Path
    size: int
    received_at: float
    file_mtime_ns: int  # the file's modification time as written, recorded with the index entry
    note: str = ""  # added to the audit event's detail


class Ingest:
    """The `InstanceSink` of the Storage SCP."""

    def __init__(self, config: Config, db: Database, budget: SpoolBudget, audit: Audit,
                 wake: threading.Event | None = None):
        self.config = config
        self.db = db
        self.budget = budget
        self.audit = audit
        self.wake = wake or threading.Event()
        self._series_ids: OrderedDict[str, int] = OrderedDict()  # recent series UIDs -> row ids
        self._unindexed: list[Spooled] = []  # answered and spooled, their index not written yet
        self._unindexed_lock = threading.Lock()
        dialect = db.index_engine.dialect.name
        self._insert_series = insert_unless_present(dialect, Series, "series_uid")
        self._insert_instance = insert_unless_present(dialect, Instance, "sop_instance_uid")
        self._count_instance = count_instance_statement(database_clock(dialect), config.routes)

    def store(self, instance: ReceivedInstance) -> Callable[[], None]:
        """Spool one instance and return its indexing, for after the answer; `SpoolError` (answered
        0xA700) when it cannot be spooled, or while earlier instances cannot be indexed."""
        self._index_waiting()
        self.budget.reserve(instance.nbytes)
        path = spool_path(self.config.storage.spool_dir, instance)
        received_at = time.time()
        written = write_atomically(path, instance.write)
        spooled = Spooled(instance, path, written.st_size, received_at, written.st_mtime_ns)

        def index_it() -> None:
            self.index(spooled)
        return index_it

    def index(self, spooled: Spooled) -> bool:
        """Record a spooled instance in the database; one that cannot be is kept and tried again before
        the next instance is taken. Never raises; False when it waits."""
        try:
            replaced, events, newly_due = self._record(spooled)
        except Exception as exc:  # the database is full, locked or broken: the file is safe in the spool
            log.error("instance %s is in the spool but not indexed (%s: %s); tried again before the next one "
                      "is taken", spooled.instance.sop_instance_uid, exc.__class__.__name__, exc)
            with self._unindexed_lock:
                self._unindexed.append(spooled)
            return False
        self.budget.added(spooled.size - replaced)
        for event in events:
            emit(event)
        if newly_due:
            self.wake.set()
        return True

    def has_unindexed(self) -> bool:
        """Whether instances answered wait to be indexed (the database failed for them)."""
        with self._unindexed_lock:
            return bool(self._unindexed)

    def _index_waiting(self) -> None:
        """Index the instances whose indexing failed; `SpoolError` when the database still fails."""
        with self._unindexed_lock:
            waiting, self._unindexed = self._unindexed, []
        for number, spooled in enumerate(waiting):
            if not self.index(spooled):  # it is waiting again; so are the ones after it
                with self._unindexed_lock:
                    self._unindexed.extend(waiting[number + 1:])
                    count = len(self._unindexed)
                raise SpoolError(f"database write failed; {count} received instance(s) wait to be indexed")

    def _record(self, spooled: Spooled) -> tuple[int, list[AuditEvent], bool]:
        """Record the instance and its audit events in one transaction; returns the size of the file it
        replaced (0 for a new one), the events, to be logged, and whether the instance made a routed
        series wait for evaluation that did not before (the evaluator is woken only then: it keeps
        track of a waiting series' stable time itself). Prepared Core statements on a plain
        connection: this runs once per instance received, and the ORM's bookkeeping would double its cost."""
        instance, path, size, now = spooled.instance, spooled.path, spooled.size, spooled.received_at
        replaced = 0
        uids = {"study_uid": instance.study_uid, "series_uid": instance.series_uid}
        peer = {"address": instance.address, "calling_ae": instance.calling_ae}
        events = []
        with self.db.write_lock, self.db.index_engine.begin() as conn:
            series_id = self._series_ids.get(instance.series_uid) or conn.scalar(
                _FIND_SERIES, {"uid": instance.series_uid})
            if series_id is None:  # new here; another receiver sharing the database may add it at once
                values = self._new_series(instance, now)
                series_id = conn.scalar(self._insert_series, values)
                if series_id is None:
                    series_id = conn.execute(_FIND_SERIES, {"uid": instance.series_uid}).scalar_one()
                else:
                    route = values["route"]
                    events.append(self.audit.add(conn, AuditEventName.SERIES_NEW, **uids, **peer, detail=(
                        f"{values['modality'] or '-'} {values['body_part'] or '-'}: "
                        + (f"route {route}" if route else "no route, recorded and not processed"))))
            row = conn.execute(_FIND_INSTANCE, {"uid": instance.sop_instance_uid}).first()
            if row is None and conn.scalar(self._insert_instance, {
                    "sop_instance_uid": instance.sop_instance_uid, "sop_class_uid": instance.sop_class_uid,
                    "series_id": series_id, "path": str(path), "size": size,
                    "transfer_syntax": instance.transfer_syntax, "received_at": now,
                    "calling_ae": instance.calling_ae, "file_mtime_ns": spooled.file_mtime_ns}) is None:
                row = conn.execute(_FIND_INSTANCE, {"uid": instance.sop_instance_uid}).first()
            if row is not None:  # sent again: the new copy replaced the old file (or came back after retention)
                replaced = row.size if row.purged_at is None else 0
                conn.execute(_REPLACE_INSTANCE, {"row_id": row.id, "new_size": size, "now": now,
                                                 "syntax": instance.transfer_syntax,
                                                 "mtime_ns": spooled.file_mtime_ns})
            route, received, evaluated = conn.execute(
                self._count_instance, {"series_id": series_id, "added": int(row is None), "now": now}).one()
            events.append(self.audit.add(conn, AuditEventName.INSTANCE_STORED, **uids, **peer,
                                         sop_instance_uid=instance.sop_instance_uid,
                                         detail=f"{size} bytes, {instance.transfer_syntax}"
                                                + (", replaced an earlier copy" if row is not None else "")
                                                + spooled.note))
        self._series_ids[instance.series_uid] = series_id  # only once committed
        while len(self._series_ids) > SERIES_ID_CACHE:
            self._series_ids.popitem(last=False)
        return replaced, events, route is not None and received == evaluated + 1

    def _new_series(self, instance: ReceivedInstance, now: float) -> dict[str, object]:
        """The columns of a new series row; its route is decided here, by its first instance."""
        header = instance.header
        tags = SeriesTags.from_dataset(header, instance.calling_ae)
        route = route_for(self.config.routes, tags)
        return {"series_uid": instance.series_uid, "study_uid": instance.study_uid,
                "patient_id": str(header.get("PatientID", "") or "")[:64], "modality": tags.modality,
                "body_part": tags.body_part[:64], "description": str(header.get("SeriesDescription", "") or "")[:128],
                "calling_ae": instance.calling_ae, "route": route.name if route else None,
                "model": route.model if route else None, "first_received_at": now, "last_received_at": now}
