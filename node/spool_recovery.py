"""At start-up, before listening: index the spooled instances that the database lacks.

An instance is answered once its file is durable in the spool and indexed right after, with a commit
that does not wait for the disk (see `node.db`); a power cut can take such commits back, and an
instance whose indexing failed waits in memory only. Both are found here, in the series folders
changed since shortly before the newest index entry, and indexed from the file: its File Meta names
the peer that sent it (Sending Application Entity Title). So is a copy sent again whose index entry
was lost: its file's modification time is not the one its entry recorded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pydicom
from sqlalchemy import func, select

from core.durable import PARTIAL_PREFIX
from node.db import Database, Instance, Series
from node.ingest import Ingest, Spooled, spool_path
from scp.spool import is_valid_uid
from scp.storage_scp import ReceivedInstance

log = logging.getLogger(__name__)

# series folders changed up to this long before the newest index entry are checked: an instance's
# index entry is written just after its file, by whichever association gets the database first
MARGIN_SECONDS = 600.0
NOTE = ", indexed from the spool at start-up"


def index_spooled_instances(spool_dir: Path, db: Database, ingest: Ingest) -> int:
    """Index every spooled instance the database lacks or has an older copy of; returns how many were
    indexed."""
    indexed = 0
    for path in unindexed_files(spool_dir, db):
        spooled = spooled_instance(path)
        if spooled is None or spool_path(spool_dir, spooled.instance) != path:
            log.warning("%s is in the spool but is not an instance dfnode received; left alone", path)
        elif ingest.index(spooled):
            indexed += 1
    if indexed:
        log.warning("indexed %d instance(s) from the spool that the database lacked or had an older copy of "
                    "(an unclean stop)", indexed)
    return indexed


def unindexed_files(spool_dir: Path, db: Database) -> Iterator[Path]:
    """The instance files in recently changed series folders that have no index entry, or whose entry
    recorded another size or modification time (a copy sent again replaced the file, its entry was
    lost)."""
    with db.engine.connect() as conn:
        newest = conn.scalar(select(func.max(Instance.received_at)))
    since = newest - MARGIN_SECONDS if newest is not None else float("-inf")
    for series_folder in _series_folders(spool_dir):
        if series_folder.stat().st_mtime < since:
            continue
        files = {entry.name: entry for entry in os.scandir(series_folder)
                 if entry.name.endswith(".dcm") and not entry.name.startswith(PARTIAL_PREFIX)}
        if not files:
            continue
        with db.engine.connect() as conn:
            known = {uid: (size, mtime_ns) for uid, size, mtime_ns in conn.execute(
                select(Instance.sop_instance_uid, Instance.size, Instance.file_mtime_ns).join(Series)
                .where(Series.series_uid == series_folder.name))}
        for name in sorted(files):
            uid = name.removesuffix(".dcm")
            if uid not in known or _replaced(known[uid], files[name].stat()):
                yield series_folder / name


def _replaced(entry: tuple[int, int | None], file: os.stat_result) -> bool:
    """Whether the file is not the one the index entry (size, modification time) recorded. An entry of
    an earlier release has no time; its size still tells."""
    size, mtime_ns = entry
    return file.st_size != size or mtime_ns not in (None, file.st_mtime_ns)


def _series_folders(spool_dir: Path) -> Iterator[Path]:
    """spool/<study UID>/<series UID> folders."""
    if not spool_dir.is_dir():
        return
    with os.scandir(spool_dir) as studies:
        for study in studies:
            if study.is_dir() and is_valid_uid(study.name):
                with os.scandir(study.path) as series_folders:
                    for series in series_folders:
                        if series.is_dir() and is_valid_uid(series.name):
                            yield Path(series.path)


def spooled_instance(path: Path) -> Spooled | None:
    """A spooled file as the ingest indexes it, or None when it cannot be read as one."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        meta = header.file_meta
        instance = ReceivedInstance(
            str(header.SOPClassUID), str(header.SOPInstanceUID), str(header.StudyInstanceUID),
            str(header.SeriesInstanceUID), str(meta.TransferSyntaxUID),
            str(meta.get("SendingApplicationEntityTitle", "") or ""), header, _already_spooled)
        stat = path.stat()
    except Exception as exc:  # anything unreadable is reported by the caller and left as it is
        log.debug("%s cannot be read: %s", path, exc)
        return None
    return Spooled(instance, path, stat.st_size, stat.st_mtime, stat.st_mtime_ns, NOTE)


def _already_spooled(_file: BinaryIO) -> None:
    raise RuntimeError("an instance indexed from the spool is not written again")
