"""The node's database on SQLite and PostgreSQL: the migrations make the models' schema on both, a
database of an earlier release upgrades in place, receivers sharing one database record a series once,
and the CLI reads either."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, select

from node.cli import main
from node.db import AuditEvent, Base, Database, Instance, Series, sqlite_url
from node.migrations import alembic_config
from node.migrations.baseline import baseline_metadata
from node.service import Node
from tests.conftest import node_config, node_config_raw, on_database
from tests.helpers import ct_series, send, wait_for
from tests.serve_process import write_config


def _url(database_url: str | None, tmp_path: Path) -> str:
    return database_url or sqlite_url(tmp_path / "dfnode.sqlite")


def test_the_migrations_make_the_models_schema(tmp_path: Path, database_url: str | None) -> None:
    db = Database(_url(database_url, tmp_path))
    try:
        with db.engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        db.close()
    assert differences == []
    assert current == ScriptDirectory.from_config(alembic_config()).get_current_head()
    Database(_url(database_url, tmp_path)).close()  # opening it again changes nothing


def test_a_database_made_before_migrations_upgrades_in_place(tmp_path: Path, model_dir: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The tables as an earlier release left them (no migration record; the reports table still
    without its later key-image column), with a series in them: the next start keeps the series and
    brings the schema to this release's."""
    raw = node_config_raw(tmp_path / "var", model_dir)
    path = tmp_path / "var" / "dfnode.sqlite"
    path.parent.mkdir(parents=True)
    engine = create_engine(sqlite_url(path))
    baseline_metadata().create_all(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE reports DROP COLUMN key_image_path")
        connection.exec_driver_sql(
            "INSERT INTO series (series_uid, study_uid, patient_id, modality, body_part, description, calling_ae,"
            " first_received_at, last_received_at, instance_count, received_version, evaluated_version)"
            " VALUES ('1.2.3.4', '1.2.3', 'P1', 'CT', 'CHEST', 'old series', 'PACS', 1.0, 1.0, 3, 3, 3)")
    engine.dispose()

    assert main(["status", "--config", str(write_config(raw, tmp_path / "config.yaml"))]) == 0
    assert "1.2.3.4" in capsys.readouterr().out
    with sqlite3.connect(path) as connection:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(reports)")}
        version = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    assert "key_image_path" in columns
    assert version == [(ScriptDirectory.from_config(alembic_config()).get_current_head(),)]
    db = Database(sqlite_url(path))
    try:
        with db.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    finally:
        db.close()


def test_two_receivers_sharing_a_database_record_one_series(tmp_path: Path, model_dir: Path, classifiers,
                                                           postgres_server) -> None:
    """Two nodes on one PostgreSQL database and one spool each receive half of a series at the same
    time: one series row, every instance counted once, one `series.new` in the audit trail."""
    url = postgres_server.new_database()
    configs = [node_config(tmp_path / "var", model_dir, routes=[], **on_database(url)) for _ in range(2)]
    nodes = [Node(config, classifiers).start(port=0) for config in configs]
    try:
        files = ct_series(tmp_path / "ct", slices=40, size=64)
        halves = [files[0::2], files[1::2]]
        statuses: list[list[int | None]] = [[], []]
        senders = [threading.Thread(target=lambda n=n: statuses[n].extend(send(halves[n], nodes[n].port)))
                   for n in range(2)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(timeout=120)
        assert statuses == [[0x0000] * 20, [0x0000] * 20]
        db = nodes[0].db

        def counted() -> tuple[int, int, int] | None:
            with db.session() as s:
                row = s.execute(select(func.count(Series.id), func.max(Series.instance_count),
                                       func.max(Series.received_version))).one()
                found = (row[0], row[1], row[2])
            return found if found[1] == 40 else None

        assert wait_for(counted, timeout=30) == (1, 40, 40)
        with db.session() as s:
            assert s.scalar(select(func.count(Instance.id))) == 40
            assert s.scalar(select(func.count(AuditEvent.id)).where(AuditEvent.event == "series.new")) == 1
    finally:
        for node in nodes:
            node.stop()


def test_status_and_audit_read_postgresql(tmp_path: Path, model_dir: Path, classifiers, receiver,
                                          postgres_server, capsys: pytest.CaptureFixture[str]) -> None:
    url = postgres_server.new_database()
    raw = node_config_raw(tmp_path / "var", model_dir, receiver.port, **on_database(url))
    config_path = write_config(raw, tmp_path / "config.yaml")
    node = Node(node_config(tmp_path / "var", model_dir, receiver.port, **on_database(url)), classifiers).start(
        port=0)
    try:
        files = ct_series(tmp_path / "ct", slices=6, size=64)
        assert send(files, node.port) == [0x0000] * 6
        wait_for(lambda: receiver.reports(), timeout=60)
    finally:
        node.stop()
    series_uid = str(receiver.reports()[0].CurrentRequestedProcedureEvidenceSequence[0]
                     .ReferencedSeriesSequence[0].SeriesInstanceUID)
    assert not (tmp_path / "var" / "dfnode.sqlite").exists()
    assert main(["status", "--config", str(config_path)]) == 0
    assert series_uid[-24:] in capsys.readouterr().out
    assert main(["audit", "--config", str(config_path), "--uid", series_uid]) == 0
    out = capsys.readouterr().out
    assert "series.new" in out and "report.created" in out and "delivery.sent" in out


def test_a_database_that_cannot_be_reached_is_named_plainly(tmp_path: Path, model_dir: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    unreachable = f"postgresql://dfnode:secret@/nothing?host={tmp_path}/no-socket-here"
    raw = node_config_raw(tmp_path / "var", model_dir, storage={"database_url": unreachable})
    assert main(["status", "--config", str(write_config(raw, tmp_path / "config.yaml"))]) == 1
    err = capsys.readouterr().err
    assert "cannot be opened" in err and "secret" not in err and "Traceback" not in err


def test_a_database_the_node_does_not_use_is_a_config_error(tmp_path: Path, model_dir: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    raw = node_config_raw(tmp_path / "var", model_dir, storage={"database_url": "mysql://db/dfnode"})
    assert main(["check-config", "--config", str(write_config(raw, tmp_path / "config.yaml"))]) == 2
    assert "storage.database_url" in capsys.readouterr().err
