"""`dfnode audit`: the audit trail, filtered, as a table or as JSON lines."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime

from node.audit import FIELDS, AuditQuery, query_events
from node.config import Config
from node.db import AuditEvent, Database, database_exists
from node.tables import format_table

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float | None = None) -> float:
    """`30m`, `2h`, `7d` (that long ago) or an ISO date or date-time (local time unless it has an offset)."""
    match = _RELATIVE.match(text.strip())
    if match:
        return (time.time() if now is None else now) - float(match[1]) * _UNIT_SECONDS[match[2]]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use 30m, 2h, 7d or an ISO date such as "
                         "2026-11-22T08:00") from None


def _as_dict(row: AuditEvent) -> dict[str, object]:
    when = datetime.fromtimestamp(row.at).astimezone().isoformat(timespec="milliseconds")
    return {"time": when, "event": row.event, **{k: getattr(row, k) for k in FIELDS}}


def audit_report(config: Config, query: AuditQuery, as_json: bool = False) -> str:
    """The matching events, oldest first."""
    if not database_exists(config.storage.database):
        return f"no database yet at {config.storage.database.removeprefix('sqlite:///')}: nothing recorded"
    db = Database(config.storage.database)
    try:
        rows = query_events(db, query)
    finally:
        db.close()
    if as_json:
        return "\n".join(json.dumps(_as_dict(r)) for r in rows)
    if not rows:
        return "no audit events match"
    table = [[datetime.fromtimestamp(r.at).strftime("%Y-%m-%d %H:%M:%S"), r.event, r.address or "-",
              f"{r.calling_ae or '-'} -> {r.called_ae or '-'}",
              r.sop_instance_uid or r.series_uid or r.study_uid or "-", r.detail] for r in rows]
    return format_table(["time", "event", "address", "calling -> called", "UID", "detail"], table)
