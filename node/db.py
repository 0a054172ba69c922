"""The node's database (SQLite, or PostgreSQL for several nodes, through SQLAlchemy): series, instances,
reports, deliveries, audit, console users.

A series needs evaluation while `received_version > evaluated_version`; both are committed in the
same transactions as the work they describe, so a crash at any point leaves a state that the next
start simply continues from.
"""

from __future__ import annotations

import threading
from enum import StrEnum
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Insert,
    Integer,
    String,
    Text,
    create_engine,
    event,
    make_url,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from core.errors import DatabaseUnavailable
from node.migrations import upgrade_schema


class Base(DeclarativeBase):
    pass


class DeliveryState(StrEnum):
    """Where sending one report to one destination stands."""

    PENDING = "pending"  # to be sent (now, or after its backoff)
    SENT = "sent"
    FAILED = "failed"  # given up; the console can send it again
    SUPERSEDED = "superseded"  # a newer report of the series replaced it before it was sent


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
    # due for evaluation from then (the database's clock): the last arrival plus the route's stable time
    stable_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    # the evaluator that holds it (`node.claims`); `epoch` grows with every claim and fences stale writers
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    transfer_syntax: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[float] = mapped_column(Float)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    # the spool file's mtime when indexed: a file that differs (or whose size does) was replaced by a
    # copy sent again whose index entry was lost (None: indexed by an earlier release, which did not record it)
    file_mtime_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
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
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING, index=True)  # a DeliveryState
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    last_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)  # the deliverer sending it
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


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
    """The engines (one pair per process) and a session factory; `write_lock` serialises this
    process's writers (SQLite has one writer at a time; PostgreSQL's row locks do the rest).

    On SQLite `engine` commits durably (synchronous=FULL) and `index_engine`, the ingest's, does not wait
    for the disk (synchronous=NORMAL): the spool holds what it records, so a power cut, not a crash, may
    take back the last ones; the next start records them again from the spool, and any durable commit
    after them makes them durable too. On PostgreSQL both are one engine: its commits are durable.
    The schema is brought to this release's by the migrations (`node.migrations`) on open."""

    def __init__(self, url: str):
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            path = Path(self.url.database or "")
            path.parent.mkdir(parents=True, exist_ok=True)
            self.engine = _sqlite_engine(path, "FULL")
            self.index_engine = _sqlite_engine(path, "NORMAL")
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True)
            self.index_engine = self.engine
        try:
            upgrade_schema(self.engine)
        except OperationalError as exc:
            self.close()
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else "no reason given"
            raise DatabaseUnavailable(f"the database {self.url.render_as_string(hide_password=True)} cannot be "
                                      f"opened: {reason}") from exc
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.write_lock = threading.RLock()

    def session(self) -> Session:
        return self.sessions()

    def close(self) -> None:
        self.engine.dispose()
        self.index_engine.dispose()


def insert_unless_present(dialect: str, entity: type[Base], unique: str) -> Insert:
    """`INSERT ... ON CONFLICT (unique) DO NOTHING RETURNING id`: the new row's id, or no row when
    another writer (another node sharing the database) added the same one first."""
    build = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return build(entity).on_conflict_do_nothing(index_elements=[unique]).returning(entity.__table__.c.id)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def database_exists(url: str) -> bool:
    """Whether there is a database to read: a SQLite file that exists, or any other database (opening it
    says whether it can be reached)."""
    parsed = make_url(url)
    return parsed.get_backend_name() != "sqlite" or Path(parsed.database or "").exists()


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
