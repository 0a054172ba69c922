"""Where pynetdicom streams each arriving dataset: a partial file on the spool's filesystem.

pynetdicom (with `STORE_RECV_CHUNKED_DATASET`) writes a C-STORE's dataset to a temporary file as its
fragments arrive, so memory stays flat however large the dataset. Two things are the node's own:
the file is made in the spool's folder for partial writes (same filesystem, cleared at start like any
other partial write; the system's temporary folder may be memory), and a write that fails (disk full)
is remembered instead of raised: raised, it would abort the association inside pynetdicom's state
machine, where the node must answer the C-STORE "out of resources" (0xA700) and keep the association.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pynetdicom import _config, dimse_messages

from core.durable import PARTIAL_PREFIX, partial_prefix

_failures: dict[str, OSError] = {}  # partial file name -> why writing it failed
_failures_lock = threading.Lock()


class PartialFile:
    """The file object pynetdicom writes a dataset into (what it uses of `NamedTemporaryFile`)."""

    def __init__(self, folder: Path):
        self._file: Any = None
        try:
            self._file = tempfile.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm", prefix=partial_prefix(),
                                                     dir=folder if folder.is_dir() else None)
            self.name = self._file.name
        except OSError as exc:
            self.name = str(folder / f"{partial_prefix()}not-created-{id(self)}.dcm")
            self._failed(exc)

    @property
    def file(self) -> PartialFile:
        return self  # pynetdicom flushes `.file`

    def _failed(self, exc: OSError) -> None:
        with _failures_lock:
            _failures.setdefault(self.name, exc)
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            Path(self.name).unlink(missing_ok=True)  # free what it took
            self._file = None

    def write(self, data: bytes) -> int:
        if self._file is not None:
            try:
                self._file.write(data)
            except OSError as exc:
                self._failed(exc)
        return len(data)

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                self._failed(exc)

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self._failed(exc)

    def __del__(self) -> None:  # an association that ended mid-dataset never closes its file
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass


def receive_into(folder: Path) -> None:
    """Have pynetdicom stream every dataset into a `PartialFile` in `folder` (made here). One folder per
    process: a node started later takes it over, and a missing folder falls back to the system's."""
    folder.mkdir(parents=True, exist_ok=True)
    dimse_messages.NamedTemporaryFile = lambda **_options: PartialFile(folder)  # type: ignore[attr-defined,assignment]
    _config.STORE_RECV_CHUNKED_DATASET = True


def write_failure(path: Path) -> OSError | None:
    """Why the dataset received into `path` could not be written, or None; forgets it."""
    with _failures_lock:
        return _failures.pop(str(path), None)


def remove_abandoned(folder: Path, idle_seconds: float) -> int:
    """Delete the partial files nobody has written to for `idle_seconds` (an association that aborted
    or dropped mid-dataset leaves its file behind; a live one writes at least that often or times
    out); returns how many."""
    removed = 0
    cutoff = time.time() - idle_seconds
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.name.startswith(PARTIAL_PREFIX) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except OSError:  # gone meanwhile
            pass
    return removed
