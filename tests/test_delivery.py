"""Sending the SR: retries with backoff while the destination is away; no retry when it refuses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import select

from inference.scoring import ImageResult, SeriesResult, Verdict
from node.config import SendingSettings
from node.db import Delivery
from node.delivery import backoff_seconds
from node.service import Node
from scp.sender import send_files
from sr.report import ReportIdentity, build_report, report_uids
from tests.conftest import node_config, on_database
from tests.helpers import Receiver, copy_with_new_uids, ct_series, free_port, real_file, send, wait_for


def _deliveries(node: Node) -> list[Delivery]:
    with node.db.session() as s:
        return list(s.scalars(select(Delivery)))


def test_backoff_doubles_and_is_capped() -> None:
    sending = SendingSettings(initial_backoff_seconds=2, max_backoff_seconds=30)
    assert [backoff_seconds(n, sending) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]


def test_report_arrives_once_the_destination_comes_back(tmp_path: Path, model_dir: Path, classifiers,
                                                        database_url: str | None) -> None:
    port = free_port()
    node = Node(node_config(tmp_path / "var", model_dir, port, **on_database(database_url)), classifiers).start(port=0)
    receiver = Receiver()
    try:
        files = [copy_with_new_uids(real_file("RG3_UNCR.dcm"), tmp_path / "in")]
        assert send(files, node.port) == [0x0000]
        wait_for(lambda: any(d.attempts >= 2 for d in _deliveries(node)), timeout=60)
        assert _deliveries(node)[0].state == "pending"
        receiver.start(port)
        sr = wait_for(lambda: receiver.reports(), timeout=60)[0]
        assert sr.SeriesDescription.startswith("DEEPFAKE SCREEN: ")
        delivery = wait_for(lambda: [d for d in _deliveries(node) if d.state == "sent"], timeout=10)[0]
        assert delivery.last_status == "0x0000"
    finally:
        node.stop()
        receiver.stop()


@contextmanager
def _radiograph_sent_to_peer_answering(status: int, tmp_path: Path, model_dir: Path,
                                       classifiers, database_url: str | None) -> Iterator[tuple[Node, Receiver]]:
    """A node whose destination answers every C-STORE with `status`, after one radiograph was sent."""
    receiver = Receiver(status=status).start()
    node = Node(node_config(tmp_path / "var", model_dir, receiver.port, **on_database(database_url)),
                classifiers).start(port=0)
    try:
        files = [copy_with_new_uids(real_file("RG3_UNCR.dcm"), tmp_path / "in")]
        assert send(files, node.port) == [0x0000]
        yield node, receiver
    finally:
        node.stop()
        receiver.stop()


def test_refusal_is_recorded_and_not_retried(tmp_path: Path, model_dir: Path, classifiers,
                                             database_url: str | None) -> None:
    with _radiograph_sent_to_peer_answering(0xC000, tmp_path, model_dir, classifiers, database_url) as (node, _):
        delivery = wait_for(lambda: [d for d in _deliveries(node) if d.state == "failed"], timeout=60)[0]
        assert (delivery.attempts, delivery.last_status) == (1, "0xC000")
        assert "refused" in (delivery.last_error or "")


def test_out_of_resources_is_retried(tmp_path: Path, model_dir: Path, classifiers, database_url: str | None) -> None:
    with _radiograph_sent_to_peer_answering(0xA700, tmp_path, model_dir, classifiers, database_url) as (node, receiver):
        wait_for(lambda: any(d.attempts >= 2 and d.last_status == "0xA700" for d in _deliveries(node)), timeout=60)
        receiver.status = 0x0000
        wait_for(lambda: receiver.reports(), timeout=60)
        assert wait_for(lambda: [d for d in _deliveries(node) if d.state == "sent"], timeout=10)


def test_report_goes_out_as_stored_or_converted_for_a_peer_that_wants_another_syntax(tmp_path: Path) -> None:
    """The SR file is streamed as it is when the peer takes its transfer syntax (Explicit VR Little
    Endian), and converted for a peer that takes only Implicit VR Little Endian; either way it is the
    same report."""
    report = tmp_path / "sr.dcm"
    _saved_report(report)
    stored = pydicom.dcmread(report)
    for syntaxes, expected in (([ImplicitVRLittleEndian, ExplicitVRLittleEndian], ExplicitVRLittleEndian),
                               ([ImplicitVRLittleEndian], ImplicitVRLittleEndian)):
        peer = Receiver(transfer_syntaxes=syntaxes).start()
        try:
            outcome = send_files([report], "DFNODE", "PACS", "127.0.0.1", peer.port, timeout=10)
        finally:
            peer.stop()
        assert outcome.delivered, outcome.detail
        received = peer.received[0]
        assert received.file_meta.TransferSyntaxUID == expected
        assert received.SOPInstanceUID == stored.SOPInstanceUID
        assert received.ContentSequence == stored.ContentSequence


def _saved_report(path: Path) -> None:
    source = pydicom.dcmread(real_file("RG3_UNCR.dcm"), stop_before_pixels=True)
    result = SeriesResult([ImageResult(str(source.SOPInstanceUID), None, 0.7)], 0.7, Verdict.SUSPECTED, "knee", "v1",
                          0.5)
    series, instance = report_uids(str(source.SeriesInstanceUID), 1)
    sr = build_report([source], result, ReportIdentity("2.25.7", "DFNODE", "dfnode", series, instance, 1))
    sr.save_as(path, enforce_file_format=True)


def test_eighty_reports_reach_a_pacs_that_takes_two_associations_on_the_first_try(
        tmp_path: Path, model_dir: Path, classifiers) -> None:
    """80 series reported in a burst to a pynetdicom PACS that refuses a third association: batches over
    one association, never more than the peer's `max_associations`, and no probing connection, so every
    report is delivered at its first attempt."""
    receiver = Receiver(maximum_associations=2).start()
    config = node_config(tmp_path / "var", model_dir, receiver.port,
                         peers=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": receiver.port,
                                 "max_associations": 2}],
                         sending={"batch_size": 16, "poll_seconds": 0.1, "initial_backoff_seconds": 0.2,
                                  "max_backoff_seconds": 1.0, "timeout_seconds": 10})
    node = Node(config, classifiers).start(port=0)
    try:
        files = [ct_series(tmp_path / f"ct{n}", slices=1, size=64, seed=n)[0] for n in range(80)]
        assert send(files, node.port) == [0x0000] * 80
        wait_for(lambda: len(receiver.reports()) >= 80, timeout=600)
        deliveries = wait_for(lambda: (d := _deliveries(node)) and all(x.state == "sent" for x in d) and d, timeout=30)
        assert len(deliveries) == 80 and {d.attempts for d in deliveries} == {1}
        assert len({sr.SOPInstanceUID for sr in receiver.reports()}) == 80
    finally:
        node.stop()
        receiver.stop()
