"""Delivering reports: pending deliveries are sent when due, with exponential backoff.

Delivery state lives in the database, so what was queued before a restart is sent after it.
"""

from __future__ import annotations

import logging
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from core.events import AuditEventName
from node.audit import Audit, emit
from node.claims import Claims, Lease, LeaseLost
from node.config import Config, Peer, SendingSettings
from node.db import AuditEvent, Database, Delivery, DeliveryState, Report, Series
from scp.sender import SendOutcome, send_batch
from scp.stow import stow_files

log = logging.getLogger(__name__)

CLAIMED_AT_ONCE = 500  # deliveries one deliverer takes per round


def backoff_seconds(attempts: int, sending: SendingSettings) -> float:
    """Delay before the next try after `attempts` failed ones: doubling, capped."""
    return min(sending.initial_backoff_seconds * 2 ** max(attempts - 1, 0), sending.max_backoff_seconds)


@dataclass(frozen=True)
class DueDelivery:
    """A pending delivery whose time has come: what to send where, and what it is about."""

    id: int
    lease: Lease
    destination: str
    files: list[Path]
    study_uid: str
    series_uid: str
    report_uid: str


def batches(due: list[DueDelivery], size: int, parallel: int) -> list[list[DueDelivery]]:
    """The due deliveries to one peer in batches of at most `size`, each sent over one association, and
    as few batches as `parallel` associations allow (the longest waiting in the first)."""
    count = max(min(parallel, -(-len(due) // size)), 1)
    per = -(-len(due) // count)
    per = min(per, size)
    return [due[n:n + per] for n in range(0, len(due), per)]


class Deliverer:
    """Sends due deliveries: to each peer, batches of reports (the SR, then the key image) over one
    association each, at most the peer's `max_associations` at once; by C-STORE or STOW-RS."""

    def __init__(self, config: Config, db: Database, audit: Audit, tls: ssl.SSLContext | None = None):
        self.config = config
        self.db = db
        self.audit = audit
        self.tls = tls  # for peers with `tls: true`
        self.claims = Claims(db, Delivery, config.node.name, config.node.lease_seconds)

    def due(self, now: float) -> list[DueDelivery]:
        """Claim each pending delivery whose time has come that no other deliverer holds, the longest
        waiting first (at most `CLAIMED_AT_ONCE`)."""
        leases = {lease.row_id: lease for lease in self.claims.claim(
            Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now,
            order_by=Delivery.next_attempt_at, limit=CLAIMED_AT_ONCE)}
        if not leases:
            return []
        with self.db.session() as s:
            rows = s.execute(select(Delivery.id, Delivery.destination, Report.path, Report.key_image_path,
                                    Series.study_uid, Series.series_uid, Report.sop_instance_uid)
                             .join(Report, Report.id == Delivery.report_id)
                             .join(Series, Series.id == Report.series_id)
                             .where(Delivery.id.in_(leases))
                             .order_by(Delivery.next_attempt_at)).all()
        return [DueDelivery(r[0], leases[r[0]], r[1], [Path(p) for p in (r[2], r[3]) if p], r[4], r[5], r[6])
                for r in rows]

    def send(self, groups: list[list[Path]], peer: Peer) -> list[SendOutcome]:
        """One attempt to put each group of files on the peer, by its transport: one association (or one
        STOW-RS request a group) for them all."""
        timeout = self.config.sending.timeout_seconds
        if peer.dicomweb_url is not None:
            url = peer.dicomweb_url
            return [stow_files(files, url, timeout) for files in groups]
        assert peer.port is not None  # validated in the config
        if peer.tls and self.tls is None:
            return [SendOutcome(False, False, None, f"peer {peer.name!r} wants TLS and no TLS context was made")
                    ] * len(groups)
        return send_batch(groups, self.config.node.ae_title, peer.ae_title, peer.host, peer.port, timeout,
                          self.tls if peer.tls else None)

    def run_once(self) -> int:
        """Try every due delivery once; returns how many were delivered."""
        by_peer: dict[str, list[DueDelivery]] = {}
        for one in self.due(time.time()):
            by_peer.setdefault(one.destination, []).append(one)
        delivered = 0
        names = {p.name for p in self.config.peers}
        for destination, waiting in by_peer.items():
            if destination not in names:
                for one in waiting:
                    self._finish(one, None, SendOutcome(False, False, None,
                                                        f"peer {destination!r} is not configured"))
                continue
            delivered += self._send_to(self.config.peer(destination), waiting)
        return delivered

    def _send_to(self, peer: Peer, due: list[DueDelivery]) -> int:
        """Send the peer's due deliveries in batches, up to its `max_associations` at once."""
        work = batches(due, self.config.sending.batch_size, peer.max_associations)

        def one_batch(batch: list[DueDelivery]) -> int:
            log.info("sending reports to %s over one association: %d delivery(ies)", peer.name, len(batch))
            with self.claims.keeper(*(d.lease for d in batch)):
                outcomes = self.send([d.files for d in batch], peer)
            for d, outcome in zip(batch, outcomes, strict=True):
                self._finish(d, peer, outcome)
            return sum(outcome.delivered for outcome in outcomes)

        if len(work) == 1:
            return one_batch(work[0])
        with ThreadPoolExecutor(max_workers=len(work), thread_name_prefix=f"send:{peer.name}") as pool:
            return sum(pool.map(one_batch, work))

    def _finish(self, due: DueDelivery, peer: Peer | None, outcome: SendOutcome) -> None:
        now = time.time()
        try:
            row = self._record_attempt(due, peer, outcome, now)
        except LeaseLost as exc:  # this deliverer stalled past its lease; another one has it now
            log.warning("delivery %d: lease lost, outcome not recorded (%s)", due.id, exc)
            return
        if row is not None:
            emit(*row)

    def _record_attempt(self, due: DueDelivery, peer: Peer | None, outcome: SendOutcome,
                        now: float) -> tuple[AuditEvent, int] | None:
        with self.db.write_lock, self.db.session() as s, s.begin():
            self.claims.holds(s, due.lease)
            d = s.get(Delivery, due.id)
            if d is None or d.state != DeliveryState.PENDING:
                return None
            d.attempts += 1
            d.last_status = outcome.status_text
            d.last_error = None if outcome.delivered else outcome.detail
            where = f"delivery {d.id} to {d.destination}, attempt {d.attempts}, status {outcome.status_text}"
            if outcome.delivered:
                d.state, d.sent_at = DeliveryState.SENT, now
                event, level, detail = AuditEventName.DELIVERY_SENT, logging.INFO, where
            elif not outcome.retryable or d.attempts >= self.config.sending.max_attempts:
                d.state = DeliveryState.FAILED
                event, level = AuditEventName.DELIVERY_FAILED, logging.ERROR
                detail = f"{where}: {outcome.detail}; given up"
            else:
                d.next_attempt_at = now + backoff_seconds(d.attempts, self.config.sending)
                event, level = AuditEventName.DELIVERY_RETRY, logging.WARNING
                detail = f"{where}: {outcome.detail}; retry in {d.next_attempt_at - now:.0f}s"
            row = self.audit.add(s, event, address=peer.dicomweb_url or peer.host if peer else "",
                                 called_ae=peer.ae_title if peer else "", calling_ae=self.config.node.ae_title,
                                 study_uid=due.study_uid, series_uid=due.series_uid,
                                 sop_instance_uid=due.report_uid, detail=detail)
        return row, level
