"""The Storage SCP: answers C-ECHO, accepts C-STORE for every storage SOP class and transfer syntax.

Handlers never raise: they log and return a DICOM status. Dependencies arrive as bound arguments.
The store handler hands the received bytes, untouched, to an `InstanceSink` and never waits for
inference; the success status goes back only after the sink has made the instance durable.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol, cast

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from node.config import NodeSettings, Peer
from node.errors import SpoolError
from scp import statuses
from scp.spool import is_valid_uid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedInstance:
    """One C-STORE request, checked; `write` puts the Part 10 file bytes into a file object."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    calling_ae: str
    header: Dataset
    write: Callable[[BinaryIO], None]
    nbytes: int = 0  # the dataset's encoded size, for the spool's budget


class InstanceSink(Protocol):
    def store(self, instance: ReceivedInstance) -> None:
        """Make the instance durable (disk and database) or raise `SpoolError`."""


AuditFn = Callable[[str, str, str, bool, str], None]


@dataclass
class PeerPolicy:
    """Who may associate: the node's AE title, and (optionally) only known peers from known hosts."""

    node_ae: str
    require_known_peers: bool
    allowed: dict[str, set[str]] = field(default_factory=dict)  # AE title -> addresses

    @classmethod
    def from_config(cls, node: NodeSettings, peers: list[Peer], require_known_peers: bool) -> PeerPolicy:
        allowed: dict[str, set[str]] = {}
        for peer in peers:
            if peer.may_send:
                allowed.setdefault(peer.ae_title, set()).update(_addresses(peer.host))
        return cls(node.ae_title, require_known_peers, allowed)

    def rejection(self, calling: str, called: str, address: str) -> tuple[tuple[int, int, int], str] | None:
        """Why an association must be rejected, or None if it may proceed."""
        if called != self.node_ae:
            return statuses.REJECT_CALLED_AE_NOT_RECOGNISED, f"called AE {called!r} is not {self.node_ae!r}"
        if not self.require_known_peers:
            return None
        if calling not in self.allowed:
            return statuses.REJECT_CALLING_AE_NOT_RECOGNISED, f"calling AE {calling!r} is not a known peer"
        if address not in self.allowed[calling]:
            return statuses.REJECT_NO_REASON, f"calling AE {calling!r} is not allowed from {address}"
        return None


def _addresses(host: str) -> set[str]:
    """The IP addresses a configured host name stands for (resolved once, at start-up)."""
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)} | {host}
    except OSError:
        log.warning("peer host %s does not resolve; only the literal name will match", host)
        return {host}


def _handle_requested(event: evt.Event, policy: PeerPolicy, audit: AuditFn) -> None:
    """Check the called AE title, the calling AE title and the address before anything else."""
    rq = event.assoc.requestor.primitive
    assert rq is not None  # EVT_REQUESTED fires with the A-ASSOCIATE request in hand
    calling = rq.calling_ae_title.strip()
    called = rq.called_ae_title.strip()
    address = event.assoc.requestor.address
    try:
        verdict = policy.rejection(calling, called, address)
    except Exception:  # a handler must never raise into pynetdicom
        log.exception("association check failed; rejecting")
        verdict = (statuses.REJECT_NO_REASON, "internal error while checking the peer")
    try:
        audit(address, calling, called, verdict is None, verdict[1] if verdict else "")
    except Exception as exc:  # a full disk must not turn away a peer that may echo or get 0xA700 answers
        log.error("association record not written (%s); deciding without it", exc.__class__.__name__)
    if verdict is not None:
        log.warning("association rejected: %s (calling %r, called %r, from %s)", verdict[1], calling, called,
                    address)
        event.assoc.acse.send_reject(*verdict[0])
        event.assoc.kill()  # returns once the A-ASSOCIATE-RJ is on the wire
    else:
        log.info("association accepted: calling %r, called %r, from %s", calling, called, address)


