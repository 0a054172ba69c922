"""The spool is the record of what was acknowledged: an instance is answered once its file is durable,
and an index entry that a power cut or a failing database takes back is written again, from the file."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.exc import OperationalError

from inference.model import Classifier
from node.db import AuditEvent, Instance, Series
from node.ingest import Spooled
from node.service import Node
from tests.conftest import node_config, on_database
from tests.helpers import Receiver, ct_series, send, storescu, wait_for

SLOW = {"name": "lung-ct", "model": "lung", "series_stable_seconds": 3600, "destinations": ["pacs"],
        "match": {"modalities": ["CT"], "calling_ae_titles": ["PACS"]}}  # routed only when sent by PACS


def _indexed(node: Node) -> set[str]:
    with node.db.session() as s:
        return set(s.scalars(select(Instance.sop_instance_uid)))


def _start(classifiers: dict[str, Classifier], database_url: str | None, data_dir: Path, model_dir: Path,
           *receiver_port: int, **overrides: object) -> Node:
    """A node on SQLite or PostgreSQL (`database_url`), started on any free port."""
    return Node(node_config(data_dir, model_dir, *receiver_port, **overrides, **on_database(database_url)),
                classifiers).start(port=0)


def _power_cut(node: Node) -> None:
    """Stop the node as a power cut would have: without the mark of a clean stop."""
    node.stop()
    assert node.clean_stop.take()


def _spooled(data_dir: Path) -> set[str]:
    return {p.stem for p in (data_dir / "spool").rglob("*.dcm")}


def test_a_series_whose_index_a_power_cut_took_back_is_indexed_and_evaluated_at_start(
        tmp_path: Path, model_dir: Path, classifiers, receiver: Receiver, caplog: pytest.LogCaptureFixture,
        database_url: str | None) -> None:
    files = ct_series(tmp_path / "ct", slices=5)
    var = tmp_path / "var"
    first = _start(classifiers, database_url, var, model_dir, receiver.port, routes=[SLOW])
    try:
        assert storescu(first.port, files).returncode == 0  # DCMTK's, calling as PACS
        sent = {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
        assert _indexed(first) == sent == _spooled(var)
        with first.db.write_lock, first.db.engine.begin() as conn:  # what a power cut may take back
            conn.execute(delete(AuditEvent).where(AuditEvent.event.in_(["instance.stored", "series.new"])))
            conn.execute(delete(Instance))
            conn.execute(delete(Series))
    finally:
        _power_cut(first)
    caplog.set_level(logging.WARNING, logger="node.spool_recovery")
    routed = {**SLOW, "series_stable_seconds": 0.5}
    second = _start(classifiers, database_url, var, model_dir, receiver.port, routes=[routed])
    try:
        assert _indexed(second) == sent
        assert "indexed 5 instance(s) from the spool" in caplog.text
        with second.db.session() as s:
            series = s.scalars(select(Series)).one()
            assert (series.route, series.calling_ae, series.instance_count) == ("lung-ct", "PACS", 5)
            details = s.scalars(select(AuditEvent.detail).where(AuditEvent.event == "instance.stored")).all()
            assert len(details) == 5 and all(d.endswith("indexed from the spool at start-up") for d in details)
        sr = wait_for(lambda: receiver.reports(), timeout=60)[0]
        assert len(sr.ContentSequence[-1].ContentSequence) == 6  # the 5 images and the series
    finally:
        second.stop()


def test_copies_sent_again_whose_index_a_power_cut_took_back_are_indexed_at_start(
        tmp_path: Path, model_dir: Path, classifiers, receiver: Receiver, caplog: pytest.LogCaptureFixture,
        database_url: str | None) -> None:
    files = ct_series(tmp_path / "ct", slices=3)
    uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
    same_size = pydicom.dcmread(files[0])  # a pixel corrected: only the file's time tells
    pixels = same_size.pixel_array
    pixels[0, 0] += 1
    same_size.PixelData = pixels.tobytes()
    same_size.save_as(tmp_path / "0.dcm")
    larger = pydicom.dcmread(files[2])
    larger.ImageComments = "corrected and sent again " * 20
    larger.save_as(tmp_path / "2.dcm")
    var = tmp_path / "var"
    first = _start(classifiers, database_url, var, model_dir, receiver.port, routes=[SLOW])
    try:
        assert storescu(first.port, files).returncode == 0
        with first.db.session() as s:
            before = {row.sop_instance_uid: row for row in s.execute(
                select(Instance.sop_instance_uid, Instance.size, Instance.received_at, Instance.file_mtime_ns))}
            version = s.scalars(select(Series.received_version)).one()
        assert storescu(first.port, [tmp_path / "0.dcm", tmp_path / "2.dcm"]).returncode == 0
        with first.db.write_lock, first.db.engine.begin() as conn:  # what a power cut may take back
            for uid in uids:
                old = before[uid]
                conn.execute(update(Instance).where(Instance.sop_instance_uid == uid).values(
                    size=old.size, received_at=old.received_at,
                    # entries written by an earlier release record no time: the second's file is the
                    # same, the third's is larger
                    file_mtime_ns=old.file_mtime_ns if uid == uids[0] else None))
            conn.execute(update(Series).values(received_version=version))
            conn.execute(delete(AuditEvent).where(AuditEvent.detail.contains("replaced an earlier copy")))
    finally:
        _power_cut(first)
    caplog.set_level(logging.WARNING, logger="node.spool_recovery")
    second = _start(classifiers, database_url, var, model_dir, receiver.port, routes=[SLOW])
    try:
        assert "indexed 2 instance(s) from the spool" in caplog.text
        with second.db.session() as s:
            for uid in (uids[0], uids[2]):
                spooled = next((var / "spool").rglob(f"{uid}.dcm")).stat()
                row = s.scalars(select(Instance).where(Instance.sop_instance_uid == uid)).one()
                assert (row.size, row.file_mtime_ns) == (spooled.st_size, spooled.st_mtime_ns)
                assert s.scalars(select(AuditEvent.detail).where(AuditEvent.sop_instance_uid == uid).where(
                    AuditEvent.detail.contains("replaced an earlier copy, indexed from the spool"))).one()
            assert s.scalars(select(Instance.file_mtime_ns).where(Instance.sop_instance_uid == uids[1])).one() is None
            series = s.scalars(select(Series)).one()
            assert (series.received_version, series.instance_count) == (version + 2, 3)  # to be evaluated again
    finally:
        second.stop()


def test_an_instance_the_database_cannot_index_is_answered_and_indexed_later(
        tmp_path: Path, model_dir: Path, classifiers, caplog: pytest.LogCaptureFixture,
        database_url: str | None) -> None:
    files = ct_series(tmp_path / "ct", slices=3)
    uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
    var = tmp_path / "var"
    node = _start(classifiers, database_url, var, model_dir, routes=[SLOW])
    record = node.ingest._record
    failing = True

    def locked_database(spooled: Spooled):  # type: ignore[no-untyped-def]
        if failing:
            raise OperationalError("INSERT INTO instances", {}, Exception("database is locked"))
        return record(spooled)

    node.ingest._record = locked_database  # type: ignore[method-assign]
    try:
        assert send(files[:1], node.port) == [0x0000]  # its file is durable: answered, index waiting
        assert send(files[1:2], node.port) == [0xA700]  # refused while the first cannot be indexed
        assert _spooled(var) == {uids[0]} and _indexed(node) == set()
        assert f"instance {uids[0]} is in the spool but not indexed" in caplog.text
        failing = False
        assert send(files[1:2], node.port) == [0x0000]  # the first is indexed before it
        assert _indexed(node) == set(uids[:2]) == _spooled(var)
        failing = True
        assert send(files[2:], node.port) == [0x0000]
    finally:
        node.stop()  # with the third's index still waiting in memory: not a clean stop
    assert not node.clean_stop.path.exists()
    again = _start(classifiers, database_url, var, model_dir, routes=[SLOW])
    try:
        assert _indexed(again) == set(uids) == _spooled(var)
    finally:
        again.stop()


def test_files_in_the_spool_that_dfnode_did_not_receive_are_left_alone(
        tmp_path: Path, model_dir: Path, classifiers, caplog: pytest.LogCaptureFixture,
        database_url: str | None) -> None:
    files = ct_series(tmp_path / "ct", slices=1)
    series = tmp_path / "var" / "spool" / "1.2.3" / "1.2.3.4"
    series.mkdir(parents=True)
    (series / "1.2.3.4.5.dcm").write_bytes(b"not DICOM")
    shutil.copy(files[0], series / "1.2.3.4.6.dcm")  # a real instance, in another series' folder
    caplog.set_level(logging.WARNING, logger="node.spool_recovery")
    node = _start(classifiers, database_url, tmp_path / "var", model_dir)
    try:
        assert _indexed(node) == set()
        assert caplog.text.count("is in the spool but is not an instance dfnode received; left alone") == 2
        assert send(files, node.port) == [0x0000]  # and the node serves
        assert sorted(p.name for p in series.iterdir()) == ["1.2.3.4.5.dcm", "1.2.3.4.6.dcm"]
    finally:
        node.stop()


def test_a_start_after_a_clean_stop_does_not_look_through_the_spool(
        tmp_path: Path, model_dir: Path, classifiers, caplog: pytest.LogCaptureFixture,
        database_url: str | None) -> None:
    """A clean stop leaves nothing unindexed: the next start under the same name skips the spool (a shared
    spool may hold many series); a start after one that was not clean looks through it again."""
    files = ct_series(tmp_path / "ct", slices=2)
    var = tmp_path / "var"
    node = _start(classifiers, database_url, var, model_dir, routes=[SLOW])
    try:
        assert send(files[:1], node.port) == [0x0000]
    finally:
        node.stop()
    assert node.clean_stop.path.exists()
    planted = next((var / "spool").rglob("*.dcm")).parent / "1.2.826.0.1.3680043.8.498.1.dcm"
    shutil.copy(files[1], planted)  # not indexed, and not something a clean stop can leave behind
    caplog.set_level(logging.INFO, logger="node")
    again = _start(classifiers, database_url, var, model_dir, routes=[SLOW])
    try:
        assert "the last stop of" in caplog.text and "was clean" in caplog.text
        assert not again.clean_stop.path.exists()  # taken at the start: a crash from now on finds none
        assert len(_indexed(again)) == 1
    finally:
        _power_cut(again)
    third = _start(classifiers, database_url, var, model_dir, routes=[SLOW])
    try:
        assert "left alone" in caplog.text  # looked through: the planted file is not where dfnode puts it
    finally:
        third.stop()
