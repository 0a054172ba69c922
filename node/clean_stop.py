"""A receiver's mark that it stopped cleanly, so that its next start need not look through the spool.

Spool recovery (`node.spool_recovery`) finds instances that were answered but whose index entry a
crash or power cut took back. After a clean stop there are none: every association finished, every
instance answered was indexed, and the database was closed (SQLite checkpoints its log then). The stop
leaves a mark under the node's name; the next start under that name removes it, durably, before it
receives anything, and skips the look through the spool (on a shared spool of many series, a slow
one). A start without the mark (the first, or after a kill, a crash or a power cut) looks as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from core.durable import fsync_folder, make_folders_durably, write_atomically


class CleanStopMark:
    def __init__(self, data_dir: Path, node_name: str):
        self.path = data_dir / "clean-stops" / node_name

    def take(self) -> bool:
        """Whether the last stop under this name was clean; removes the mark, so that a crash from now on
        finds none."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        fsync_folder(self.path.parent)
        return True

    def leave(self) -> None:
        """Mark a clean stop: nothing answered is left unindexed."""
        make_folders_durably(self.path.parent)
        def write(f: BinaryIO) -> None:
            f.write(b"stopped cleanly\n")
        write_atomically(self.path, write)
