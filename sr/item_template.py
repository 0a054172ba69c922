"""Many SR content items of one shape, encoded from one template: pydicom's bytes, without a dataset each.

A 300-slice CT report holds 300 per-image measurement groups of about 95 elements that differ in a
handful of values (label, tracking UID, referenced image, score, Yes/No). Building each with highdicom
and writing it with pydicom costs about 5 ms a group. An `ItemTemplate` encodes one item, whose
differing values are sentinels, once into fixed bytes and holes; every further item is those bytes
with the holes filled and the lengths of the items and sequences around them recomputed. The result
is the Explicit VR Little Endian encoding pydicom writes for the same item (`tests/test_sr.py`
compares them byte for byte, and `CheckedTemplates` checks the first item of each shape in every
report the same way before it uses a template).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_sequence_item
from pydicom.tag import BaseTag, ItemTag, Tag

log = logging.getLogger(__name__)
_ITEM = struct.pack("<HH", ItemTag.group, ItemTag.element)
_CONTENT_SEQUENCE = Tag("ContentSequence")
V = TypeVar("V")


@dataclass(frozen=True)
class Hole:
    """A leaf element whose value differs per item; `key` names the value in `ItemTemplate.render`."""

    key: str
    tag: BaseTag
    vr: str


@dataclass(frozen=True)
class _Block:
    """An item or a sequence: its header, then a 4-byte length of its parts, then the parts."""

    header: bytes
    parts: tuple[_Part, ...]


_Part = bytes | Hole | _Block


@dataclass(frozen=True)
class Sentinel:
    """A value that marks a hole in the template item: elements of `vr` whose value equals `value`."""

    key: str
    vr: str
    value: Any


def _new_buffer() -> DicomBytesIO:
    """A buffer that pydicom writes in Explicit VR Little Endian."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    return buffer


def encode_items(items: Sequence[Dataset], encodings: list[str]) -> bytes:
    """Sequence items as pydicom writes them (item tag, length, dataset)."""
    buffer = _new_buffer()
    for item in items:
        write_sequence_item(buffer, item, encodings)
    return bytes(buffer.getvalue())


def mark_encoded(ds: Dataset) -> None:
    """Tell pydicom that `ds` is Explicit VR Little Endian already, so that it writes its raw elements as
    they are (a dataset it did not read is otherwise re-parsed, element by element, for VR checks)."""
    ds.set_original_encoding(False, True, getattr(ds, "_character_set", None))


def insert_items(container: Dataset, index: int, encoded: bytes, encodings: list[str]) -> None:
    """Put encoded items into `container`'s Content Sequence before position `index`.

    The sequence is kept as its encoded bytes (a raw element, as if read from a file): pydicom writes
    them as they are and parses them only if they are read."""
    items = list(container.ContentSequence)
    value = encode_items(items[:index], encodings) + encoded + encode_items(items[index:], encodings)
    container[_CONTENT_SEQUENCE] = RawDataElement(_CONTENT_SEQUENCE, "SQ", len(value), value, 0, False, True)
    mark_encoded(container)


class ItemTemplate:
    """One sequence item's encoding with holes where `sentinels` matched; `render` fills them."""

    def __init__(self, item: Dataset, sentinels: Sequence[Sentinel], encodings: list[str]) -> None:
        self._encodings = encodings
        self._sentinels = list(sentinels)
        self.holes: list[Hole] = []
        self._root = _Block(_ITEM, self._parts(item))
        missing = {s.key for s in self._sentinels} - {h.key for h in self.holes}
        if missing:
            raise ValueError(f"template item has no element for {sorted(missing)}")

    def render(self, values: Mapping[str, Any]) -> bytes:
        """The item's bytes with every hole's value from `values` (by key)."""
        return self._render(self._root, values)

    def _parts(self, ds: Dataset) -> tuple[_Part, ...]:
        parts: list[_Part] = []
        for tag in sorted(ds.keys()):
            if tag.element == 0 and tag.group > 6:
                continue  # group lengths: pydicom does not write them either
            elem = ds[tag]
            if elem.VR == "SQ":
                header = struct.pack("<HH", tag.group, tag.element) + b"SQ\x00\x00"
                parts.append(_Block(header, tuple(_Block(_ITEM, self._parts(i)) for i in elem.value)))
                continue
            hole = self._hole(elem)
            if hole is not None:
                self.holes.append(hole)
                parts.append(hole)
            else:
                parts.append(self._leaf(elem))
        return tuple(parts)

    def _hole(self, elem: DataElement) -> Hole | None:
        for sentinel in self._sentinels:
            if elem.VR == sentinel.vr and elem.value == sentinel.value:
                return Hole(sentinel.key, elem.tag, elem.VR)
        return None

    def _leaf(self, elem: DataElement) -> bytes:
        buffer = _new_buffer()
        write_data_element(buffer, elem, self._encodings)
        return bytes(buffer.getvalue())

    def _render(self, block: _Block, values: Mapping[str, Any]) -> bytes:
        body = b"".join(part if isinstance(part, bytes)
                        else self._leaf(DataElement(part.tag, part.vr, values[part.key])) if isinstance(part, Hole)
                        else self._render(part, values)
                        for part in block.parts)
        return block.header + struct.pack("<I", len(body)) + body


class CheckedTemplates(Generic[V]):
    """Items of one kind, each made from a value `V`, encoded from one template per shape.

    The first item of each shape is also encoded the usual way (`usual`: highdicom and pydicom); the
    template's rendering must equal it, or that shape is encoded the usual way from then on."""

    def __init__(self, what: str, shape_of: Callable[[V], Hashable], usual: Callable[[V], bytes],
                 template_for: Callable[[Hashable], ItemTemplate], holes_of: Callable[[V], Mapping[str, Any]]
                 ) -> None:
        self._what = what
        self._shape_of, self._usual, self._template_for, self._holes_of = shape_of, usual, template_for, holes_of
        self._templates: dict[Hashable, ItemTemplate | None] = {}  # None: the usual way

    def encode(self, value: V) -> bytes:
        shape = self._shape_of(value)
        if shape in self._templates:
            known = self._templates[shape]
            return self._usual(value) if known is None else known.render(self._holes_of(value))
        expected = self._usual(value)
        template: ItemTemplate | None
        try:
            template = self._template_for(shape)
        except ValueError:  # a sentinel matched no element
            template = None
        if template is None or template.render(self._holes_of(value)) != expected:
            log.warning("%s (%s) differ from highdicom's; they are built one by one", self._what, shape)
            template = None
        self._templates[shape] = template
        return expected
