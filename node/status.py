"""`dfnode status`: recent series, what became of them, and where their reports went."""

from __future__ import annotations

import shutil
import time

from core.errors import ModelLoadError
from inference.model_card import read_card
from node.config import Config
from node.db import Database, database_exists
from node.overview import recent_series, spool_counts
from node.tables import format_table


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


def route_thresholds(config: Config) -> dict[str, float]:
    """Each route's decision threshold: its model card's (a card that cannot be read is left out)."""
    thresholds: dict[str, float] = {}
    for route in config.routes:
        ref = config.models.get(route.model)
        if ref is None:
            continue
        try:
            thresholds[route.name] = read_card(ref.card).threshold
        except ModelLoadError:
            continue
    return thresholds


def status_report(config: Config, limit: int = 20) -> str:
    """A table of the most recently received series."""
    if not database_exists(config.storage.database):
        return f"no database yet at {config.storage.database.removeprefix('sqlite:///')}: nothing received"
    db = Database(config.storage.database)
    now = time.time()
    thresholds = route_thresholds(config)
    try:
        total, held_files, held, purged_files = spool_counts(db)
        rows = [[_age(now - se.received_at), se.series_uid[-24:], se.modality or "-", str(se.instances),
                 se.route or "-", se.state, "-" if se.score is None else f"{se.score * 100:.1f}%",
                 f"{thresholds[se.route] * 100:.0f}%" if se.route in thresholds else "-",
                 se.verdict or "-", se.deliveries] for se in recent_series(db, limit)]
    finally:
        db.close()
    header = (f"{_disk_use(config, held, held_files, purged_files)}\n"
              f"{total} series received; the {len(rows)} most recent:")
    return header + "\n" + format_table(["received", "series (tail)", "mod", "images", "route", "state",
                                         "score", "threshold", "verdict", "SR"], rows)
