"""The node's database (SQLite through SQLAlchemy): series, instances, reports, deliveries, audit,
console users.

A series needs evaluation while `received_version > evaluated_version`; both are committed in the
same transactions as the work they describe, so a crash at any point leaves a state that the next
start simply continues from.
"""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import Float, ForeignKey, Integer, String, Text, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(String(128), default="")
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    route: Mapped[str | None] = mapped_column(String(64), nullable=True)  # None: no route wants it
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    first_received_at: Mapped[float] = mapped_column(Float)
    last_received_at: Mapped[float] = mapped_column(Float, index=True)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    received_version: Mapped[int] = mapped_column(Integer, default=0)
    evaluated_version: Mapped[int] = mapped_column(Integer, default=0)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    verdict: Mapped[str | None] = mapped_column(String(16), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    transfer_syntax: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[float] = mapped_column(Float)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    # the spool file's mtime when indexed: a file that differs (or whose size does) was replaced by a
    # copy sent again whose index entry was lost (None: indexed by an earlier release, which did not record it)
    file_mtime_ns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    purged_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # file deleted by retention


class Report(Base):
    """One SR written for one evaluated version of a series."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)
    key_image_path: Mapped[str | None] = mapped_column(Text, nullable=True)  # sent with the SR when present
    verdict: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    superseded: Mapped[bool] = mapped_column(default=False)


class Delivery(Base):
    """Sending one report to one destination, with its retry state."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending/sent/failed/superseded
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    last_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class AuditEvent(Base):
    """Audit trail: associations, instances, job state changes, reports sent. UIDs only, no patient data."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    event: Mapped[str] = mapped_column(String(32), index=True)  # e.g. association.rejected, delivery.sent
    address: Mapped[str] = mapped_column(String(64), default="")
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    called_ae: Mapped[str] = mapped_column(String(16), default="")
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    series_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class User(Base):
    """A console user: name, role (viewer or admin) and a salted scrypt hash of the password."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class Database:
    """The engines (one pair per process) and a session factory; `write_lock` serialises writers.

    `engine` commits durably (synchronous=FULL). `index_engine` is the ingest's: the spool holds what it
    records, so its commits need not wait for the disk (synchronous=NORMAL: a power cut, not a crash,
    may take back the last ones; the next start records them again from the spool, and any durable
    commit after them makes them durable too)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.engine = _sqlite_engine(path, "FULL")
        self.index_engine = _sqlite_engine(path, "NORMAL")
        Base.metadata.create_all(self.engine)
        _add_missing_columns(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.write_lock = threading.RLock()

    def session(self) -> Session:
        return self.sessions()

    def close(self) -> None:
        self.engine.dispose()
        self.index_engine.dispose()


def _add_missing_columns(engine: Engine) -> None:
    """Bring a database made by an older release up to date: new columns are nullable and added in place."""
    with engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            present = {row[1] for row in connection.exec_driver_sql(f"PRAGMA table_info({table.name})")}
            for column in table.columns:
                if column.name not in present:
                    if not column.nullable:
                        raise RuntimeError(f"{table.name}.{column.name}: a new column must be nullable")
                    kind = column.type.compile(dialect=engine.dialect)
                    connection.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")


def _sqlite_engine(path: Path, synchronous: str) -> Engine:
    """An engine on the database file whose connections use the WAL and commit with `synchronous`."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30, "check_same_thread": False})

    def pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    event.listen(engine, "connect", pragmas)
    return engine
