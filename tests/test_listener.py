"""The DICOM listener's address: IPv6 and dual-stack binds, and a clear stop when it cannot listen."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from core.errors import ConfigError
from node.config import parse_config
from node.db import AuditEvent
from node.service import Node
from tests.conftest import node_config_raw
from tests.helpers import Receiver, ct_series, free_port, storescu
from tests.serve_process import write_config


def _node(tmp_path: Path, model_dir: Path, receiver: Receiver, classifiers, bind_address: str,
          peer_host: str = "127.0.0.1") -> Node:
    """A node that lets in only the peer PACS from `peer_host`."""
    raw = node_config_raw(tmp_path / "var", model_dir, receiver.port, node={"bind_address": bind_address},
                          security={"require_known_peers": True},
                          peers=[{"name": "pacs", "ae_title": "PACS", "host": peer_host, "port": receiver.port}])
    return Node(parse_config(raw, "test-config"), classifiers)


def _accepted_addresses(node: Node) -> list[str]:
    with node.db.session() as s:
        return list(s.scalars(select(AuditEvent.address).where(AuditEvent.event == "association.accepted")))


def test_an_ipv6_address_serves_ipv6_peers(tmp_path: Path, model_dir: Path, receiver: Receiver,
                                           classifiers) -> None:
    node = _node(tmp_path, model_dir, receiver, classifiers, "::1", peer_host="::1").start(port=0)
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        assoc = ae.associate("::1", node.port, ae_title="DFNODE")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        slice_ = ct_series(tmp_path / "ct", slices=1, size=64, body_part="PELVIS")[0]  # no route: only kept
        assert assoc.send_c_store(dcmread(slice_)).Status == 0x0000
        assoc.release()
        assert _accepted_addresses(node) == ["::1"]
        with pytest.raises(ConnectionRefusedError):  # bound to ::1 only: 127.0.0.1 is not listened on
            socket.create_connection(("127.0.0.1", node.port), timeout=5)
    finally:
        node.stop()


def test_a_dual_stack_address_sees_ipv4_peers_as_ipv4(tmp_path: Path, model_dir: Path, receiver: Receiver,
                                                       classifiers) -> None:
    node = _node(tmp_path, model_dir, receiver, classifiers, "::").start(port=0)
    try:
        # DCMTK's storescu over IPv4; the known-peer policy (PACS at 127.0.0.1) must let it in, which it
        # would not if the peer were seen as ::ffff:127.0.0.1
        sent = storescu(node.port, ct_series(tmp_path / "ct", slices=2, size=64, body_part="PELVIS"))
        assert sent.returncode == 0, sent.stderr
        assert _accepted_addresses(node) == ["127.0.0.1"]
    finally:
        node.stop()


def test_a_dicom_port_in_use_stops_the_start_with_the_key(tmp_path: Path, model_dir: Path, receiver: Receiver,
                                                          classifiers) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        node = _node(tmp_path, model_dir, receiver, classifiers, "127.0.0.1")
        in_use = r"node.port: cannot listen on 127.0.0.1 port \d+: Address already in use"
        with pytest.raises(ConfigError, match=in_use):
            node.start(port=taken.getsockname()[1])
        assert node.servers == []
        node.db.close()


def test_serve_finds_a_busy_port_before_the_models_load(tmp_path: Path, model_dir: Path) -> None:
    """`dfnode serve` on a taken port stops at once, naming the key, with no setup token logged and no
    model loaded (the cards point at weights that do not exist: loading them would fail otherwise)."""
    missing_models = {"knee": {"card": str(tmp_path / "none" / "knee.json")},
                      "lung": {"card": str(tmp_path / "none" / "lung.json")}}
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        raw = node_config_raw(tmp_path / "var", model_dir, node={"port": port, "bind_address": "127.0.0.1"},
                              console={"enabled": True, "port": free_port()}, models=missing_models)
        config = write_config(raw, tmp_path / "config.yaml")
        result = subprocess.run([sys.executable, "-m", "node.cli", "serve", "--config", str(config)],
                                capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"node.port: cannot listen on 127.0.0.1 port {port}" in output
    assert "setup token" not in output and "model card is missing" not in output and "Traceback" not in output
