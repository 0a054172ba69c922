"""Receiving as peers see it, on pynetdicom's Storage SCP: user identity, private SOP classes, refused
services, peers that break off or never speak, and memory while large datasets stream in."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    Verification,
)
from sqlalchemy import func, select

from node.db import AuditEvent, Instance
from node.service import Node
from tests.conftest import node_config, node_config_raw
from tests.helpers import copy_with_new_uids, echo, free_port, real_file, require_tool, storescu, wait_for
from tests.serve_process import start_serve, write_config

PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.8.498.1.77"  # a private storage SOP class: no standard one


def instances(node: Node) -> int:
    with node.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Instance)) or 0)


def rejections(node: Node) -> list[str]:
    with node.db.session() as s:
        return [e.detail for e in s.scalars(select(AuditEvent).where(AuditEvent.event == "association.rejected"))]


@pytest.fixture
def identity_node(tmp_path: Path, model_dir: Path, classifiers) -> Iterator[Node]:
    peers = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 11113, "username": "modality",
              "password": "s3cret"}]
    node = Node(node_config(tmp_path / "var", model_dir, peers=peers), classifiers).start(port=0)
    yield node
    node.stop()


@pytest.mark.dcmtk
def test_storescu_user_identity_is_checked_and_answered(identity_node: Node, tmp_path: Path) -> None:
    ct = copy_with_new_uids(real_file("CT_small.dcm"), tmp_path)
    accepted = storescu(identity_node.port, [ct], "-d", "-usr", "modality", "-pwd", "s3cret", "-rsp")
    assert accepted.returncode == 0, accepted.stderr
    assert "User Identity Negotiation Response" in accepted.stdout + accepted.stderr
    assert instances(identity_node) == 1
    for options in (("-usr", "modality", "-pwd", "wrong", "-rsp"), ("-usr", "someone", "-pwd", "s3cret"), ()):
        refused = storescu(identity_node.port, [ct], *options)
        assert refused.returncode != 0 and "Rejected" in refused.stdout + refused.stderr, options
    assert sum("user identity" in detail for detail in rejections(identity_node)) == 3


def _private_instance(folder: Path) -> Path:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = PRIVATE_SOP_CLASS, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "OT", "P1", "Private^Vendor"
    ds.add_new(0x00091010, "LO", "DFNODE TEST")  # a private creator, no private data
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / "private.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _send_private(port: int, path: Path) -> int | None:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(PRIVATE_SOP_CLASS, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DFNODE")
    try:
        if not assoc.is_established or not assoc.accepted_contexts:
            return None
        return int(assoc.send_c_store(pydicom.dcmread(path)).Status)
    finally:
        if assoc.is_established:
            assoc.release()


@pytest.mark.parametrize("accept_any", [False, True])
def test_a_private_sop_class_is_stored_only_when_configured(tmp_path: Path, model_dir: Path, classifiers,
                                                            accept_any: bool) -> None:
    config = node_config(tmp_path / "var", model_dir, storage={"data_dir": str(tmp_path / "var"),
                                                               "accept_any_storage_class": accept_any})
    node = Node(config, classifiers).start(port=0)
    try:
        status = _send_private(node.port, _private_instance(tmp_path))
        if accept_any:
            assert status == 0x0000 and instances(node) == 1
            spooled = pydicom.dcmread(next(node.config.storage.spool_dir.rglob("*.dcm")))
            assert spooled.SOPClassUID == PRIVATE_SOP_CLASS
            assert spooled.file_meta.SendingApplicationEntityTitle == "PACS"
        else:
            assert status is None and instances(node) == 0  # its presentation context is refused
    finally:
        node.stop()


def test_query_and_retrieve_are_refused_as_pynetdicom_refuses_them(running_node: Node) -> None:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", running_node.port, ae_title="DFNODE")
    assert assoc.is_established
    assert [c.abstract_syntax for c in assoc.accepted_contexts] == [Verification]
    assert [c.abstract_syntax for c in assoc.rejected_contexts] == [PatientRootQueryRetrieveInformationModelFind]
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_silent_and_non_dicom_clients_are_dropped_and_the_node_serves_on(tmp_path: Path, model_dir: Path,
                                                                          classifiers) -> None:
    node = Node(node_config(tmp_path / "var", model_dir, node={"network_timeout_seconds": 1}), classifiers).start(
        port=0)
    try:
        silent = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        talker = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        talker.sendall(b"GET / HTTP/1.1\r\nHost: dfnode\r\n\r\n")
        started = time.monotonic()
        assert _read_until_closed(silent) == b""  # never associated: the connection just closes
        assert time.monotonic() - started < 6
        answer = _read_until_closed(talker)
        assert answer[:1] in (b"", b"\x07")  # closed, or an A-ABORT first
        assert echo(node.port) == 0x0000
    finally:
        node.stop()


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while part := sock.recv(65536):
        data += part
    sock.close()
    return data


def _multiframe(path: Path, frames: int, side: int = 512) -> Path:
    """A Multi-frame Grayscale Word Secondary Capture of `frames` frames of `side` px (2 bytes a pixel)."""
    ds = pydicom.dcmread(copy_with_new_uids(real_file("CT_small.dcm"), path.parent / "template"))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames, side, side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.random.default_rng(0).integers(0, 4096, (frames, side, side), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.dcmtk
def test_four_100_mb_multiframes_at_once_keep_memory_flat(tmp_path: Path, model_dir: Path) -> None:
    """Four associations each send a 100 MB dataset at once: the node's resident memory stays within
    200 MB of idle, because each dataset streams to disk as it arrives."""
    template = _multiframe(tmp_path / "big.dcm", frames=200)
    files = [copy_with_new_uids(template, tmp_path / f"copy{n}") for n in range(4)]
    port = free_port()
    raw = node_config_raw(tmp_path / "var", model_dir, node={"port": port, "bind_address": "127.0.0.1"},
                          routes=[])
    node = start_serve(write_config(raw, tmp_path / "config.yaml"), port, tmp_path / "serve.log")
    try:
        time.sleep(2)
        idle = _rss_bytes(node.process.pid)
        peak = [idle]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_bytes(node.process.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        tool = require_tool("storescu")
        senders = [subprocess.Popen([tool, "-aet", "PACS", "-aec", "DFNODE", "127.0.0.1", str(port), str(f)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for f in files]
        outputs = [sender.communicate(timeout=300)[0].decode(errors="replace") for sender in senders]
        done.set()
        sampler.join()
        assert all(sender.returncode == 0 for sender in senders), outputs
        spooled = list((tmp_path / "var" / "spool").rglob("*.dcm"))
        assert len(spooled) == 4 and all(p.stat().st_size > 100_000_000 for p in spooled)
        assert peak[0] - idle < 200 * 2**20, f"idle {idle / 2**20:.0f} MB, peak {peak[0] / 2**20:.0f} MB"
    finally:
        node.terminate()


@pytest.mark.dcmtk
def test_a_sender_killed_mid_dataset_leaves_nothing(tmp_path: Path, model_dir: Path, classifiers) -> None:
    big = _multiframe(tmp_path / "big.dcm", frames=200)
    node = Node(node_config(tmp_path / "var", model_dir, node={"network_timeout_seconds": 1}), classifiers).start(
        port=0)
    try:
        receiving = node.config.storage.spool_dir / ".receiving"
        sender = subprocess.Popen([require_tool("storescu"), "-aet", "PACS", "-aec", "DFNODE", "127.0.0.1",
                                   str(node.port), str(big)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: any(p.stat().st_size > 10_000_000 for p in receiving.glob("*")), timeout=60, interval=0.01)
        sender.kill()
        sender.wait()
        time.sleep(2.5)  # the partial file is abandoned once nobody has written it for twice the network timeout
        assert echo(node.port) == 0x0000  # a connection that closes sweeps it away
        wait_for(lambda: not os.listdir(receiving), timeout=10)
        assert instances(node) == 0 and not list(node.config.storage.spool_dir.rglob("*.dcm"))
    finally:
        node.stop()
