"""The spool's names: which UIDs may name its folders and files, and clearing writes a crash cut short."""

from __future__ import annotations

import re
from pathlib import Path

from core.durable import PARTIAL_PREFIX

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: str) -> bool:
    """A DICOM UID: numeric components without leading zeroes, joined by dots, at most 64 characters
    (also keeps paths safe)."""
    return 0 < len(value) <= 64 and bool(_UID.match(value))


def remove_partial_files(root: Path) -> int:
    """Delete the temporary files of writes that a crash interrupted (nothing was acknowledged for
    them); returns how many. Call only when no write is in progress."""
    removed = 0
    if root.is_dir():
        for partial in root.rglob(f"{PARTIAL_PREFIX}*"):
            partial.unlink(missing_ok=True)
            removed += 1
    return removed
