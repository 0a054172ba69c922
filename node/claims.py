"""Claims and leases on rows that several node processes may work on: a series to evaluate, a delivery
to send.

A worker claims a row with `SELECT ... FOR UPDATE SKIP LOCKED` (PostgreSQL; SQLite has one writer at a
time and ignores the clause) and stamps it with its name, an expiry on the database's clock and an
epoch one higher than before. It extends the lease while it works (`LeaseKeeper`). A worker that dies
loses the lease when it expires, and another claims the row. A worker that stalled past its lease and
woke up finds another epoch on the row: `holds` says no, and it commits nothing. Written by hand:
this is a few statements over the node's own tables, not something a queue library does for a row
that is also the record of its state.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Float, cast, func, or_, select, update
from sqlalchemy.orm import Session

from node.db import Base, Database


class LeaseLost(Exception):
    """The row was claimed by another worker after this one's lease expired; nothing was written."""


def database_clock(dialect: str) -> ColumnElement[float]:
    """Seconds since the epoch on the database's clock, the one clock every node shares."""
    if dialect == "postgresql":
        return cast(func.extract("epoch", func.clock_timestamp()), Float)
    return cast((func.julianday("now") - 2440587.5) * 86400.0, Float)


@dataclass(frozen=True)
class Lease:
    """This worker's hold on one row, valid while the row's epoch is still `epoch`."""

    row_id: int
    epoch: int


class Claims:
    """Claims on the rows of one table (`Series` or `Delivery`: a `lease_owner`, `lease_expires_at` and
    `epoch` each) for the worker named `owner`."""

    def __init__(self, db: Database, entity: type[Base], owner: str, lease_seconds: float):
        self.db = db
        self.entity: Any = entity
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.clock = database_clock(db.engine.dialect.name)

    def free(self) -> ColumnElement[bool]:
        """Nobody holds the row, or its holder's lease has expired."""
        return or_(self.entity.lease_owner.is_(None), self.entity.lease_expires_at < self.clock)

    def claim(self, *where: ColumnElement[bool], order_by: Any, limit: int = 1) -> list[Lease]:
        """Claim up to `limit` free rows matching `where`, first in `order_by`."""
        table = self.entity
        with self.db.write_lock, self.db.session() as s, s.begin():
            ids = list(s.scalars(select(table.id).where(*where, self.free()).order_by(order_by).limit(limit)
                                 .with_for_update(skip_locked=True)))
            leases = []
            for row_id in ids:
                epoch = s.execute(update(table).where(table.id == row_id, self.free())
                                  .values(lease_owner=self.owner, lease_expires_at=self.clock + self.lease_seconds,
                                          epoch=table.epoch + 1)
                                  .returning(table.epoch)).scalar()
                if epoch is not None:  # on SQLite another process may have taken it in between
                    leases.append(Lease(row_id, epoch))
        return leases

    def extend(self, lease: Lease) -> bool:
        """Push the lease's expiry on; False when it was lost."""
        table = self.entity
        with self.db.write_lock, self.db.session() as s, s.begin():
            done = s.execute(update(table).where(table.id == lease.row_id, table.epoch == lease.epoch,
                                                 table.lease_owner == self.owner)
                             .values(lease_expires_at=self.clock + self.lease_seconds)
                             .returning(table.id)).scalar()
        return done is not None

    def holds(self, session: Session, lease: Lease) -> None:
        """Inside the transaction that commits the work: lock the row and raise `LeaseLost` unless this
        worker still holds it; then the lease is released with the commit."""
        table = self.entity
        row = session.execute(select(table.epoch, table.lease_owner).where(table.id == lease.row_id)
                              .with_for_update()).first()
        if row is None or row.epoch != lease.epoch or row.lease_owner != self.owner:
            raise LeaseLost(f"{table.__tablename__} row {lease.row_id}: claimed again by "
                            f"{row.lease_owner if row else 'nobody'} (epoch {row.epoch if row else '-'})")
        session.execute(update(table).where(table.id == lease.row_id)
                        .values(lease_owner=None, lease_expires_at=None))

    def release_own(self) -> int:
        """At start: rows this worker's name held before it stopped (or was killed) are free again."""
        table = self.entity
        with self.db.write_lock, self.db.session() as s, s.begin():
            return len(s.execute(update(table).where(table.lease_owner == self.owner)
                                 .values(lease_owner=None, lease_expires_at=None).returning(table.id)).all())

    def keeper(self, *leases: Lease) -> LeaseKeeper:
        return LeaseKeeper(self, list(leases))


class LeaseKeeper:
    """`with claims.keeper(lease, ...):` extends the leases every third of their length while the block
    runs; one that is lost is no longer extended."""

    def __init__(self, claims: Claims, leases: list[Lease]):
        self.claims, self.leases = claims, leases
        self.lost: list[Lease] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def _run(self) -> None:
        while not self._done.wait(self.claims.lease_seconds / 3):
            for lease in [held for held in self.leases if held not in self.lost]:
                try:
                    if not self.claims.extend(lease):
                        self.lost.append(lease)
                except Exception:  # the database is away for a moment: the next try, or the lease runs out
                    continue

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

