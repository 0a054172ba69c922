"""The DICOM Upper Layer's PDUs (PS3.8 section 9.3), decoded and encoded: what the Storage SCP reads
from and writes to an association's socket.

Only what an acceptor needs: the A-ASSOCIATE-RQ is decoded whole; the answers (A-ASSOCIATE-AC and
-RJ, A-RELEASE-RP, A-ABORT) and the P-DATA-TF of a response are encoded. Extended negotiation items
that a requestor proposes (role selection, asynchronous operations, user identity) are read past
and not answered, which PS3.7 and PS3.8 take as their defaults.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = 1, 2, 3, 4, 5, 6, 7
PDU_HEADER = struct.Struct(">BxI")  # type, reserved, length of what follows
PDV_HEADER = struct.Struct(">IBB")  # item length, presentation context ID, message control header
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# Presentation context results, PS3.8 9.3.3.2
ACCEPTED, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4
# A-ABORT (source, reason), PS3.8 9.3.8: from the service provider, for an unexpected or unreadable PDU
ABORT_BY_PROVIDER = (2, 0)
ABORT_INVALID_PARAMETER = (2, 6)
ABORT_BY_USER = (0, 0)

_ITEM = struct.Struct(">BxH")  # item type, reserved, item length


class ProtocolError(Exception):
    """The peer sent something PS3.8 does not allow; the association is aborted."""


@dataclass(frozen=True)
class ProposedContext:
    """A presentation context of an A-ASSOCIATE-RQ."""

    id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class AssociateRequest:
    """The parts of an A-ASSOCIATE-RQ the acceptor acts on; `raw_aes` goes back in the AC as received."""

    protocol_version: int
    called_ae: str
    calling_ae: str
    raw_aes: bytes
    application_context: str
    contexts: tuple[ProposedContext, ...]
    max_length: int = 0  # the most the requestor takes in one P-DATA-TF; 0: no limit


@dataclass(frozen=True)
class ContextResult:
    """The acceptor's answer to one proposed presentation context."""

    id: int
    result: int
    transfer_syntax: str = ""


@dataclass(frozen=True)
class Implementation:
    """Who the acceptor says it is in its A-ASSOCIATE-AC."""

    class_uid: str
    version: str
    max_length: int  # the most this acceptor takes in one P-DATA-TF; 0: no limit


def _text(raw: bytes) -> str:
    """A UID or AE title as sent: ASCII (anything else replaced), padding removed."""
    return raw.decode("ascii", "replace").strip(" \x00")


def _items(body: bytes | memoryview, start: int) -> list[tuple[int, bytes]]:
    """The (type, value) items from `start` to the end of `body`."""
    items = []
    position = start
    while position < len(body):
        if position + _ITEM.size > len(body):
            raise ProtocolError("an item's header runs past the end of its PDU")
        kind, length = _ITEM.unpack_from(body, position)
        position += _ITEM.size
        if position + length > len(body):
            raise ProtocolError(f"item 0x{kind:02X} runs past the end of its PDU")
        items.append((kind, bytes(body[position:position + length])))
        position += length
    return items


def _proposed_context(value: bytes) -> ProposedContext:
    if len(value) < 4:
        raise ProtocolError("a presentation context item is too short")
    abstract, syntaxes = "", []
    for kind, sub in _items(value, 4):
        if kind == 0x30:
            abstract = _text(sub)
        elif kind == 0x40:
            syntaxes.append(_text(sub))
    if not abstract or not syntaxes:
        raise ProtocolError(f"presentation context {value[0]} lacks an abstract syntax or transfer syntax")
    return ProposedContext(value[0], abstract, tuple(syntaxes))


def parse_associate_rq(body: bytes) -> AssociateRequest:
    """Decode the variable part of an A-ASSOCIATE-RQ (what follows its 6-byte PDU header)."""
    if len(body) < 68:
        raise ProtocolError("A-ASSOCIATE-RQ is shorter than its fixed fields")
    (version,) = struct.unpack_from(">H", body, 0)
    application_context, contexts = "", []
    max_length = 0
    for kind, value in _items(body, 68):
        if kind == 0x10:
            application_context = _text(value)
        elif kind == 0x20:
            contexts.append(_proposed_context(value))
        elif kind == 0x50:
            for sub_kind, sub in _items(value, 0):
                if sub_kind == 0x51 and len(sub) == 4:
                    (max_length,) = struct.unpack(">I", sub)
    return AssociateRequest(version, _text(body[4:20]), _text(body[20:36]), bytes(body[4:36]),
                            application_context, tuple(contexts), max_length)


def _item(kind: int, value: bytes) -> bytes:
    return _ITEM.pack(kind, len(value)) + value


def _pdu(kind: int, body: bytes) -> bytes:
    return PDU_HEADER.pack(kind, len(body)) + body


def associate_ac(request: AssociateRequest, results: list[ContextResult], us: Implementation) -> bytes:
    """The A-ASSOCIATE-AC answering `request` with `results`, one per proposed context."""
    contexts = b"".join(
        _item(0x21, struct.pack(">BxBx", r.id, r.result) + _item(0x40, r.transfer_syntax.encode("ascii")))
        for r in results)
    user = (_item(0x51, struct.pack(">I", us.max_length)) + _item(0x52, us.class_uid.encode("ascii"))
            + _item(0x55, us.version.encode("ascii")))
    body = (struct.pack(">H2x", 1) + request.raw_aes + bytes(32) + _item(0x10, APPLICATION_CONTEXT.encode("ascii"))
            + contexts + _item(0x50, user))
    return _pdu(ASSOCIATE_AC, body)


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    return _pdu(ASSOCIATE_RJ, struct.pack(">xBBB", result, source, reason))


def release_rp() -> bytes:
    return _pdu(RELEASE_RP, bytes(4))


def abort(source: int, reason: int) -> bytes:
    """An A-ABORT (PS3.8 9.3.8)."""
    return _pdu(ABORT, struct.pack(">xxBB", source, reason))


def p_data(context_id: int, is_command: bool, message: bytes, max_length: int) -> bytes:
    """`message` as P-DATA-TF PDUs of one PDV each, none longer than `max_length` (0: no limit)."""
    room = max_length - PDV_HEADER.size if max_length else len(message) or 1
    if room < 1:
        raise ProtocolError(f"the peer's maximum PDU length {max_length} leaves no room for data")
    pdus = []
    for start in range(0, max(len(message), 1), room):
        chunk = message[start:start + room]
        control = int(is_command) | (2 if start + room >= len(message) else 0)
        pdus.append(_pdu(P_DATA_TF, PDV_HEADER.pack(len(chunk) + 2, context_id, control) + chunk))
    return b"".join(pdus)
