"""The spool's names: which UIDs may name its folders and files, and clearing writes a crash cut short."""

from __future__ import annotations

import re
import time
from pathlib import Path

from core.durable import PARTIAL_PREFIX, partial_prefix

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: str) -> bool:
    """A DICOM UID: numeric components without leading zeroes, joined by dots, at most 64 characters
    (also keeps paths safe)."""
    return 0 < len(value) <= 64 and bool(_UID.match(value))


OTHERS_PARTIAL_SECONDS = 3600.0  # another writer's temporary file untouched this long was cut short too


def remove_partial_files(root: Path) -> int:
    """Delete the temporary files of writes that a crash interrupted (nothing was acknowledged for
    them): this process's own (`partial_prefix`), and those of other node processes sharing the spool
    that nobody has written for an hour. Returns how many. Call before this process writes."""
    removed = 0
    own = partial_prefix()
    cutoff = time.time() - OTHERS_PARTIAL_SECONDS
    if root.is_dir():
        for partial in root.rglob(f"{PARTIAL_PREFIX}*"):
            try:
                if partial.name.startswith(own) or partial.stat().st_mtime < cutoff:
                    partial.unlink(missing_ok=True)
                    removed += 1
            except FileNotFoundError:  # its writer renamed or removed it meanwhile
                continue
    return removed
