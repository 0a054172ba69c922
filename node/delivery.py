"""Delivering reports: pending deliveries are sent when due, with exponential backoff.

Delivery state lives in the database, so what was queued before a restart is sent after it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sqlalchemy import select

from node.config import Config, Peer, SendingSettings
from node.db import Database, Delivery, Report
from scp.sender import SendOutcome, send_files
from scp.stow import stow_files

log = logging.getLogger(__name__)


def backoff_seconds(attempts: int, sending: SendingSettings) -> float:
    """Delay before the next try after `attempts` failed ones: doubling, capped."""
    return min(sending.initial_backoff_seconds * 2 ** max(attempts - 1, 0), sending.max_backoff_seconds)


class Deliverer:
    """Sends due deliveries one by one: the SR, then the key image, by C-STORE or STOW-RS."""

    def __init__(self, config: Config, db: Database):
        self.config = config
        self.db = db

    def due(self, now: float) -> list[tuple[int, str, list[Path]]]:
        """(delivery id, destination, files) of each pending delivery whose time has come."""
        with self.db.session() as s:
            rows = s.execute(select(Delivery.id, Delivery.destination, Report.path, Report.key_image_path)
                             .join(Report, Report.id == Delivery.report_id)
                             .where(Delivery.state == "pending", Delivery.next_attempt_at <= now)
                             .order_by(Delivery.next_attempt_at)).all()
        return [(r[0], r[1], [Path(p) for p in (r[2], r[3]) if p]) for r in rows]

    def send(self, files: list[Path], peer: Peer) -> SendOutcome:
        """One attempt to put every file on the peer, by its transport."""
        timeout = self.config.sending.timeout_seconds
        if peer.dicomweb_url is not None:
            return stow_files(files, peer.dicomweb_url, timeout)
        assert peer.port is not None  # validated in the config
        return send_files(files, self.config.node.ae_title, peer.ae_title, peer.host, peer.port, timeout)

    def run_once(self) -> int:
        """Try every due delivery once; returns how many were delivered."""
        delivered = 0
        names = {p.name for p in self.config.peers}
        for delivery_id, destination, files in self.due(time.time()):
            if destination not in names:
                self._finish(delivery_id, SendOutcome(False, False, None, f"peer {destination!r} is not configured"))
                continue
            log.info("sending report delivery %d (%d file(s)) to %s", delivery_id, len(files), destination)
            outcome = self.send(files, self.config.peer(destination))
            self._finish(delivery_id, outcome)
            delivered += outcome.delivered
        return delivered

    def _finish(self, delivery_id: int, outcome: SendOutcome) -> None:
        now = time.time()
        with self.db.write_lock, self.db.session() as s, s.begin():
            d = s.get(Delivery, delivery_id)
            if d is None or d.state != "pending":
                return
            d.attempts += 1
            d.last_status = outcome.status_text
            d.last_error = None if outcome.delivered else outcome.detail
            if outcome.delivered:
                d.state, d.sent_at = "sent", now
                log.info("report delivery %d to %s: sent (%s)", d.id, d.destination, outcome.status_text)
            elif not outcome.retryable or d.attempts >= self.config.sending.max_attempts:
                d.state = "failed"
                log.error("report delivery %d to %s failed for good after %d attempt(s): %s (status %s)",
                          d.id, d.destination, d.attempts, outcome.detail, outcome.status_text)
            else:
                d.next_attempt_at = now + backoff_seconds(d.attempts, self.config.sending)
                log.warning("report delivery %d to %s: %s (status %s); retry in %.0fs", d.id, d.destination,
                            outcome.detail, outcome.status_text, d.next_attempt_at - now)