def _handle_echo(event: evt.Event) -> int:
    return statuses.SUCCESS


def _part10_writer(file_meta: FileMetaDataset, dataset_bytes: bytes) -> Callable[[BinaryIO], None]:
    def write(f: BinaryIO) -> None:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(f, file_meta, enforce_standard=True)  # type: ignore[arg-type]
        f.write(dataset_bytes)

    return write


def _checked_instance(event: evt.Event) -> ReceivedInstance | tuple[int, str]:
    """The request as a `ReceivedInstance`, or (failure status, reason)."""
    request = cast(C_STORE, event.request)
    try:
        header = event.dataset
        study_uid = str(header.get("StudyInstanceUID", ""))
        series_uid = str(header.get("SeriesInstanceUID", ""))
        sop_uid = str(header.get("SOPInstanceUID", ""))
        sop_class = str(header.get("SOPClassUID", ""))
    except Exception as exc:  # any parse failure means the dataset cannot be understood
        return statuses.CANNOT_UNDERSTAND, f"dataset cannot be parsed: {exc}"
    for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                      ("SOPInstanceUID", sop_uid), ("SOPClassUID", sop_class)):
        if not is_valid_uid(uid):
            return statuses.CANNOT_UNDERSTAND, f"{name} is missing or not a valid UID ({uid[:70]!r})"
    if sop_uid != str(request.AffectedSOPInstanceUID):
        return statuses.CANNOT_UNDERSTAND, "SOPInstanceUID differs from the C-STORE request's"
    if sop_class != str(request.AffectedSOPClassUID):
        return statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID differs from the C-STORE request's"
    raw = request.DataSet.getvalue() if request.DataSet is not None else b""
    return ReceivedInstance(sop_class, sop_uid, study_uid, series_uid, str(event.context.transfer_syntax),
                            event.assoc.requestor.ae_title.strip(), header, _part10_writer(event.file_meta, raw),
                            len(raw))


def _handle_store(event: evt.Event, sink: InstanceSink) -> int:
    """Check, hand to the sink, answer. Never raises."""
    try:
        checked = _checked_instance(event)
        if isinstance(checked, tuple):
            status, reason = checked
            log.warning("C-STORE refused with 0x%04X: %s (calling %r)", status, reason,
                        event.assoc.requestor.ae_title)
            return status
        sink.store(checked)
        return statuses.SUCCESS
    except SpoolError as exc:
        log.error("C-STORE refused with 0x%04X, out of resources: %s", statuses.OUT_OF_RESOURCES, exc)
        return statuses.OUT_OF_RESOURCES
    except Exception:
        log.exception("C-STORE failed")
        return statuses.OUT_OF_RESOURCES


def build_ae(node: NodeSettings) -> AE:
    """An AE that accepts every storage SOP class with every transfer syntax, and Verification."""
    ae = AE(ae_title=node.ae_title)
    ae.require_called_aet = True
    ae.maximum_associations = node.max_associations
    ae.maximum_pdu_size = node.max_pdu_size
    ae.network_timeout = node.network_timeout_seconds
    ae.acse_timeout = node.network_timeout_seconds
    ae.dimse_timeout = node.network_timeout_seconds
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    return ae


def start_storage_scp(node: NodeSettings, policy: PeerPolicy, sink: InstanceSink, audit: AuditFn,
                      port: int | None = None) -> ThreadedAssociationServer:
    """Start listening in the background; `server.shutdown()` stops it."""
    ae = build_ae(node)
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, _handle_requested, [policy, audit]),
        (evt.EVT_C_ECHO, _handle_echo),
        (evt.EVT_C_STORE, _handle_store, [sink]),
    ]
    address = (node.bind_address, node.port if port is None else port)
    server = ae.start_server(address, block=False, evt_handlers=handlers)
    assert server is not None  # non-blocking start returns the server
    log.info("%s listening on %s:%d", node.ae_title, *server.server_address[:2])
    return server
