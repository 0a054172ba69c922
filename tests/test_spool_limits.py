"""Promises 2 and 6: when the spool cannot take an instance (cap, full disk) the answer is 0xA700
with no partial file, the node keeps serving and recovers by itself; spooled files are deleted
after their report was delivered plus the retention, never before."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import create_engine, func, select

from node.db import Instance
from node.retention import RETENTION_LOCK
from node.service import Node
from node.status import status_report
from tests.conftest import node_config
from tests.helpers import IN_CI, Receiver, copy_with_new_uids, echo, free_port, real_file, send, wait_for

OUT_OF_RESOURCES = 0xA700
FAST_RETENTION = {"retention_hours": 0, "retention_check_seconds": 0.2, "min_free_bytes": 0}


def _copies(tmp_path: Path, name: str, count: int) -> list[Path]:
    """`count` instances of one new series (same study and series UIDs, new SOP Instance UIDs)."""
    first = copy_with_new_uids(real_file("CT_small.dcm"), tmp_path / name)
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    return [first] + [copy_with_new_uids(first, tmp_path / name, StudyInstanceUID=ds.StudyInstanceUID,
                                         SeriesInstanceUID=ds.SeriesInstanceUID) for _ in range(count - 1)]


def _partials(root: Path) -> list[Path]:
    return list(root.rglob(".incoming-*"))


def _held(node: Node) -> int:
    with node.db.session() as s:
        return s.scalar(select(func.count(Instance.id)).where(Instance.purged_at.is_(None))) or 0


def test_spool_cap_refuses_then_recovers_once_retention_frees_space(tmp_path: Path, model_dir: Path,
                                                                   receiver: Receiver, classifiers) -> None:
    size = real_file("CT_small.dcm").stat().st_size
    storage = {"data_dir": str(tmp_path / "var"), "max_spool_bytes": int(size * 3.5), **FAST_RETENTION}
    node = Node(node_config(tmp_path / "var", model_dir, receiver.port, storage=storage), classifiers).start(port=0)
    try:
        first, second = _copies(tmp_path, "a", 3), _copies(tmp_path, "b", 2)
        assert send(first, node.port) == [0x0000] * 3
        assert send(second, node.port)[0] == OUT_OF_RESOURCES  # the cap would be exceeded
        assert _partials(tmp_path / "var") == [] and echo(node.port) == 0x0000
        wait_for(lambda: receiver.reports(), timeout=60)  # the first series is reported and delivered ...
        wait_for(lambda: _held(node) == 0, timeout=30)  # ... so retention deletes its files
        assert not [p for p in (tmp_path / "var" / "spool").rglob("*.dcm")]
        assert "3 deleted by retention" in status_report(node.config)
        assert send(second, node.port) == [0x0000, 0x0000]  # space came back: accepted again
    finally:
        node.stop()


def test_nothing_is_deleted_before_delivery(tmp_path: Path, model_dir: Path, classifiers,
                                            database_url: str | None) -> None:
    """And on PostgreSQL, retention waits while another node purges (holds its advisory lock)."""
    port = free_port()  # the destination is down
    storage = {"data_dir": str(tmp_path / "var"), "database_url": database_url, **FAST_RETENTION}
    node = Node(node_config(tmp_path / "var", model_dir, port, storage=storage), classifiers).start(port=0)
    receiver = Receiver()
    engine = create_engine(database_url) if database_url else None
    other_node = engine.connect() if engine is not None else None
    try:
        assert send(_copies(tmp_path, "a", 2), node.port) == [0x0000, 0x0000]
        wait_for(lambda: "1 pending" in status_report(node.config), timeout=60)
        wait_for(lambda: _attempts(node) >= 2, timeout=30)  # several retention rounds have passed meanwhile
        assert _held(node) == 2  # evaluated, report pending: nothing may go
        if other_node is not None:
            assert other_node.scalar(select(func.pg_try_advisory_lock(RETENTION_LOCK)))
        receiver.start(port)
        wait_for(lambda: receiver.reports(), timeout=60)
        if other_node is not None:
            wait_for(lambda: _attempts(node) >= 1 and _sent(node), timeout=30)
            time.sleep(3 * FAST_RETENTION["retention_check_seconds"])
            assert _held(node) == 2  # the other node is purging
            other_node.scalar(select(func.pg_advisory_unlock(RETENTION_LOCK)))
        wait_for(lambda: _held(node) == 0, timeout=30)
    finally:
        node.stop()
        receiver.stop()
        if other_node is not None and engine is not None:
            other_node.close()
            engine.dispose()


def _sent(node: Node) -> bool:
    from node.db import Delivery, DeliveryState

    with node.db.session() as s:
        return bool(s.scalar(select(func.count(Delivery.id)).where(Delivery.state == DeliveryState.SENT)))


def _attempts(node: Node) -> int:
    from node.db import Delivery

    with node.db.session() as s:
        return s.scalar(select(func.max(Delivery.attempts))) or 0


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a disk that really fills up (needs root, as CI has)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        if IN_CI:
            pytest.fail(f"cannot mount a tmpfs: {result.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_answers_out_of_resources_and_recovers(tiny_filesystem: Path, tmp_path: Path, model_dir: Path,
                                                         receiver: Receiver, classifiers,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    data = tiny_filesystem / "var"
    storage = {"data_dir": str(data), "min_free_bytes": 0}
    node = Node(node_config(data, model_dir, receiver.port, storage=storage), classifiers).start(port=0)
    filler = tiny_filesystem / "filler"
    try:
        free = shutil.disk_usage(tiny_filesystem).free
        filler.write_bytes(b"\0" * (free - 300_000))
        statuses = [send([f], node.port)[0] for f in _copies(tmp_path, "a", 20)]
        assert OUT_OF_RESOURCES in statuses, statuses
        refused = statuses.index(OUT_OF_RESOURCES)
        assert statuses[:refused] == [0x0000] * refused
        assert _partials(data / "spool") == [] and echo(node.port) == 0x0000  # reports may be mid-write
        # a free-space check that cannot see the truth (as on some network filesystems): the write itself
        # fails with ENOSPC, and the answer is the same, with nothing partial left behind
        monkeypatch.setattr("node.spool_budget._free_bytes", lambda folder: 1 << 40)
        assert send(_copies(tmp_path, "c", 1), node.port) == [OUT_OF_RESOURCES]
        assert _partials(data / "spool") == [] and "No space left on device" in caplog.text
        monkeypatch.undo()
        filler.unlink()  # the admin frees space
        assert send(_copies(tmp_path, "b", 1), node.port) == [0x0000]
    finally:
        node.stop()
