"""Which series are due for evaluation, and claiming them one at a time.

A series is due when it has a route, `received_version > evaluated_version`, and its stable time has
passed (`stable_at`, stamped on the database's clock by the receiver that counted its last instance).
The schedule also notes which series wait quietly enough to be scored early, and when the next one
becomes due, so that the evaluator sleeps no longer than it must. Claims go through `node.claims`: one
due series at a time, under a lease that no other evaluator can take while it holds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import func, select, update

from node.claims import Claims, Lease
from node.config import Config, Route
from node.db import Database, Series
from node.early_scoring import scores_early
from node.ingest import stable_seconds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Waiting:
    """A series not yet due that is quiet long enough to be scored while it waits."""

    series_id: int
    received_version: int
    route: Route


@dataclass(frozen=True)
class Look:
    """What one look at the database found."""

    due: list[int]  # series whose stable time has passed, not held by another evaluator
    waiting: list[Waiting]  # series to score early, due soonest first
    unevaluated: set[int]  # every series with something not yet evaluated


class Schedule:
    """The evaluation queue as one evaluator (`config.node.name`) sees it."""

    def __init__(self, config: Config, db: Database):
        self.config = config
        self.db = db
        self.claims = Claims(db, Series, config.node.name, config.node.lease_seconds)
        self.next_due_at: float | None = None  # when the earliest series not yet due becomes due

    def start(self) -> None:
        """Take back what this evaluator's name held when it stopped, and make the series that wait due
        by the routes' stable times as configured now."""
        taken_back = self.claims.release_own()
        if taken_back:
            log.info("took back %d series this node (%s) held when it stopped", taken_back, self.claims.owner)
        with self.db.write_lock, self.db.session() as s, s.begin():
            s.execute(update(Series).where(Series.received_version > Series.evaluated_version)
                      .values(stable_at=Series.last_received_at + stable_seconds(self.config.routes)))

    def look(self, now: float) -> Look:
        """The series due at `now` and those to score while they wait; notes when to look again."""
        with self.db.session() as s:
            candidates = s.execute(select(Series.id, Series.route, Series.last_received_at, Series.received_version,
                                          Series.lease_owner, Series.lease_expires_at)
                                   .where(Series.route.is_not(None),
                                          Series.received_version > Series.evaluated_version)).all()
        due: list[int] = []
        waiting: list[tuple[float, Waiting]] = []
        wake_at: list[float] = []
        for series_id, route_name, last, version, holder, held_until in candidates:
            if holder not in (None, self.claims.owner) and held_until is not None and held_until > now:
                wake_at.append(held_until)  # another evaluator works on it; look again if its lease runs out
                continue
            route = self.config.route(route_name or "")
            stable = route.series_stable_seconds if route else 0.0
            if now - last >= stable:
                due.append(series_id)
                continue
            wake_at.append(last + stable)
            if route is not None and scores_early(route):
                quiet_at = last + (route.early_scoring_seconds or 0.0)
                if now >= quiet_at:
                    waiting.append((last + stable, Waiting(series_id, version, route)))
                else:
                    wake_at.append(quiet_at)
        self.next_due_at = min(wake_at) if wake_at else None
        waiting.sort(key=lambda w: (w[0], w[1].series_id, w[1].received_version))
        return Look(due, [w for _, w in waiting], {c[0] for c in candidates})

    def seconds_to_sleep(self, longest: float = 0.5) -> float:
        """Until the next series is due, at most `longest` (a new instance wakes the evaluator anyway)."""
        if self.next_due_at is None:
            return longest
        return min(longest, max(0.005, self.next_due_at - time.time()))

    def claim_due(self) -> Lease | None:
        """Claim the due series waiting longest that no other evaluator holds."""
        due_at = func.coalesce(Series.stable_at, Series.last_received_at)
        leases = self.claims.claim(Series.route.is_not(None), Series.received_version > Series.evaluated_version,
                                   due_at <= self.claims.clock, order_by=due_at)
        return leases[0] if leases else None
