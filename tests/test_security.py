"""Only known peers get in: wrong called AE, unknown calling AE or address are rejected, nothing stored."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from node.db import AuditEvent, Instance
from node.service import Node
from scp.admission import PeerPolicy
from scp.settings import KnownPeer, PeerRules
from tests.helpers import copy_with_new_uids, echo, real_file, send


@pytest.mark.parametrize(("calling", "called", "reason"), [
    ("INTRUDER", "DFNODE", "is not a known peer"),
    ("PACS", "SOMEONE", "is not 'DFNODE'"),
])
def test_rejected_associations_store_nothing(running_node: Node, tmp_path: Path, calling: str, called: str,
                                             reason: str, caplog: pytest.LogCaptureFixture) -> None:
    files = [copy_with_new_uids(real_file("CT_small.dcm"), tmp_path)]
    assert send(files, running_node.port, calling=calling, called=called) == [None]
    assert echo(running_node.port, calling=calling, called=called) is None
    with running_node.db.session() as s:
        assert list(s.scalars(select(Instance))) == []
        records = list(s.scalars(select(AuditEvent).where(AuditEvent.event.startswith("association."))))
    assert records and all(r.event == "association.rejected" for r in records) and reason in records[0].detail
    assert (records[0].calling_ae, records[0].called_ae, records[0].address) == (calling, called, "127.0.0.1")
    assert not any(running_node.config.storage.spool_dir.rglob("*.dcm"))
    assert any("association.rejected" in r.message and reason in r.message for r in caplog.records)
    assert echo(running_node.port) == 0x0000  # the node keeps serving known peers


def test_known_ae_from_another_address_is_rejected() -> None:
    policy = PeerPolicy.from_rules("DFNODE", PeerRules(True, (KnownPeer("PACS", "10.1.2.3"),)))
    assert policy.refusal("PACS", "DFNODE", "10.1.2.3", None) is None
    verdict = policy.refusal("PACS", "DFNODE", "127.0.0.1", None)
    assert verdict is not None and "not allowed from 127.0.0.1" in verdict.detail
    assert PeerPolicy.from_rules("DFNODE", PeerRules(False)).refusal("ANY", "DFNODE", "1.2.3.4", None) is None
