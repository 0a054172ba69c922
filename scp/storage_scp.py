"""The Storage SCP: answers C-ECHO, accepts C-STORE for every storage SOP class and transfer syntax.

Handlers never raise: they log and return a DICOM status. Dependencies arrive as bound arguments.
The store handler hands the received bytes, untouched, to an `InstanceSink` and never waits for
inference; the success status goes back only after the sink has made the instance durable.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.config import NodeSettings, Peer
from node.errors import SpoolError
from scp import statuses
from scp.file_meta import part10_header
from scp.listener import DeferredHandshakeServer, start_listener
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
    address: str = ""  # the peer's IP address


class InstanceSink(Protocol):
    def store(self, instance: ReceivedInstance) -> None:
        """Make the instance durable (disk and database) or raise `SpoolError`."""


class AuditSink(Protocol):
    def record(self, event: str, level: int = logging.INFO, **fields: object) -> None:
        """Record an audit event (best effort: never raises for a storage failure)."""


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


def _handle_requested(event: evt.Event, policy: PeerPolicy, audit: AuditSink) -> None:
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
        if verdict is None:
            audit.record("association.accepted", address=address, calling_ae=calling, called_ae=called)
        else:
            audit.record("association.rejected", logging.WARNING, address=address, calling_ae=calling,
                         called_ae=called, detail=verdict[1])
    except Exception as exc:  # a full disk must not turn away a peer that may echo or get 0xA700 answers
        log.error("association record not written (%s); deciding without it", exc.__class__.__name__)
    if verdict is not None:
        event.assoc.acse.send_reject(*verdict[0])
        event.assoc.kill()  # returns once the A-ASSOCIATE-RJ is on the wire


def _handle_echo(event: evt.Event) -> int:
    return statuses.SUCCESS


def _part10_writer(header: bytes, dataset_bytes: bytes) -> Callable[[BinaryIO], None]:
    def write(f: BinaryIO) -> None:
        f.write(header)
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
    syntax = str(event.context.transfer_syntax)
    return ReceivedInstance(sop_class, sop_uid, study_uid, series_uid, syntax,
                            event.assoc.requestor.ae_title.strip(), header,
                            _part10_writer(part10_header(sop_class, sop_uid, syntax), raw),
                            len(raw), event.assoc.requestor.address)


def _handle_store(event: evt.Event, sink: InstanceSink, audit: AuditSink) -> int:
    """Check, hand to the sink, answer. Never raises."""
    try:
        checked = _checked_instance(event)
        if isinstance(checked, tuple):
            status, reason = checked
        else:
            sink.store(checked)
            return statuses.SUCCESS
    except SpoolError as exc:
        status, reason = statuses.OUT_OF_RESOURCES, f"out of resources: {exc}"
    except Exception as exc:
        log.exception("C-STORE failed")
        status, reason = statuses.OUT_OF_RESOURCES, f"internal error: {exc.__class__.__name__}"
    try:
        request = cast(C_STORE, event.request)
        audit.record("instance.refused", logging.WARNING, address=event.assoc.requestor.address,
                     calling_ae=event.assoc.requestor.ae_title.strip(),
                     sop_instance_uid=_uid_or_blank(request.AffectedSOPInstanceUID),
                     detail=f"0x{status:04X}: {reason}")
    except Exception:
        log.exception("refusal not audited")
    return status


def _uid_or_blank(value: object) -> str:
    """A UID from the request for the audit trail, or "" when it is not one (it may be anything)."""
    text = str(value or "")
    return text if is_valid_uid(text) else ""


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


@dataclass(frozen=True)
class TlsListener:
    """Where and how the TLS listener runs."""

    port: int
    context: ssl.SSLContext
    handshake_timeout: float


def start_storage_scp(node: NodeSettings, policy: PeerPolicy, sink: InstanceSink, audit: AuditSink,
                      port: int | None, tls: TlsListener | None = None) -> list[DeferredHandshakeServer]:
    """Start listening in the background: without TLS on `port` (None: not at all) and, with `tls`, on
    its port. `server.shutdown()` stops each."""
    ae = build_ae(node)
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, _handle_requested, [policy, audit]),
        (evt.EVT_C_ECHO, _handle_echo),
        (evt.EVT_C_STORE, _handle_store, [sink, audit]),
    ]

    def refused(address: str, why: str) -> None:
        audit.record("tls.refused", logging.WARNING, address=address, detail=why)

    listeners: list[tuple[int, ssl.SSLContext | None, float]] = []
    if port is not None:
        listeners.append((port, None, 0.0))
    if tls is not None:
        listeners.append((tls.port, tls.context, tls.handshake_timeout))
    servers = []
    for listen_port, context, handshake_timeout in listeners:
        server = start_listener(ae, (node.bind_address, listen_port), handlers, context, handshake_timeout, refused)
        servers.append(server)
        log.info("%s listening on %s:%d%s", node.ae_title, *server.server_address[:2], " (TLS)" if context else "")
    return servers
