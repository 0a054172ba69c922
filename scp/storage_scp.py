"""The Storage SCP, pynetdicom's: C-ECHO, and C-STORE of every storage SOP class in every transfer syntax.

What the node adds, through pynetdicom's extension points:
- admission on the A-ASSOCIATE-RQ (`EVT_REQUESTED`), before any data: the called AE title, the calling
  AE title and its address, the user identity it presents, and the node's limit of open associations
  over all its listeners; every verdict is audited;
- each dataset is streamed as it arrives into a partial file on the spool's filesystem (pynetdicom's
  `STORE_RECV_CHUNKED_DATASET`), never decoded and re-encoded: the C-STORE handler reads its header,
  checks it, has the `InstanceSink` write the spool file (the node's File Meta, naming the sending AE,
  then the dataset's bytes as they arrived; fsynced and renamed) and only then answers success;
- the instance is indexed once its C-STORE-RSP is on its way (`EVT_DIMSE_SENT`), or when the
  connection closes if the answer could not be sent.

`NodeServices` never raises into pynetdicom: it logs and answers a DICOM status.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from core.errors import ConfigError, SpoolError
from core.events import AuditEventName
from scp import statuses
from scp.admission import Identity, PeerPolicy, Refusal, peer_address
from scp.file_meta import part10_header
from scp.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from scp.receiving import receive_into, remove_abandoned, write_failure
from scp.server import NodeAssociationServer
from scp.settings import ReceiverSettings
from scp.spool import is_valid_uid

log = logging.getLogger(__name__)

_COPY_CHUNK = 1 << 20


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
    def record(self, event: AuditEventName, level: int = logging.INFO, **fields: object) -> None:
        """Record an audit event (best effort: never raises for a storage failure)."""


def _received_dataset(path: Path) -> tuple[int, int]:
    """Where the dataset starts in pynetdicom's received file, and how long it is: after the preamble,
    "DICM" and the File Meta group, whose length pynetdicom always writes first."""
    with open(path, "rb") as f:
        head = f.read(144)
        if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
            raise ValueError("the received file does not start with a File Meta group length")
        (group_length,) = struct.unpack("<I", head[140:144])
        start = 144 + group_length
        end = f.seek(0, 2)
    return start, end - start


def _part10_writer(header: bytes, received: Path, start: int) -> Callable[[BinaryIO], None]:
    """Write the node's Part 10 header, then the received dataset's bytes: copied by the kernel
    (`copy_file_range`, no trip through Python's buffers) where it can, else in 1 MiB chunks."""
    def write(f: BinaryIO) -> None:
        f.write(header)
        f.flush()
        with open(received, "rb") as source:
            left = os.fstat(source.fileno()).st_size - start
            offset = start
            try:
                while left > 0:
                    copied = os.copy_file_range(source.fileno(), f.fileno(), left, offset_src=offset)
                    if copied == 0:
                        break
                    offset += copied
                    left -= copied
            except (AttributeError, OSError):  # no copy_file_range here, or not between these files
                source.seek(offset)
                os.lseek(f.fileno(), len(header) + offset - start, os.SEEK_SET)
                shutil.copyfileobj(source, f, _COPY_CHUNK)

    return write


def checked_instance(received: Path, request: Any, transfer_syntax: str, calling_ae: str,
                     address: str) -> ReceivedInstance | tuple[int, str]:
    """The received dataset as a `ReceivedInstance`, or (failure status, reason)."""
    try:
        start, size = _received_dataset(received)
        header = dcmread(received, stop_before_pixels=True)
        study_uid = str(header.get("StudyInstanceUID", ""))
        series_uid = str(header.get("SeriesInstanceUID", ""))
        sop_uid = str(header.get("SOPInstanceUID", ""))
        sop_class = str(header.get("SOPClassUID", ""))
    except Exception as exc:  # any parse failure means the dataset cannot be understood
        log.info("received dataset cannot be parsed: %s", exc)
        return statuses.CANNOT_UNDERSTAND, "the dataset cannot be parsed (details in the node's log)"
    for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                      ("SOPInstanceUID", sop_uid), ("SOPClassUID", sop_class)):
        if not is_valid_uid(uid):
            return statuses.CANNOT_UNDERSTAND, f"{name} is missing or not a valid UID ({uid[:70]!r})"
    if sop_uid != str(request.AffectedSOPInstanceUID):
        return statuses.CANNOT_UNDERSTAND, "SOPInstanceUID differs from the C-STORE request's"
    if sop_class != str(request.AffectedSOPClassUID):
        return statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID differs from the C-STORE request's"
    return ReceivedInstance(sop_class, sop_uid, study_uid, series_uid, transfer_syntax, calling_ae, header,
                            _part10_writer(part10_header(sop_class, sop_uid, transfer_syntax, calling_ae),
                                           received, start), size, address)


