"""docs/conformance.md against the code: the SOP classes and transfer syntaxes the Storage SCP offers,
the statuses and rejections it answers, who it says it is, and what it sends."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom

from node.config import NodeSettings, Peer, SendingSettings
from scp import statuses
from scp.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from scp.settings import ReceiverSettings
from scp.storage_scp import application_entity
from tests.helpers import real_file
from tests.sr_contract import suspected_report_and_key_image

DOC = (Path(__file__).resolve().parent.parent / "docs" / "conformance.md").read_text()
UID_IN_ROW = re.compile(r"^\|[^|]*\| `([0-9.]+)` \|", re.MULTILINE)


def section(heading: str) -> str:
    """The text under a heading, up to the next heading of any level."""
    start = DOC.index(heading + "\n")
    following = re.search(r"^#+ ", DOC[start + len(heading):], re.MULTILINE)
    return DOC[start:start + len(heading) + following.start()] if following else DOC[start:]


def _ae():
    return application_entity(ReceiverSettings("DFNODE", "127.0.0.1", 10, 60, 0, Path("/nonexistent")))


def test_the_sop_classes_accepted_are_the_documents() -> None:
    documented = set(UID_IN_ROW.findall(section("#### 2.3.3 Presentation contexts accepted")))
    offered = {str(cx.abstract_syntax) for cx in _ae().supported_contexts}
    assert documented == offered


def test_the_transfer_syntaxes_accepted_are_the_documents() -> None:
    documented = set(UID_IN_ROW.findall(section("#### 2.3.4 Transfer syntaxes accepted")))
    for cx in _ae().supported_contexts:
        assert set(map(str, cx.transfer_syntax)) == documented, cx.abstract_syntax


def test_identity_defaults_statuses_and_rejections_are_the_documents() -> None:
    policies = section("### 2.2 AE specification: association policies")
    assert f"`{IMPLEMENTATION_CLASS_UID}`" in policies and f"`{IMPLEMENTATION_VERSION}`" in policies
    node = NodeSettings()
    assert f"| simultaneous associations accepted | {node.max_associations} (`node.max_associations`)" in policies
    assert f"| network timeout | {node.network_timeout_seconds:g} s (`node.network_timeout_seconds`)" in policies
    peer = Peer(name="p", ae_title="P", host="h")
    assert f"| simultaneous associations initiated | {peer.max_associations} per peer" in policies
    storing = section("#### 2.3.2 Storage (SCP)")
    documented = {int(code, 16) for code in re.findall(r"^\| `0x([0-9A-F]{4})` \|", storing, re.MULTILINE)}
    assert documented == {statuses.SUCCESS, statuses.OUT_OF_RESOURCES, statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                          statuses.CANNOT_UNDERSTAND}
    acceptance = section("### 2.3 Association acceptance policy")
    triples = {tuple(int(n) for n in t) for t in re.findall(r"\((\d), (\d), (\d)\) \|$", acceptance, re.MULTILINE)}
    assert triples == {value for name, value in vars(statuses).items() if name.startswith("REJECT_")}
    sending = SendingSettings()
    initiation = " ".join(section("### 2.4 Association initiation policy").split())
    assert f"`sending.initial_backoff_seconds` {sending.initial_backoff_seconds:g} s" in initiation
    assert f"`max_backoff_seconds` {sending.max_backoff_seconds:g} s" in initiation
    assert f"`sending.max_attempts` {sending.max_attempts}" in initiation


def test_the_objects_sent_are_the_documents(tmp_path: Path) -> None:
    sr, key = suspected_report_and_key_image(pydicom.dcmread(real_file("RG3_UNCR.dcm")), 0.5)
    documented = set(UID_IN_ROW.findall(section("### 2.4 Association initiation policy")))
    assert documented == {str(sr.SOPClassUID), str(key.SOPClassUID)}
    assert "DFN001" in DOC and "DFN002" in DOC and "TID 1500" in DOC
