"""One association, accepted and served on its connection's thread (PS3.8's acceptor side).

The A-ASSOCIATE-RQ is read within the network timeout, admitted or rejected, and answered; then every
P-DATA-TF is read straight off the socket, its PDVs assembled into a DIMSE message, and the message
handed to the `Services` and answered, until the peer releases or aborts, goes quiet for the network
timeout, or breaks the protocol (then it is aborted). One message at a time: this acceptor does not
negotiate asynchronous operations, so a requestor waits for each answer.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple, Protocol

from scp import dimse, pdu, statuses
from scp.dimse import Command
from scp.pdu import AssociateRequest, ContextResult, Implementation, ProposedContext, ProtocolError

log = logging.getLogger(__name__)

Rejection = tuple[int, int, int]  # (result, source, reason) of an A-ASSOCIATE-RJ
_LARGEST_READ = 4 << 20  # a PDU longer than this is read in parts: memory follows what arrives
_LARGEST_ASSOCIATE_RQ = 1 << 20
VERIFICATION = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class StoreRequest:
    """A complete C-STORE request as it arrived: the dataset's bytes are untouched."""

    command: Command
    dataset: bytes
    transfer_syntax: str
    calling_ae: str
    address: str


class Answer(NamedTuple):
    """A request's status and error comment, and what is done once the answer is sent."""

    status: int
    comment: str = ""
    then: Callable[[], None] | None = None  # never raises; runs even when the answer cannot be sent


class Services(Protocol):
    """What the node does with an association: who is let in, and where instances go."""

    def rejection(self, request: AssociateRequest, address: str) -> Rejection | None:
        """Why the association must be rejected (after recording it), or None to accept it."""

    def store(self, request: StoreRequest) -> Answer:
        """Store one instance; its status, an error comment for a failure, and the work left for after
        the answer. Never raises."""


@dataclass(frozen=True)
class Negotiation:
    """What the acceptor offers: the abstract and transfer syntaxes it accepts, who it says it is,
    and how long it waits."""

    abstract_syntaxes: frozenset[str]
    transfer_syntaxes: frozenset[str]
    implementation: Implementation
    network_timeout: float  # for the A-ASSOCIATE-RQ after connecting, then between PDUs

    def answer(self, context: ProposedContext) -> ContextResult:
        """Accept the requestor's first transfer syntax that is offered here."""
        if context.abstract_syntax not in self.abstract_syntaxes:
            return ContextResult(context.id, pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED, context.transfer_syntaxes[0])
        for syntax in context.transfer_syntaxes:
            if syntax in self.transfer_syntaxes:
                return ContextResult(context.id, pdu.ACCEPTED, syntax)
        return ContextResult(context.id, pdu.TRANSFER_SYNTAXES_NOT_SUPPORTED, context.transfer_syntaxes[0])


class PeerClosed(Exception):
    """The peer closed the connection or aborted the association."""


