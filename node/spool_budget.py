"""What the spool may still take: the configured cap and the disk's free space.

The node answers 0xA700 (Out of Resources) before writing when an instance would break either;
the PACS retries later, and the node accepts again once retention or an admin frees space.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from sqlalchemy import func, select

from core.errors import SpoolError
from node.config import StorageSettings
from node.db import Database, Instance


class SpoolBudget:
    """Bytes held in the spool (from the database at start, then kept up to date) and the limits."""

    def __init__(self, storage: StorageSettings, db: Database):
        self.storage = storage
        self.lock = threading.Lock()
        with db.session() as s:
            self.used = int(s.scalar(select(func.coalesce(func.sum(Instance.size), 0))
                                     .where(Instance.purged_at.is_(None))) or 0)

    def reserve(self, nbytes: int) -> None:
        """Raise `SpoolError` when `nbytes` more would exceed the cap or leave too little disk."""
        cap = self.storage.max_spool_bytes
        if cap and self.used + nbytes > cap:
            raise SpoolError(f"spool cap reached: {self.used} of {cap} bytes used")
        free = _free_bytes(self.storage.data_dir)
        if free - nbytes < self.storage.min_free_bytes:
            raise SpoolError(f"disk nearly full: {free} bytes free, {self.storage.min_free_bytes} kept free")

    def added(self, nbytes: int) -> None:
        with self.lock:
            self.used += nbytes

    def released(self, nbytes: int) -> None:
        with self.lock:
            self.used = max(0, self.used - nbytes)


def _free_bytes(folder: Path) -> int:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free
