"""Promise 1: SIGKILL at random points while a 300-instance CT series is received, evaluated and its
SR sent; after each restart nothing acknowledged is lost, and each series ends with exactly one
current SR at the destination (a resend after a crash is a duplicate, not a second report)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE

from tests.conftest import node_config_raw
from tests.helpers import Receiver, ct_series, free_port, wait_for
from tests.serve_process import ServeProcess, start_serve, write_config
from tests.sr_contract import image_groups, referenced_images

SLICES = 300
KILL_POINTS = 20  # at least, counting only kills that hit one of the three phases
PHASES = ("receiving", "evaluating", "sending")


class PacsSender:
    """The PACS side: sends what was not acknowledged yet, and remembers every success it got."""

    def __init__(self, files: list[Path]):
        self.datasets = {str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f) for f in files}
        self.acknowledged: set[str] = set()

    def pending(self) -> list[str]:
        return [uid for uid in self.datasets if uid not in self.acknowledged]

    def send_pending(self, port: int) -> None:
        ae = AE(ae_title="PACS")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", port, ae_title="DFNODE")
        if not assoc.is_established:
            return
        raw_socket = assoc.dul.socket.socket if assoc.dul.socket is not None else None
        try:
            for uid in self.pending():
                response = assoc.send_c_store(self.datasets[uid])
                if not (response and response.get("Status") == 0x0000):
                    return
                self.acknowledged.add(uid)
        except Exception:  # the node died under us: a real PACS would try again later
            return
        finally:
            if assoc.is_established:
                assoc.release()
            if raw_socket is not None:  # pynetdicom leaves the socket open when the peer dies
                raw_socket.close()


def _phases_in_log(log: str) -> set[str]:
    """What the node was doing when it died, from its log: evaluating (a series begun, no report or refusal
    after it) and sending (a report begun, not sent or failed after it); both at once after a restart
    that resends a report while it evaluates a newer version of the series."""
    last: dict[str, int] = {}
    for number, line in enumerate(log.splitlines()):
        for marker in ("series.evaluating", "report.created", "series.not_evaluated", "sending report", "delivery."):
            if marker in line:
                last[marker] = number
    phases = set()
    if last.get("series.evaluating", -1) > max(last.get("report.created", -1), last.get("series.not_evaluated", -1)):
        phases.add("evaluating")
    if last.get("sending report", -1) > last.get("delivery.", -1):
        phases.add("sending")
    return phases


PLAN = ("receiving",) * 3 + ("evaluating",) * 3 + ("sending",) * 3


def test_sigkill_at_random_points_loses_nothing_acknowledged(tmp_path: Path, model_dir: Path) -> None:
    rng = random.Random(20261122)
    receiver = Receiver(delay=0.3).start()  # a slow PACS: sending the SR and key image takes a while
    port = free_port()
    config = write_config(node_config_raw(tmp_path / "var", model_dir, receiver.port, node={"port": port}),
                          tmp_path / "config.yaml")
    series = [PacsSender(ct_series(tmp_path / f"ct{n}", slices=SLICES, size=64, seed=n)) for n in range(3)]
    kills: Counter[str] = Counter()
    starts = 0

    def start() -> ServeProcess:
        nonlocal starts
        starts += 1
        return start_serve(config, port, tmp_path / f"serve-{starts}.log")

    try:
        for pacs in series:
            for planned in PLAN:
                kills[_kill_while(planned, start(), pacs, rng)] += 1
            final = start()
            pacs.send_pending(port)
            wait_for(lambda pacs=pacs: _done(receiver, pacs), timeout=300, interval=0.5)
            final.terminate()
    finally:
        receiver.stop()
    assert sum(kills[p] for p in PHASES) >= KILL_POINTS and all(kills[p] >= 5 for p in PHASES), kills
    on_disk = {p.stem for p in (tmp_path / "var" / "spool").rglob("*.dcm")}
    for pacs in series:
        assert pacs.acknowledged == set(pacs.datasets) and pacs.acknowledged <= on_disk
        _check_one_current_report(receiver, pacs)
    assert not list((tmp_path / "var").rglob(".incoming-*")), "partial files were left behind"
    print(f"kill points survived: {dict(kills)} over {starts} starts")


def _kill_while(planned: str, serve: ServeProcess, pacs: PacsSender, rng: random.Random) -> str:
    """SIGKILL the node at a random moment of the planned phase; returns the phase it really hit."""
    if planned == "receiving":
        remaining = len(pacs.pending())
        target = len(pacs.acknowledged) + rng.randint(1, max(1, remaining - 1))
        sender = threading.Thread(target=pacs.send_pending, args=(serve.port,))
        sender.start()
        wait_for(lambda: len(pacs.acknowledged) >= target or not sender.is_alive(), timeout=120, interval=0.001)
        hit = "receiving" if sender.is_alive() else "idle"
        serve.kill()
        sender.join(timeout=60)
        return hit
    if planned == "evaluating":
        pacs.send_pending(serve.port)  # anything the last kill left unacknowledged
    marker = "series.evaluating" if planned == "evaluating" else "sending report"
    wait_for(lambda: marker in serve.output(), timeout=120, interval=0.01)
    time.sleep(rng.uniform(0.0, 0.5))
    phases = _phases_in_log(serve.output())
    serve.kill()
    return planned if planned in phases else min(phases, default="idle")


def _done(receiver: Receiver, pacs: PacsSender) -> bool:
    """All acknowledged and the newest report of the series has reached the PACS."""
    if pacs.pending():
        return False
    current = _current_reports(receiver, pacs)
    if len(current) != 1:
        return False
    referenced = {uid for g in image_groups(current[0])[:-1] for uid, _ in referenced_images(g)}
    return referenced == set(pacs.datasets)


def _series_reports(receiver: Receiver, pacs: PacsSender) -> dict[str, Dataset]:
    series_uid = next(iter(pacs.datasets.values())).SeriesInstanceUID
    return {str(sr.SOPInstanceUID): sr for sr in receiver.reports()
            if any(str(ev.ReferencedSeriesSequence[0].SeriesInstanceUID) == series_uid
                   for ev in sr.CurrentRequestedProcedureEvidenceSequence)}


def _current_reports(receiver: Receiver, pacs: PacsSender) -> list[Dataset]:
    """The received reports of the series that no other received report names as its predecessor."""
    reports = _series_reports(receiver, pacs)
    superseded = {str(ref.ReferencedSOPInstanceUID)
                  for sr in reports.values() for study in sr.get("PredecessorDocumentsSequence", [])
                  for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    return [sr for uid, sr in reports.items() if uid not in superseded]


def _check_one_current_report(receiver: Receiver, pacs: PacsSender) -> None:
    current = _current_reports(receiver, pacs)
    assert len(current) == 1, [sr.SOPInstanceUID for sr in current]
    referenced = {uid for g in image_groups(current[0])[:-1] for uid, _ in referenced_images(g)}
    assert referenced == set(pacs.datasets)
