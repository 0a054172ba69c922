"""DICOM TLS, receiving and sending, against DCMTK's storescu and storescp with +tls."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import yaml
from sqlalchemy import select

from core.errors import ConfigError
from node.cli import main
from node.config import Config
from node.db import AuditEvent, Instance
from node.network import TlsContexts
from node.service import Node
from tests.conftest import node_config, node_config_raw
from tests.helpers import (
    copy_with_new_uids,
    free_port,
    listening,
    real_file,
    require_tool,
    run_tool,
    storescu,
    wait_for,
)
from tests.pki import Identity, Pki, make_pki

pytestmark = pytest.mark.dcmtk

HANDSHAKE_TIMEOUT = 4.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_section(pki: Pki, **changes: object) -> dict:
    return {"port": 2762, "certificate": str(pki.node.certificate), "private_key": str(pki.node.key),
            "ca_certificates": str(pki.ca), "require_client_certificate": True,
            "handshake_timeout_seconds": HANDSHAKE_TIMEOUT, **changes}


def tls_config(tmp_path: Path, model_dir: Path, pki: Pki, pacs_port: int, **tls_changes: object) -> Config:
    raw = node_config_raw(tmp_path / "var", model_dir, pacs_port, tls=tls_section(pki, **tls_changes))
    raw["peers"][0]["tls"] = True
    return node_config(tmp_path / "var", model_dir, pacs_port, **{k: v for k, v in raw.items()
                                                                  if k in ("tls", "peers")})


@pytest.fixture
def tls_pacs(tmp_path: Path, pki: Pki) -> Iterator[tuple[int, Path]]:
    """DCMTK's storescp as the PACS, receiving over TLS only from certificates of the hospital CA."""
    port, out = free_port(), tmp_path / "pacs"
    out.mkdir()
    with (tmp_path / "storescp.log").open("w") as log:
        process = subprocess.Popen([require_tool("storescp"), "+tls", str(pki.peer.key), str(pki.peer.certificate),
                                    "+cf", str(pki.ca), "-aet", "PACS", "-od", str(out), "+xa", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: listening(port), timeout=20)
        yield port, out
        process.terminate()
        process.wait(10)


@pytest.fixture
def tls_node(tmp_path: Path, model_dir: Path, classifiers, pki: Pki, tls_pacs: tuple[int, Path]) -> Iterator[Node]:
    node = Node(tls_config(tmp_path, model_dir, pki, tls_pacs[0]), classifiers).start(port=0, tls_port=0)
    yield node
    node.stop()


def with_certificate(pki: Pki, identity: Identity) -> tuple[str, ...]:
    return ("+tls", str(identity.key), str(identity.certificate), "+cf", str(pki.ca))


def audit_events(node: Node, prefix: str) -> list[AuditEvent]:
    with node.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.event.startswith(prefix))
                              .order_by(AuditEvent.id)))


def stored_uids(node: Node) -> set[str]:
    with node.db.session() as s:
        return set(s.scalars(select(Instance.sop_instance_uid)))


def test_storescu_over_tls_is_stored_and_the_report_goes_back_over_tls(tls_node: Node, tls_pacs: tuple[int, Path],
                                                                       pki: Pki, tmp_path: Path) -> None:
    radiograph = copy_with_new_uids(real_file("RG1_UNCR.dcm"), tmp_path / "in", BodyPartExamined="KNEE")
    result = storescu(tls_node.tls_port, [radiograph], *with_certificate(pki, pki.peer))
    assert result.returncode == 0, result.stderr
    assert str(pydicom.dcmread(radiograph, stop_before_pixels=True).SOPInstanceUID) in stored_uids(tls_node)
    reports = wait_for(lambda: list(tls_pacs[1].glob("SR*")), timeout=90)
    assert isinstance(reports, list)
    sr = pydicom.dcmread(reports[0])
    assert sr.StudyInstanceUID == pydicom.dcmread(radiograph, stop_before_pixels=True).StudyInstanceUID
    sent = wait_for(lambda: audit_events(tls_node, "delivery.sent"), timeout=30)
    assert isinstance(sent, list) and sent[0].address == "127.0.0.1"
    assert echo_plain(tls_node.port) == 0  # the plain listener goes on beside the TLS one


def echo_plain(port: int) -> int:
    return run_tool(require_tool("echoscu"), "-aet", "PACS", "-aec", "DFNODE", "127.0.0.1", str(port)).returncode