def _uid_or_blank(value: object) -> str:
    """A UID from the request for the audit trail, or "" when it is not one (it may be anything)."""
    text = str(value or "")
    return text if is_valid_uid(text) else ""


def _identity(assoc: Any) -> Identity | None:
    item = assoc.requestor.user_identity
    if item is None:
        return None
    return Identity(int(item.user_identity_type), bytes(item.primary_field or b""),
                    bytes(item.secondary_field or b""), bool(item.positive_response_requested))


class _AfterAnswers:
    """Work left for once an association's answer is on its way (an instance's indexing)."""

    def __init__(self) -> None:
        self._pending: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()

    def defer(self, assoc: Any, work: Callable[[], None]) -> None:
        with self._lock:
            self._pending[id(assoc)] = work

    def run(self, assoc: Any) -> None:
        with self._lock:
            work = self._pending.pop(id(assoc), None)
        if work is not None:
            work()


class NodeServices:
    """The node's answers on an association: `PeerPolicy` decides who is let in, the `InstanceSink`
    keeps what arrives, the `AuditSink` records both."""

    def __init__(self, settings: ReceiverSettings, policy: PeerPolicy, sink: InstanceSink, audit: AuditSink,
                 open_associations: Callable[[], int]):
        self.policy = policy
        self.sink = sink
        self.audit = audit
        self.max_associations = settings.max_associations
        self.network_timeout = settings.network_timeout
        self.partial_folder = partial_folder(settings)
        self.open_associations = open_associations  # of every listener, this one's included
        self.after_answers = _AfterAnswers()

    def handlers(self) -> list[Any]:
        return [(evt.EVT_REQUESTED, self.on_requested), (evt.EVT_C_STORE, self.on_store),
                (evt.EVT_DIMSE_SENT, self.on_sent), (evt.EVT_CONN_CLOSE, self.on_closed)]

    def on_requested(self, event: Event) -> None:
        """Admit or reject the association on its A-ASSOCIATE-RQ; record the verdict."""
        assoc = event.assoc
        request: Any = assoc.requestor.primitive
        calling, called = str(request.calling_ae_title).strip(), str(request.called_ae_title).strip()
        address = peer_address(str(assoc.requestor.address))
        identity = _identity(assoc)
        try:
            refusal = self.policy.refusal(calling, called, address, identity)
            if refusal is None and self.open_associations() > self.max_associations:
                refusal = Refusal(statuses.REJECT_LIMIT_REACHED,
                                  f"the node has its maximum of {self.max_associations} associations open")
        except Exception:  # rather turn one peer away than fail the association's thread
            log.exception("association check failed; rejecting")
            refusal = Refusal(statuses.REJECT_NO_REASON, "internal error while checking the peer")
        try:
            if refusal is None:
                self.audit.record(AuditEventName.ASSOCIATION_ACCEPTED, address=address, calling_ae=calling,
                                  called_ae=called)
            else:
                self.audit.record(AuditEventName.ASSOCIATION_REJECTED, logging.WARNING, address=address,
                                  calling_ae=calling, called_ae=called, detail=refusal.detail)
        except Exception as exc:  # a full disk must not turn away a peer that may echo or get 0xA700 answers
            log.error("association record not written (%s); deciding without it", exc.__class__.__name__)
        if refusal is not None:
            log.warning("association from %s (%s) rejected: %s", calling or "-", address, refusal.detail)
            assoc.acse.send_reject(*refusal.reason)
            assoc.kill()
        elif identity is not None and identity.positive_response_requested:
            answer = UserIdentityNegotiation()  # identity verified: say so (empty for types 1 and 2)
            answer.server_response = b""
            assoc.acceptor.add_negotiation_item(answer)

    def on_store(self, event: Event) -> int | tuple[int, str]:
        """Check, hand to the sink, answer (with the reason for a refusal). Never raises."""
        assoc, request = event.assoc, cast(Any, event.request)
        calling = str(assoc.requestor.ae_title).strip()
        address = peer_address(str(assoc.requestor.address))
        try:
            failure = write_failure(event.dataset_path)
            if failure is not None:
                raise SpoolError(f"cannot write the received dataset: {failure.strerror or failure}")
            checked = checked_instance(event.dataset_path, request, str(event.context.transfer_syntax),
                                       calling, address)
            if isinstance(checked, tuple):
                status, reason = checked
            else:
                self.after_answers.defer(assoc, self.sink.store(checked))
                return statuses.SUCCESS
        except SpoolError as exc:
            status, reason = statuses.OUT_OF_RESOURCES, f"out of resources: {exc}"
        except Exception as exc:
            log.exception("C-STORE failed")
            status, reason = statuses.OUT_OF_RESOURCES, f"internal error: {exc.__class__.__name__}"
        try:
            self.audit.record(AuditEventName.INSTANCE_REFUSED, logging.WARNING, address=address, calling_ae=calling,
                              sop_instance_uid=_uid_or_blank(request.AffectedSOPInstanceUID),
                              detail=f"0x{status:04X}: {reason}")
        except Exception:
            log.exception("refusal not audited")
        return _status_with_comment(status, reason)

    def on_sent(self, event: Event) -> None:
        try:
            self.after_answers.run(event.assoc)
        except Exception:  # the sink's indexing never raises; this keeps pynetdicom's thread alive if it does
            log.exception("indexing after the answer failed")

    def on_closed(self, event: Event) -> None:
        self.on_sent(event)  # an answer that could not be sent: the instance is durable, index it all the same
        removed = remove_abandoned(self.partial_folder, 2 * self.network_timeout)
        if removed:
            log.info("removed %d partial dataset(s) of associations that ended mid-dataset", removed)


