"""`dfnode status`: recent series, what became of them, and where their reports went."""

from __future__ import annotations

import shutil
import time
from collections import Counter

from sqlalchemy import func, select

from node.config import Config
from node.db import Database, Delivery, Instance, Report, Series
from node.tables import format_table


def _delivery_summary(states: list[str]) -> str:
    if not states:
        return "-"
    counts = Counter(states)
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def _disk_use(config: Config, held: int, held_files: int, purged_files: int) -> str:
    """Spool use against its cap, and the disk's free space against the reserve."""
    storage = config.storage
    cap = f" of {_mib(storage.max_spool_bytes)} cap" if storage.max_spool_bytes else " (no cap)"
    free = shutil.disk_usage(storage.data_dir).free
    return (f"spool: {held_files} file(s), {_mib(held)}{cap}; {purged_files} deleted by retention "
            f"({storage.retention_hours:g} h after delivery); disk: {_mib(free)} free, "
            f"{_mib(storage.min_free_bytes)} kept free")


def status_report(config: Config, limit: int = 20) -> str:
    """A table of the most recently received series."""
    if not config.storage.database_path.exists():
        return f"no database yet at {config.storage.database_path}: nothing received"
    db = Database(config.storage.database_path)
    now = time.time()
    try:
        with db.session() as s:
            series = list(s.scalars(select(Series).order_by(Series.last_received_at.desc()).limit(limit)))
            total = s.scalar(select(func.count(Series.id))) or 0
            held_files, held = s.execute(select(func.count(Instance.id), func.coalesce(func.sum(Instance.size), 0))
                                         .where(Instance.purged_at.is_(None))).one()
            purged_files = s.scalar(select(func.count(Instance.id)).where(Instance.purged_at.is_not(None))) or 0
            rows = []
            for se in series:
                latest = s.scalars(select(Report).where(Report.series_id == se.id)
                                   .order_by(Report.version.desc())).first()
                states = list(s.scalars(select(Delivery.state).where(Delivery.report_id == latest.id))) \
                    if latest else []
                if se.route is None:
                    state = "not routed"
                elif se.error:
                    state = "error: " + se.error[:40]
                elif se.received_version > se.evaluated_version:
                    state = "waiting"
                else:
                    state = "evaluated"
                rows.append([_age(now - se.last_received_at), se.series_uid[-24:], se.modality or "-",
                             str(se.instance_count), se.route or "-", state,
                             "-" if se.score is None else f"{se.score * 100:.1f}%", se.verdict or "-",
                             _delivery_summary(states)])
    finally:
        db.close()
    header = (f"{_disk_use(config, held, held_files, purged_files)}\n"
              f"{total} series received; the {len(rows)} most recent:")
    return header + "\n" + format_table(["received", "series (tail)", "mod", "images", "route", "state",
                                         "score", "verdict", "SR"], rows)
