"""The audit trail: every association, instance, job state change and report sent.

Each event is a row in the database's `audit_events` table and a line from the `dfnode.audit`
logger, whose fields become JSON keys when `logging.format` is `json`. Events carry addresses,
AE titles, UIDs, states and reasons: never a patient's name or ID.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import insert, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.events import AuditEventName
from node.db import AuditEvent, Database

log = logging.getLogger("dfnode.audit")
_INSERT = insert(AuditEvent.__table__)  # type: ignore[arg-type]  # the table, not the ORM entity: no ORM bookkeeping

FIELDS = ("address", "calling_ae", "called_ae", "study_uid", "series_uid", "sop_instance_uid", "detail")
_LIMITS = {"address": 64, "calling_ae": 16, "called_ae": 16, "study_uid": 64, "series_uid": 64,
           "sop_instance_uid": 64, "detail": 2000}


def _columns(event: AuditEventName, fields: dict[str, object]) -> dict[str, object]:
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TypeError(f"not audit fields: {', '.join(sorted(unknown))}")
    values = {k: str(v)[:_LIMITS[k]] for k, v in fields.items() if v is not None}
    return {"at": time.time(), "event": str(event), **{k: values.get(k, "") for k in FIELDS}}


def emit(row: AuditEvent, level: int = logging.INFO) -> None:
    """The log line of an event: readable text, and its fields for the JSON formatter."""
    fields = {k: getattr(row, k) for k in FIELDS if getattr(row, k, None)}
    text = " ".join(f"{k}={v}" for k, v in fields.items() if k != "detail")
    detail = f": {fields['detail']}" if "detail" in fields else ""
    log.log(level, "%s %s%s", row.event, text, detail, extra={"audit": {"event": row.event, **fields}})


class Audit:
    """Writes events; `record` commits on its own, `add` joins a transaction the caller commits."""

    def __init__(self, db: Database, on_event: Callable[[str], None] | None = None):
        self.db = db
        self.on_event = on_event  # told each event's name (the metrics count them)

    def add(self, session: Session | Connection, event: AuditEventName, **fields: object) -> AuditEvent:
        """Add the event to an open transaction (log it with `emit` once that commits). A Core insert:
        this runs for every instance received."""
        columns = _columns(event, fields)
        session.execute(_INSERT, columns)
        if self.on_event is not None:
            self.on_event(event)
        return AuditEvent(**columns)

    def record(self, event: AuditEventName, level: int = logging.INFO, **fields: object) -> None:
        """Write and log one event. Best effort: a database failure is logged and does not raise,
        so that a full disk never turns a peer away by itself."""
        columns = _columns(event, fields)
        try:
            with self.db.write_lock, self.db.engine.begin() as connection:
                connection.execute(_INSERT, columns)
        except SQLAlchemyError as exc:
            log.error("audit event %s not written to the database (%s)", event, exc.__class__.__name__)
        if self.on_event is not None:
            self.on_event(event)
        emit(AuditEvent(**columns), level)


@dataclass(frozen=True)
class AuditQuery:
    """What `dfnode audit` asks for; every given field must match."""

    since: float | None = None
    until: float | None = None
    event: str | None = None  # a prefix: "association" or "delivery.failed"
    ae_title: str | None = None  # calling or called
    address: str | None = None
    uid: str | None = None  # study, series or SOP instance
    limit: int = 100


def query_events(db: Database, query: AuditQuery) -> list[AuditEvent]:
    """The latest `query.limit` matching events, oldest first."""
    statement = select(AuditEvent)
    if query.since is not None:
        statement = statement.where(AuditEvent.at >= query.since)
    if query.until is not None:
        statement = statement.where(AuditEvent.at < query.until)
    if query.event:
        statement = statement.where(or_(AuditEvent.event == query.event,
                                        AuditEvent.event.startswith(query.event.rstrip(".") + ".")))
    if query.ae_title:
        statement = statement.where(or_(AuditEvent.calling_ae == query.ae_title,
                                        AuditEvent.called_ae == query.ae_title))
    if query.address:
        statement = statement.where(AuditEvent.address == query.address)
    if query.uid:
        statement = statement.where(or_(AuditEvent.study_uid == query.uid, AuditEvent.series_uid == query.uid,
                                        AuditEvent.sop_instance_uid == query.uid))
    with db.session() as s:
        rows = list(s.scalars(statement.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(query.limit)))
    return rows[::-1]