def _status_with_comment(status: int, reason: str) -> Any:
    """A status dataset with the reason as its Error Comment (LO: 64 characters)."""
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = reason[:64]
    return answer


def partial_folder(settings: ReceiverSettings) -> Path:
    """Where datasets arrive before they are checked and spooled."""
    return settings.spool_dir / ".receiving"


def application_entity(settings: ReceiverSettings) -> AE:
    """The node's AE: Verification and every storage SOP class with every transfer syntax."""
    ae = AE(settings.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = settings.network_timeout
    ae.maximum_associations = settings.max_associations + 1  # the node decides, on the A-ASSOCIATE-RQ
    ae.require_called_aet = True
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    return ae


@dataclass(frozen=True)
class TlsListener:
    """Where and how the TLS listener runs."""

    port: int
    context: ssl.SSLContext
    handshake_timeout: float


def start_storage_scp(settings: ReceiverSettings, policy: PeerPolicy, sink: InstanceSink, audit: AuditSink,
                      port: int | None, tls: TlsListener | None = None) -> list[NodeAssociationServer]:
    """Start listening in the background: without TLS on `port` (None: not at all) and, with `tls`, on
    its port. `server.shutdown()` stops each; raises `ConfigError` naming the key when a port cannot be bound."""
    _config.LOG_HANDLER_LEVEL = "none"  # the audit trail is the record; pynetdicom's narration stays out
    _config.UNRESTRICTED_STORAGE_SERVICE = settings.accept_any_storage_class
    receive_into(partial_folder(settings))
    ae = application_entity(settings)
    servers: list[NodeAssociationServer] = []
    services = NodeServices(settings, policy, sink, audit,
                            lambda: sum(len(server.active_associations) for server in servers))

    def refused(address: str, why: str) -> None:
        audit.record(AuditEventName.TLS_REFUSED, logging.WARNING, address=address, detail=why)

    listeners: list[tuple[str, int, ssl.SSLContext | None, float]] = []
    if port is not None:
        listeners.append(("node.port", port, None, 0.0))
    if tls is not None:
        listeners.append(("tls.port", tls.port, tls.context, tls.handshake_timeout))
    for key, listen_port, context, handshake_timeout in listeners:
        try:
            server = ae.make_server((settings.bind_address, listen_port), evt_handlers=services.handlers(),
                                    ssl_context=context, server_class=NodeAssociationServer,
                                    handshake_timeout=handshake_timeout, on_tls_refused=refused)
        except OSError as exc:  # the port is taken, or the address is not this host's
            for started in servers:
                started.shutdown()
            raise ConfigError("DICOM listener", [(key, f"cannot listen on {settings.bind_address} port "
                                                       f"{listen_port}: {exc.strerror or exc} (node.bind_address "
                                                       "must be an address of this host, 0.0.0.0 or ::; the port "
                                                       "one no other program uses)")]) from exc
        threading.Thread(target=server.serve_forever, name=f"listener:{server.server_address[1]}",
                         daemon=True).start()
        servers.append(cast(NodeAssociationServer, server))
        log.info("%s listening on %s:%d%s", settings.ae_title, *server.server_address[:2], " (TLS)" if context else "")
    return servers