class Association:
    """An accepted connection; `run` serves it to its end, `abort` ends it from another thread."""

    def __init__(self, sock: socket.socket, address: str, negotiation: Negotiation, services: Services,
                 admit: Callable[[Association], bool]):
        self.sock = sock
        self.address = address
        self.negotiation = negotiation
        self.services = services
        self.admit = admit  # takes one of the node's association slots; False when all are taken
        self.calling_ae = ""
        self.established = False  # the A-ASSOCIATE-AC was sent
        self.peer_max_length = 0
        self._reader: BinaryIO = sock.makefile("rb")
        self._send_lock = threading.Lock()
        self._accepted: dict[int, tuple[str, str]] = {}  # context ID -> (abstract syntax, transfer syntax)

    def run(self) -> None:
        """Negotiate, then serve messages until the association ends. Never raises."""
        try:
            self.sock.settimeout(self.negotiation.network_timeout)
            if self._negotiate():
                self._serve()
        except ProtocolError as exc:
            log.warning("association with %s (%s) aborted: %s", self.calling_ae or "-", self.address, exc)
            self._send_quietly(pdu.abort(*pdu.ABORT_INVALID_PARAMETER))
        except TimeoutError:
            log.warning("association with %s (%s) aborted: nothing received for %.0fs", self.calling_ae or "-",
                        self.address, self.negotiation.network_timeout)
            if self.established:  # before the A-ASSOCIATE-AC there is nothing to abort: the connection closes
                self._send_quietly(pdu.abort(*pdu.ABORT_BY_PROVIDER))
        except PeerClosed as exc:
            log.info("association with %s (%s) ended: %s", self.calling_ae or "-", self.address, exc)
        except OSError as exc:
            log.info("association with %s (%s) ended: %s", self.calling_ae or "-", self.address,
                     exc.strerror or exc.__class__.__name__)
        finally:
            self._reader.close()

    def abort(self) -> None:
        """Send an A-ABORT and close the connection; `run` then ends on its thread."""
        self._send_quietly(pdu.abort(*pdu.ABORT_BY_USER))
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _negotiate(self) -> bool:
        kind, body = self._read_pdu(_LARGEST_ASSOCIATE_RQ)
        if kind != pdu.ASSOCIATE_RQ:
            raise ProtocolError(f"expected an A-ASSOCIATE-RQ, got PDU type {kind}")
        request = pdu.parse_associate_rq(body)
        self.calling_ae = request.calling_ae
        rejection = self._rejection(request)
        if rejection is not None:
            self._send(pdu.associate_rj(*rejection))
            return False
        results = [self.negotiation.answer(context) for context in request.contexts]
        proposed = {context.id: context for context in request.contexts}
        self._accepted = {r.id: (proposed[r.id].abstract_syntax, r.transfer_syntax)
                          for r in results if r.result == pdu.ACCEPTED}
        self.peer_max_length = request.max_length
        self._send(pdu.associate_ac(request, results, self.negotiation.implementation))
        self.established = True
        return True

    def _rejection(self, request: AssociateRequest) -> Rejection | None:
        who = f"association from {request.calling_ae or '-'} ({self.address}) rejected"
        if not request.protocol_version & 1:
            log.warning("%s: protocol version %d is not supported", who, request.protocol_version)
            return statuses.REJECT_PROTOCOL_VERSION
        if request.application_context != pdu.APPLICATION_CONTEXT:
            log.warning("%s: application context %s is not DICOM's", who, request.application_context)
            return statuses.REJECT_APPLICATION_CONTEXT
        if not self.admit(self):  # the slot, when taken, is given back when the connection ends
            log.warning("%s: the node has its maximum of associations open", who)
            return statuses.REJECT_LIMIT_REACHED
        return self.services.rejection(request, self.address)

    def _serve(self) -> None:
        message = _Message()
        while True:
            kind, body = self._read_pdu()
            if kind == pdu.P_DATA_TF:
                for context_id, control, value in _pdvs(body):
                    if context_id not in self._accepted:
                        raise ProtocolError(f"data on presentation context {context_id}, which was not accepted")
                    if message.add(context_id, control, value):
                        self._answer(message)
                        message = _Message()
            elif kind == pdu.RELEASE_RQ:
                self._send(pdu.release_rp())
                return
            elif kind == pdu.ABORT:
                raise PeerClosed("the peer aborted it")
            else:
                raise ProtocolError(f"unexpected PDU type {kind} in an established association")

    def _answer(self, message: _Message) -> None:
        command = message.command
        assert command is not None  # a message is complete only with its command
        abstract_syntax, transfer_syntax = self._accepted[message.context_id]
        if command.field & dimse.RESPONSE_BIT or command.field == dimse.C_CANCEL_RQ:
            return  # nothing this acceptor asked for, nothing it can cancel
        if command.field == dimse.C_ECHO_RQ:
            answer = Answer(statuses.SUCCESS)
        elif command.field != dimse.C_STORE_RQ:
            answer = Answer(statuses.UNRECOGNISED_OPERATION, "only C-ECHO and C-STORE are performed here")
        elif command.sop_class_uid != abstract_syntax or not command.has_dataset:
            answer = Answer(statuses.SOP_CLASS_NOT_SUPPORTED, "the SOP class is not the presentation context's")
        else:
            answer = self.services.store(StoreRequest(
                command, b"".join(message.data), transfer_syntax, self.calling_ae, self.address))
        try:
            self._send(pdu.p_data(message.context_id, True,
                                  dimse.encode_response(command, answer.status, answer.comment), self.peer_max_length))
        finally:
            if answer.then is not None:  # while the requestor reads the answer and readies its next message
                answer.then()

    def _read_pdu(self, largest: int = 0) -> tuple[int, bytes]:
        """The next PDU's type and body; `largest` (not 0) bounds the body's length."""
        # acknowledge what arrives at once: a sender with Nagle's algorithm on (DCMTK's as it comes)
        # holds back the tail of each message until its earlier segments are acknowledged
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        header = self._read(pdu.PDU_HEADER.size)
        kind, length = pdu.PDU_HEADER.unpack(header)
        if largest and length > largest:
            raise ProtocolError(f"PDU type {kind} of {length} bytes is longer than {largest}")
        limit = self.negotiation.implementation.max_length
        if kind == pdu.P_DATA_TF and limit and length > limit:
            raise ProtocolError(f"a P-DATA-TF of {length} bytes exceeds the negotiated maximum of {limit}")
        return kind, self._read(length)

    def _read(self, size: int) -> bytes:
        if size <= _LARGEST_READ:
            data = self._reader.read(size)
        else:
            parts, left = [], size
            while left:
                part = self._reader.read(min(left, _LARGEST_READ))
                if not part:
                    break
                parts.append(part)
                left -= len(part)
            data = b"".join(parts)
        if len(data) < size:
            raise PeerClosed("the peer closed the connection")
        return data

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def _send_quietly(self, data: bytes) -> None:
        try:
            self._send(data)
        except OSError:
            pass


