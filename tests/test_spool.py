"""The spool's writes: what is fsynced before an instance is acknowledged, and what a failed write leaves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core import durable
from core.durable import PARTIAL_PREFIX, write_atomically
from core.errors import SpoolError


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths os.fsync is called on, in order."""
    paths: list[Path] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        paths.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(durable.os, "fsync", recording_fsync)
    return paths


def test_a_new_series_folder_is_synced_into_its_parents(tmp_path: Path, synced: list[Path]) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    path = root / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    assert write_atomically(path, lambda f: f.write(b"DICM" * 10)).st_size == 40
    assert path.read_bytes() == b"DICM" * 10
    # the study folder's entry in the spool root, the series folder's in the study folder, the file's
    # data, then its name in the series folder
    assert synced[:2] == [root, root / "1.2.3"]
    assert synced[2].parent == path.parent and synced[2].name.startswith(PARTIAL_PREFIX)
    assert synced[3:] == [path.parent]


def test_an_existing_folder_costs_no_extra_sync(tmp_path: Path, synced: list[Path]) -> None:
    path = tmp_path / "a" / "b.dcm"
    write_atomically(path, lambda f: f.write(b"first"))
    synced.clear()
    write_atomically(tmp_path / "a" / "c.dcm", lambda f: f.write(b"second"))
    assert len(synced) == 2 and synced[1] == tmp_path / "a"


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.dcm"

    def fails(f: object) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(SpoolError, match="No space left on device"):
        write_atomically(path, fails)
    assert list((tmp_path / "a").iterdir()) == []


def test_a_folder_that_cannot_be_made_is_a_spool_error(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a file where a folder should be")
    with pytest.raises(SpoolError, match="cannot create a file in"):
        write_atomically(tmp_path / "a" / "b" / "c.dcm", lambda f: f.write(b"x"))
