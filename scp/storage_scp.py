"""The Storage SCP: answers C-ECHO, accepts C-STORE for every storage SOP class and transfer syntax.

`NodeServices` never raises: it logs and returns a DICOM status. It hands the received bytes,
untouched, to an `InstanceSink` and never waits for inference; the success status goes back only
after the sink has made the instance durable in the spool, and the sink indexes it once the answer
is sent.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import BinaryIO, Protocol

from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.dsutils import decode

from node.config import NodeSettings, Peer
from node.errors import ConfigError, SpoolError
from scp import statuses
from scp.association import VERIFICATION, Answer, Association, Negotiation, Rejection, StoreRequest
from scp.file_meta import part10_header
from scp.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from scp.listener import AssociationServer, AssociationSlots, start_listener
from scp.pdu import AssociateRequest, Implementation
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
    def store(self, instance: ReceivedInstance) -> Callable[[], None]:
        """Make the instance durable in the spool or raise `SpoolError`; returns its indexing, which
        never raises and runs once the success status is sent."""


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


class NodeServices:
    """The node's answers to an association: `PeerPolicy` decides who is let in, the `InstanceSink`
    keeps what arrives, the `AuditSink` records both."""

    def __init__(self, policy: PeerPolicy, sink: InstanceSink, audit: AuditSink):
        self.policy = policy
        self.sink = sink
        self.audit = audit

    def rejection(self, request: AssociateRequest, address: str) -> Rejection | None:
        """Check the called AE title, the calling AE title and the address; record the verdict."""
        calling, called = request.calling_ae, request.called_ae
        try:
            verdict = self.policy.rejection(calling, called, address)
        except Exception:  # rather turn one peer away than fail the connection's thread
            log.exception("association check failed; rejecting")
            verdict = (statuses.REJECT_NO_REASON, "internal error while checking the peer")
        try:
            if verdict is None:
                self.audit.record("association.accepted", address=address, calling_ae=calling, called_ae=called)
            else:
                self.audit.record("association.rejected", logging.WARNING, address=address, calling_ae=calling,
                                  called_ae=called, detail=verdict[1])
        except Exception as exc:  # a full disk must not turn away a peer that may echo or get 0xA700 answers
            log.error("association record not written (%s); deciding without it", exc.__class__.__name__)
        return None if verdict is None else verdict[0]

    def store(self, request: StoreRequest) -> Answer:
        """Check, hand to the sink, answer (with the reason for a refusal). Never raises."""
        try:
            checked = checked_instance(request)
            if isinstance(checked, tuple):
                status, reason = checked
            else:
                return Answer(statuses.SUCCESS, "", self.sink.store(checked))
        except SpoolError as exc:
            status, reason = statuses.OUT_OF_RESOURCES, f"out of resources: {exc}"
        except Exception as exc:
            log.exception("C-STORE failed")
            status, reason = statuses.OUT_OF_RESOURCES, f"internal error: {exc.__class__.__name__}"
        try:
            self.audit.record("instance.refused", logging.WARNING, address=request.address,
                              calling_ae=request.calling_ae,
                              sop_instance_uid=_uid_or_blank(request.command.sop_instance_uid),
                              detail=f"0x{status:04X}: {reason}")
        except Exception:
            log.exception("refusal not audited")
        return Answer(status, reason)


def _part10_writer(header: bytes, dataset_bytes: bytes) -> Callable[[BinaryIO], None]:
    def write(f: BinaryIO) -> None:
        f.write(header)
        f.write(dataset_bytes)

    return write


def _decoded(dataset: bytes, transfer_syntax: str) -> Dataset:
    """The dataset as pydicom reads it (values parsed when first used)."""
    syntax = UID(transfer_syntax)  # one of pynetdicom's ALL_TRANSFER_SYNTAXES: negotiated so
    return decode(BytesIO(dataset), syntax.is_implicit_VR, syntax.is_little_endian,
                  syntax == DeflatedExplicitVRLittleEndian)


def checked_instance(request: StoreRequest) -> ReceivedInstance | tuple[int, str]:
    """The request as a `ReceivedInstance`, or (failure status, reason)."""
    command = request.command
    try:
        header = _decoded(request.dataset, request.transfer_syntax)
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
    if sop_uid != command.sop_instance_uid:
        return statuses.CANNOT_UNDERSTAND, "SOPInstanceUID differs from the C-STORE request's"
    if sop_class != command.sop_class_uid:
        return statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID differs from the C-STORE request's"
    raw = request.dataset
    syntax = request.transfer_syntax
    return ReceivedInstance(sop_class, sop_uid, study_uid, series_uid, syntax, request.calling_ae, header,
                            _part10_writer(part10_header(sop_class, sop_uid, syntax, request.calling_ae), raw),
                            len(raw), request.address)


def _uid_or_blank(value: object) -> str:
    """A UID from the request for the audit trail, or "" when it is not one (it may be anything)."""
    text = str(value or "")
    return text if is_valid_uid(text) else ""


def negotiation(node: NodeSettings) -> Negotiation:
    """Every storage SOP class with every transfer syntax, and Verification."""
    storage = {str(context.abstract_syntax) for context in AllStoragePresentationContexts}
    return Negotiation(frozenset(storage | {VERIFICATION}), frozenset(str(s) for s in ALL_TRANSFER_SYNTAXES),
                       Implementation(IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, node.max_pdu_size),
                       network_timeout=node.network_timeout_seconds)


@dataclass(frozen=True)
class TlsListener:
    """Where and how the TLS listener runs."""

    port: int
    context: ssl.SSLContext
    handshake_timeout: float


def start_storage_scp(node: NodeSettings, policy: PeerPolicy, sink: InstanceSink, audit: AuditSink,
                      port: int | None, tls: TlsListener | None = None) -> list[AssociationServer]:
    """Start listening in the background: without TLS on `port` (None: not at all) and, with `tls`, on
    its port. `server.shutdown()` stops each."""
    services = NodeServices(policy, sink, audit)
    offer = negotiation(node)
    slots = AssociationSlots(node.max_associations)

    def new_association(connection: socket.socket, address: str) -> Association:
        return Association(connection, address, offer, services, slots.take)

    def refused(address: str, why: str) -> None:
        audit.record("tls.refused", logging.WARNING, address=address, detail=why)

    listeners: list[tuple[str, int, ssl.SSLContext | None, float]] = []
    if port is not None:
        listeners.append(("node.port", port, None, 0.0))
    if tls is not None:
        listeners.append(("tls.port", tls.port, tls.context, tls.handshake_timeout))
    servers: list[AssociationServer] = []
    for key, listen_port, context, handshake_timeout in listeners:
        try:
            server = start_listener((node.bind_address, listen_port), new_association, slots, context,
                                    handshake_timeout, refused)
        except OSError as exc:  # the port is taken, or the address is not this host's
            for started in servers:
                started.shutdown()
            raise ConfigError("DICOM listener", [(key, f"cannot listen on {node.bind_address} port {listen_port}: "
                                             f"{exc.strerror or exc} (node.bind_address must be an address of "
                                             "this host, 0.0.0.0 or ::; the port one no other program uses)")]) from exc
        servers.append(server)
        log.info("%s listening on %s:%d%s", node.ae_title, *server.server_address[:2], " (TLS)" if context else "")
    return servers