@pytest.mark.parametrize("client", ["no certificate", "untrusted certificate", "no TLS"])
def test_tls_peers_without_a_trusted_certificate_store_nothing(tls_node: Node, pki: Pki, tmp_path: Path,
                                                               client: str) -> None:
    options = {"no certificate": ("+tla", "+cf", str(pki.ca)),
               "untrusted certificate": with_certificate(pki, pki.stranger),
               "no TLS": ()}[client]
    radiograph = copy_with_new_uids(real_file("RG1_UNCR.dcm"), tmp_path / "in", BodyPartExamined="KNEE")
    result = storescu(tls_node.tls_port, [radiograph], *options)
    assert result.returncode != 0
    refused = wait_for(lambda: audit_events(tls_node, "tls.refused"), timeout=HANDSHAKE_TIMEOUT + 10)
    assert isinstance(refused, list) and refused[0].address == "127.0.0.1"
    assert "TLS handshake" in refused[0].detail
    assert stored_uids(tls_node) == set()
    assert not audit_events(tls_node, "association")
    result = storescu(tls_node.tls_port, [radiograph], *with_certificate(pki, pki.peer))
    assert result.returncode == 0, result.stderr  # and the node goes on serving trusted peers


def test_idle_tls_clients_do_not_hold_up_other_peers(tls_node: Node, pki: Pki, tmp_path: Path) -> None:
    """Connections that never start their handshake: a trusted peer is served while they wait, and the
    node drops them after tls.handshake_timeout_seconds."""
    idle = [socket.create_connection(("127.0.0.1", tls_node.tls_port)) for _ in range(5)]
    try:
        files = [copy_with_new_uids(real_file("CT_small.dcm"), tmp_path / f"ct{i}") for i in range(3)]
        result = storescu(tls_node.tls_port, files, *with_certificate(pki, pki.peer))
        assert result.returncode == 0, result.stderr
        assert len(stored_uids(tls_node)) == 3
        assert all(still_open(s) for s in idle), "the idle clients were dropped before the peer was served"
        for s in idle:  # the node closes them once the handshake time is up
            s.settimeout(HANDSHAKE_TIMEOUT + 20)
            assert s.recv(1) == b""
    finally:
        for s in idle:
            s.close()
    timeouts = [e for e in audit_events(tls_node, "tls.refused") if "not finished in time" in e.detail]
    assert len(timeouts) == 5


def still_open(sock: socket.socket) -> bool:
    """True while the other side has neither closed the connection nor sent anything."""
    sock.setblocking(False)
    try:
        return not sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


def test_a_peer_with_an_untrusted_certificate_gets_no_report(tmp_path: Path, model_dir: Path, classifiers,
                                                             pki: Pki) -> None:
    """The PACS shows a certificate from a CA the node does not trust: nothing is sent, the delivery is retried
    and says why."""
    port, out = free_port(), tmp_path / "pacs"
    out.mkdir()
    process = subprocess.Popen([require_tool("storescp"), "+tls", str(pki.stranger.key),
                                str(pki.stranger.certificate), "-aet", "PACS", "-od", str(out), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = Node(tls_config(tmp_path, model_dir, pki, port), classifiers).start(port=0, tls_port=0)
    try:
        wait_for(lambda: listening(port), timeout=20)
        radiograph = copy_with_new_uids(real_file("RG1_UNCR.dcm"), tmp_path / "in", BodyPartExamined="KNEE")
        assert storescu(node.tls_port, [radiograph], *with_certificate(pki, pki.peer)).returncode == 0
        retries = wait_for(lambda: audit_events(node, "delivery.retry"), timeout=90)
        assert isinstance(retries, list) and "certificate verify failed" in retries[0].detail
        assert list(out.iterdir()) == []
    finally:
        node.stop()
        process.terminate()
        process.wait(10)


def test_tls_configuration_problems_name_their_keys(tmp_path: Path, model_dir: Path, pki: Pki,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError) as missing:
        node_config(tmp_path, model_dir, tls={"port": 2762, "require_client_certificate": True})
    assert {p for p, _ in missing.value.problems} == {"tls.certificate", "tls.private_key", "tls.ca_certificates"}
    with pytest.raises(ConfigError) as deaf:
        node_config(tmp_path, model_dir, tls={"plain_listener": False})
    assert [p for p, _ in deaf.value.problems] == ["tls.plain_listener"]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    config = tls_config(tmp_path, model_dir, pki, 11113, certificate=str(garbage),
                        ca_certificates=str(tmp_path / "absent.pem"))
    with pytest.raises(ConfigError) as unloadable:
        TlsContexts(config)
    assert [p for p, _ in unloadable.value.problems] == ["tls.certificate", "tls.ca_certificates"]
    assert "does not exist" in unloadable.value.problems[1][1]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert main(["check-config", "--config", str(path)]) == 2
    assert "tls.certificate: cannot load" in capsys.readouterr().err
