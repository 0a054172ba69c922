"""Several node processes on one PostgreSQL database and one spool, on loopback: two receivers, two
evaluators and a deliverer (tiny random-weight models), and a test PACS. Each series gets one
evaluation and one report however its instances are split between receivers, and whichever worker is
killed or stalled."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import create_engine, func, select

from node.db import Report, Series
from tests.conftest import node_config_raw
from tests.helpers import Receiver, ct_series, free_port, send, wait_for
from tests.serve_process import ServeProcess, start_serve, write_config
from tests.sr_contract import image_groups, referenced_images

LEASE_SECONDS = 3.0


@dataclass
class Deployment:
    folder: Path
    model_dir: Path
    database_url: str
    pacs: Receiver
    processes: dict[str, ServeProcess] = field(default_factory=dict)
    starts: int = 0

    def start(self, name: str, role: str) -> ServeProcess:
        """`dfnode serve` named `name` with one role; a name started again takes back what it held."""
        port = free_port()
        raw = node_config_raw(self.folder / "var", self.model_dir, self.pacs.port,
                              node={"port": port, "name": name, "roles": [role], "lease_seconds": LEASE_SECONDS},
                              storage={"database_url": self.database_url})
        for route in raw["routes"]:
            route["series_stable_seconds"] = 2.0
            route["early_scoring_seconds"] = None
        self.starts += 1
        config = write_config(raw, self.folder / f"{name}-{self.starts}.yaml")
        self.processes[name] = start_serve(config, port, self.folder / f"{name}-{self.starts}.log")
        return self.processes[name]

    def stop(self) -> None:
        for process in self.processes.values():
            if process.process.poll() is None:
                os.kill(process.process.pid, signal.SIGCONT)
                process.kill()

    def reports_for(self, series_uid: str) -> list[pydicom.Dataset]:
        return [sr for sr in self.pacs.reports() if any(
            str(ev.ReferencedSeriesSequence[0].SeriesInstanceUID) == series_uid
            for ev in sr.CurrentRequestedProcedureEvidenceSequence)]

    def current_reports(self, series_uid: str) -> int:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as connection:
                return int(connection.scalar(
                    select(func.count(Report.id)).join(Series, Series.id == Report.series_id)
                    .where(Series.series_uid == series_uid, Report.superseded.is_(False))) or 0)
        finally:
            engine.dispose()


@pytest.fixture
def deployment(tmp_path: Path, model_dir: Path, postgres_server) -> Iterator[Deployment]:
    pacs = Receiver().start()
    running = Deployment(tmp_path, model_dir, postgres_server.new_database(), pacs)
    try:
        yield running
    finally:
        running.stop()
        pacs.stop()


def _series(folder: Path, seed: int, slices: int = 120) -> tuple[list[Path], str]:
    files = ct_series(folder, slices=slices, size=96, seed=seed)
    return files, str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def _evaluating(process: ServeProcess, series_uid: str) -> bool:
    return any("series.evaluating" in line and series_uid in line for line in process.output().splitlines())


def _reported(process: ServeProcess, series_uid: str) -> bool:
    return any("report.created" in line and series_uid in line for line in process.output().splitlines())


def _claimer(deployment: Deployment, series_uid: str) -> str:
    """The name of the evaluator that claims the series, as soon as it has."""
    evaluators = {n: p for n, p in deployment.processes.items() if "evaluator" in n}
    found = wait_for(lambda: next((n for n, p in evaluators.items() if _evaluating(p, series_uid)), None),
                     timeout=120, interval=0.005)
    return str(found)


def _send_halves(files: list[Path], ports: list[int]) -> None:
    """Every other instance to each receiver, at the same time."""
    statuses: list[list[int | None]] = [[], []]
    senders = [threading.Thread(target=lambda n=n: statuses[n].extend(send(files[n::2], ports[n])))
               for n in range(2)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=300)
    assert statuses == [[0x0000] * len(files[0::2]), [0x0000] * len(files[1::2])]


def test_receivers_evaluators_and_a_deliverer_share_the_work(deployment: Deployment, tmp_path: Path) -> None:
    receivers = [deployment.start("receiver-1", "receiver"), deployment.start("receiver-2", "receiver")]
    deployment.start("evaluator-1", "evaluator")
    deployment.start("evaluator-2", "evaluator")
    deployment.start("deliverer", "deliverer")
    ports = [r.port for r in receivers]

    # a series split between the receivers: one evaluation, one report citing every instance
    files, uid = _series(tmp_path / "split", seed=1, slices=40)
    _send_halves(files, ports)
    wait_for(lambda: deployment.reports_for(uid), timeout=120)
    time.sleep(2 * LEASE_SECONDS)
    assert len(deployment.reports_for(uid)) == 1
    evaluations = sum(_evaluating(p, uid) for name, p in deployment.processes.items() if "evaluator" in name)
    assert evaluations == 1 and deployment.current_reports(uid) == 1

    # an evaluator killed right after it claims: the other one takes the series over after the lease
    for attempt in range(3):
        files, uid = _series(tmp_path / f"kill{attempt}", seed=10 + attempt)
        _send_halves(files, ports)
        claimed = _claimer(deployment, uid)
        victim = deployment.processes[claimed]
        victim.kill()
        if not _reported(victim, uid):
            break
        deployment.start(claimed, "evaluator")  # it finished first; again with a new series
    else:
        pytest.fail("the killed evaluator finished its series before the kill three times")
    survivor = next(p for n, p in deployment.processes.items() if "evaluator" in n and n != claimed)
    wait_for(lambda: deployment.reports_for(uid), timeout=120)
    assert _reported(survivor, uid) and len(deployment.reports_for(uid)) == 1
    assert deployment.current_reports(uid) == 1
    deployment.start(claimed, "evaluator")

    # an evaluator stalled past its lease: the other one reports; the stalled one's commit is refused
    for attempt in range(3):
        files, uid = _series(tmp_path / f"stop{attempt}", seed=20 + attempt)
        _send_halves(files, ports)
        claimed = _claimer(deployment, uid)
        stalled = deployment.processes[claimed]
        stalled.process.send_signal(signal.SIGSTOP)
        if not _reported(stalled, uid):
            break
        stalled.process.send_signal(signal.SIGCONT)
    else:
        pytest.fail("the stalled evaluator finished its series before it was stopped three times")
    other = next(p for n, p in deployment.processes.items() if "evaluator" in n and n != claimed)
    wait_for(lambda: _reported(other, uid), timeout=120)
    stalled.process.send_signal(signal.SIGCONT)
    wait_for(lambda: "lease lost" in stalled.output(), timeout=60)
    assert not _reported(stalled, uid)
    wait_for(lambda: deployment.reports_for(uid), timeout=60)
    time.sleep(2 * LEASE_SECONDS)
    assert deployment.current_reports(uid) == 1
    assert len({str(sr.SOPInstanceUID) for sr in deployment.reports_for(uid)}) == 1

    # the deliverer killed while it sends: started again, it sends the same SR again, never a second one
    deployment.pacs.delay = 1.0
    files, uid = _series(tmp_path / "deliver", seed=30, slices=20)
    _send_halves(files, ports)
    deliverer = deployment.processes["deliverer"]
    before = deliverer.output().count("sending reports")
    wait_for(lambda: deliverer.output().count("sending reports") > before, timeout=120, interval=0.01)
    deliverer.kill()
    deployment.pacs.delay = 0.0
    deployment.start("deliverer", "deliverer")
    wait_for(lambda: deployment.reports_for(uid), timeout=120)
    time.sleep(2 * LEASE_SECONDS)
    assert len({str(sr.SOPInstanceUID) for sr in deployment.reports_for(uid)}) == 1

    # a receiver killed during an association: every instance answered success is indexed (by its next
    # start, from the shared spool) and cited in the series' report
    files, uid = _series(tmp_path / "receiver", seed=40, slices=120)
    acknowledged: list[str] = []
    sender = threading.Thread(target=_send_noting, args=(files, ports[0], acknowledged))
    sender.start()
    wait_for(lambda: len(acknowledged) >= 30, timeout=120, interval=0.001)
    deployment.processes["receiver-1"].kill()
    sender.join(timeout=60)
    assert 30 <= len(acknowledged) < len(files)
    deployment.start("receiver-1", "receiver")

    def cites_every_acknowledged() -> bool:
        reports = deployment.reports_for(uid)
        cited = {sop for sr in reports[-1:] for g in image_groups(sr)[:-1] for sop, _ in referenced_images(g)}
        return set(acknowledged) <= cited
    wait_for(cites_every_acknowledged, timeout=120)


def _send_noting(files: list[Path], port: int, acknowledged: list[str]) -> None:
    """C-STORE the files in one association, noting each SOP Instance UID answered success, until the
    association fails."""
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="DFNODE")
    for path in files:
        ds = pydicom.dcmread(path)
        if not assoc.is_established:
            return
        answer = assoc.send_c_store(ds)
        if answer and answer.get("Status") == 0x0000:
            acknowledged.append(str(ds.SOPInstanceUID))
    assoc.release()
