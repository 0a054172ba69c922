"""Durable file writes: a file is either wholly in place after a crash or power loss, or not there.

Written by hand because no library does the whole of it (temporary file in the same folder, fsync,
rename, fsync of the folder and of every parent folder made for it); the spool and the report files
both rely on it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from core.errors import SpoolError

PARTIAL_PREFIX = ".incoming-"  # the temporary files of writes in progress (or cut short by a crash)
# Several node processes may write into one shared spool: each names its temporary files with its own
# name (`name_partial_files`), so that a start removes only what its own earlier run left behind.
_writer = {"name": ""}


def name_partial_files(name: str) -> None:
    """Name this process's temporary files after the node (`node.name`), once, at start."""
    _writer["name"] = name


def partial_prefix() -> str:
    """The prefix of this process's temporary files."""
    return f"{PARTIAL_PREFIX}{_writer['name']}~" if _writer["name"] else PARTIAL_PREFIX


def fsync_folder(folder: Path) -> None:
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
        except FileExistsError:  # another writer made it meanwhile; its parent is synced below all the same
            pass
        fsync_folder(new.parent)


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> os.stat_result:
    """Write through a temporary file, fsync it, rename it into place, fsync the folder (and the
    parents of folders made for it).

    Either the whole file is there afterwards or nothing is; returns the file's status (its size and
    modification time) as written. Raises `SpoolError` naming the file when the disk refuses.
    """
    try:
        make_folders_durably(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=partial_prefix(), dir=path.parent)
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
        fsync_folder(path.parent)
        return written
    except OSError as exc:
        raise SpoolError(f"cannot write {path.name}: {exc.strerror or exc}") from exc
    finally:
        if not replaced:
            try:
                os.unlink(tmp)
            except OSError:
                pass
