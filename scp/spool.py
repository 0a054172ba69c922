"""The spool: received instances written atomically and durably, byte for byte as received."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from node.errors import SpoolError

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: str) -> bool:
    """A DICOM UID: numeric components without leading zeroes, joined by dots, at most 64 characters
    (also keeps paths safe)."""
    return 0 < len(value) <= 64 and bool(_UID.match(value))


PARTIAL_PREFIX = ".incoming-"


def remove_partial_files(root: Path) -> int:
    """Delete the temporary files of writes that a crash interrupted (nothing was acknowledged for
    them); returns how many. Call only when no write is in progress."""
    removed = 0
    if root.is_dir():
        for partial in root.rglob(f"{PARTIAL_PREFIX}*"):
            partial.unlink(missing_ok=True)
            removed += 1
    return removed


def _fsync_folder(folder: Path) -> None:
    """Make the folder's entries (a file renamed or a folder made in it) survive power loss."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_folders_durably(folder: Path) -> None:
    """Create `folder` and its missing parents, fsyncing the parent of each one created: a new study's or
    series' folder survives power loss with its first file (one stat when it exists already)."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:  # another association made it meanwhile; its parent is synced below all the same
            pass
        _fsync_folder(new.parent)


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> os.stat_result:
    """Write through a temporary file, fsync it, rename it into place, fsync the folder (and the
    parents of folders made for it).

    Either the whole file is there afterwards or nothing is; returns the file's status (its size and
    modification time) as written.
    """
    try:
        make_folders_durably(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=PARTIAL_PREFIX, dir=path.parent)
    except OSError as exc:
        raise SpoolError(f"cannot create a file in {path.parent}: {exc.strerror or exc}") from exc
    replaced = False
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            written = os.fstat(f.fileno())
        os.replace(tmp, path)
        replaced = True
        _fsync_folder(path.parent)
        return written
    except OSError as exc:
        raise SpoolError(f"cannot write {path.name}: {exc.strerror or exc}") from exc
    finally:
        if not replaced:
            try:
                os.unlink(tmp)
            except OSError:
                pass
