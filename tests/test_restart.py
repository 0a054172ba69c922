"""State survives a restart: what was received is evaluated, what was queued is sent, nothing twice."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from node.db import Delivery, Series
from node.service import Node
from tests.conftest import node_config, on_database
from tests.helpers import Receiver, ct_series, free_port, send, wait_for


def test_restart_between_receiving_and_processing(tmp_path: Path, model_dir: Path, classifiers,
                                                  receiver: Receiver, database_url: str | None) -> None:
    files = ct_series(tmp_path / "ct", slices=5)
    slow = node_config(tmp_path / "var", model_dir, receiver.port,
                       routes=[{"name": "lung-ct", "model": "lung", "series_stable_seconds": 3600,
                                "destinations": ["pacs"], "match": {"modalities": ["CT"]}}],
                       **on_database(database_url))
    first = Node(slow, classifiers).start(port=0)
    try:
        assert send(files, first.port) == [0x0000] * 5
    finally:
        first.stop()
    assert receiver.reports() == []
    config = node_config(tmp_path / "var", model_dir, receiver.port, **on_database(database_url))
    second = Node(config, classifiers).start(port=0)
    try:
        sr = wait_for(lambda: receiver.reports(), timeout=60)[0]
        assert len(sr.ContentSequence[-1].ContentSequence) == 6  # 5 images + the series
        wait_for(lambda: _states(second) == ["sent"], timeout=10)
    finally:
        second.stop()
    third = Node(config, classifiers).start(port=0)  # a further restart sends nothing again
    try:
        third.evaluator.run_once()
        third.deliverer.run_once()
        assert len(receiver.reports()) == 1
        with third.db.session() as s:
            series = s.scalars(select(Series)).one()
            assert series.evaluated_version == series.received_version == 5
    finally:
        third.stop()


def test_queued_delivery_is_sent_after_a_restart(tmp_path: Path, model_dir: Path, classifiers,
                                                 database_url: str | None) -> None:
    receiver = Receiver()
    files = ct_series(tmp_path / "ct", slices=3)
    port = free_port()
    config = node_config(tmp_path / "var", model_dir, port, **on_database(database_url))
    first = Node(config, classifiers).start(port=0)
    try:
        assert send(files, first.port) == [0x0000] * 3
        wait_for(lambda: _states(first) == ["pending"], timeout=60)
    finally:
        first.stop()
    receiver.start(port)
    second = Node(config, classifiers).start(port=0)
    try:
        wait_for(lambda: receiver.reports(), timeout=60)
        wait_for(lambda: _states(second) == ["sent"], timeout=10)
        assert len(receiver.reports()) == 1
    finally:
        second.stop()
        receiver.stop()


def _states(node: Node) -> list[str]:
    with node.db.session() as s:
        return [d.state for d in s.scalars(select(Delivery))]