class _Message:
    """A DIMSE message being assembled from PDVs: its command set, then its dataset if it has one."""

    def __init__(self) -> None:
        self.context_id = 0
        self.command: Command | None = None
        self.data: list[memoryview] = []
        self._command_parts: list[memoryview] = []

    def add(self, context_id: int, control: int, value: memoryview) -> bool:
        """Take one PDV; True when the message is complete."""
        is_command, is_last = bool(control & 1), bool(control & 2)
        if self.context_id and context_id != self.context_id:
            raise ProtocolError("a message's fragments arrived on two presentation contexts")
        self.context_id = context_id
        if is_command:
            if self.command is not None:
                raise ProtocolError("a command fragment arrived after the command was complete")
            self._command_parts.append(value)
            if not is_last:
                return False
            self.command = dimse.parse_command(b"".join(self._command_parts))
            return not self.command.has_dataset
        if self.command is None or not self.command.has_dataset:
            raise ProtocolError("a dataset fragment arrived without a command that announces one")
        self.data.append(value)
        return is_last


def _pdvs(body: bytes) -> list[tuple[int, int, memoryview]]:
    """The (context ID, message control header, value) of each PDV in a P-DATA-TF's body."""
    view = memoryview(body)
    pdvs, position = [], 0
    while position < len(body):
        if position + pdu.PDV_HEADER.size > len(body):
            raise ProtocolError("a PDV's header runs past the end of its P-DATA-TF")
        length, context_id, control = pdu.PDV_HEADER.unpack_from(body, position)
        end = position + 4 + length
        if length < 2 or end > len(body):
            raise ProtocolError("a PDV's length does not fit its P-DATA-TF")
        pdvs.append((context_id, control, view[position + pdu.PDV_HEADER.size:end]))
        position = end
    return pdvs
