"""DIMSE command sets (PS3.7 section 9 and annex E): a request's decoded, a response encoded.

A command set is group 0000 in Implicit VR Little Endian. Only the elements the Storage SCP acts
on are kept from a request; a response is encoded element by element, a few microseconds each.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from scp.pdu import ProtocolError

C_STORE_RQ, C_ECHO_RQ, C_CANCEL_RQ = 0x0001, 0x0030, 0x0FFF
RESPONSE_BIT = 0x8000
NO_DATASET = 0x0101
_ELEMENT = struct.Struct("<HHI")  # group, element, value length
_US = struct.Struct("<H")
_ERROR_COMMENT_MAX = 64


@dataclass(frozen=True)
class Command:
    """The elements of a request's command set that decide what is done and how it is answered."""

    field: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    has_dataset: bool


def parse_command(data: bytes) -> Command:
    """Decode a request's command set; `ProtocolError` when it is not one."""
    values: dict[int, bytes] = {}
    position = 0
    while position < len(data):
        if position + _ELEMENT.size > len(data):
            raise ProtocolError("command set: an element header runs past its end")
        group, element, length = _ELEMENT.unpack_from(data, position)
        position += _ELEMENT.size
        if group != 0 or position + length > len(data):
            raise ProtocolError(f"command set: element ({group:04X},{element:04X}) is not a command element "
                                "or runs past its end")
        values[element] = data[position:position + length]
        position += length

    def number(element: int, name: str) -> int:
        raw = values.get(element)
        if raw is None or len(raw) != 2:
            raise ProtocolError(f"command set: {name} is missing or not 2 bytes")
        return int(_US.unpack(raw)[0])

    def uid(element: int) -> str:
        return values.get(element, b"").decode("ascii", "replace").strip(" \x00")

    return Command(number(0x0100, "Command Field"), number(0x0110, "Message ID"), uid(0x0002), uid(0x1000),
                   number(0x0800, "Command Data Set Type") != NO_DATASET)


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0, element, len(value)) + value


def _uid(text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def _comment(text: str) -> bytes:
    """An Error Comment (LO): at most 64 characters, no backslash, padded with a space."""
    raw = text.replace("\\", "/").encode("ascii", "replace")[:_ERROR_COMMENT_MAX]
    return raw + b" " if len(raw) % 2 else raw


def encode_response(request: Command, status: int, comment: str = "") -> bytes:
    """The response's command set to `request`: its SOP class and instance, its message ID, `status`
    and, when given (for a failure), an Error Comment."""
    elements = [_element(0x0002, _uid(request.sop_class_uid)),
                _element(0x0100, _US.pack(request.field | RESPONSE_BIT)),
                _element(0x0120, _US.pack(request.message_id)),
                _element(0x0800, _US.pack(NO_DATASET)),
                _element(0x0900, _US.pack(status))]
    if comment:
        elements.append(_element(0x0902, _comment(comment)))
    if request.sop_instance_uid:
        elements.append(_element(0x1000, _uid(request.sop_instance_uid)))
    body = b"".join(elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body
