"""Promise 4: 10 simultaneous associations of 100 instances each while inference runs: all stored,
none refused; one association over `max_associations` gets a clean transient rejection."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from sqlalchemy import func, select

from node.db import AuditEvent, Instance
from node.service import Node
from tests.conftest import node_config
from tests.helpers import Receiver, ct_series, send, wait_for

SENDERS = 10
PER_SENDER = 100


def test_ten_associations_of_a_hundred_while_inference_runs(tmp_path: Path, model_dir: Path, receiver: Receiver,
                                                            classifiers, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dfnode.audit")
    node = Node(node_config(tmp_path / "var", model_dir, receiver.port, node={"max_associations": SENDERS}),
                classifiers).start(port=0)
    try:
        busy = ct_series(tmp_path / "busy", slices=120, size=64, seed=99)  # evaluated while the others arrive
        assert send(busy, node.port) == [0x0000] * len(busy)
        wait_for(lambda: "series.evaluating" in caplog.text, timeout=30, interval=0.01)
        series = [ct_series(tmp_path / f"s{n}", slices=PER_SENDER, size=64, seed=n) for n in range(SENDERS)]
        results: dict[int, list[int | None]] = {}
        threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, send(series[n], node.port)))
                   for n in range(SENDERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert all(results[n] == [0x0000] * PER_SENDER for n in range(SENDERS)), \
            {n: sum(s != 0 for s in r) for n, r in results.items()}
        with node.db.session() as s:
            stored = s.scalar(select(func.count()).select_from(Instance))
        assert stored == len(busy) + SENDERS * PER_SENDER
        expected = {str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
                    for files in [busy, *series]}
        wait_for(lambda: _reported_series(receiver) >= expected, timeout=300)
    finally:
        node.stop()


def _reported_series(receiver: Receiver) -> set[str]:
    return {str(ev.ReferencedSeriesSequence[0].SeriesInstanceUID)
            for sr in receiver.reports() for ev in sr.CurrentRequestedProcedureEvidenceSequence}


def test_one_association_too_many_is_rejected_transiently(tmp_path: Path, model_dir: Path, receiver: Receiver,
                                                          classifiers) -> None:
    node = Node(node_config(tmp_path / "var", model_dir, receiver.port, node={"max_associations": 3}),
                classifiers).start(port=0)
    held = []
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context("1.2.840.10008.1.1")
        for _ in range(3):
            assoc = ae.associate("127.0.0.1", node.port, ae_title="DFNODE")
            assert assoc.is_established
            held.append(assoc)
        extra = ae.associate("127.0.0.1", node.port, ae_title="DFNODE")
        assert extra.is_rejected
        reject = extra.acceptor.primitive
        assert (reject.result, reject.result_source, reject.diagnostic) == (0x02, 0x03, 0x02)  # transient, limit
        for assoc in held:
            assert assoc.send_c_echo().Status == 0x0000  # the held ones are unaffected
        with node.db.session() as s:  # the rejected one is not in the audit trail as accepted
            accepted = s.scalar(select(func.count()).where(AuditEvent.event == "association.accepted"))
        assert accepted == 3
    finally:
        for assoc in held:
            assoc.release()
        node.stop()
