"""A dataset's stored pixel values, one 2-D array per frame.

Uncompressed little-endian data is read straight from the element's bytes (no copy, no decoder), or,
for a file read with `read_image`, mapped from the file without being read at all; everything else,
and native data whose unused high bits are not clear, goes through pydicom's decoders, which mask
those bits. All give the same numbers."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from core.errors import NotEvaluable

_NATIVE_LITTLE_ENDIAN = (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
# (Bits Allocated, Pixel Representation) -> the stored values' type
_NATIVE_TYPES: dict[tuple[int, int], np.dtype] = {
    (8, 0): np.dtype("u1"), (8, 1): np.dtype("i1"), (16, 0): np.dtype("<u2"), (16, 1): np.dtype("<i2"),
}

MAPPED_FROM = 1 << 20  # values of this many bytes or more stay in the file until used (pixel data)


def read_image(path: Path) -> Dataset:
    """A DICOM file read for preparing: the header parsed, large values (the pixel data) left in the
    file, where `stored_frames` maps uncompressed pixels from instead of copying them (half a
    millisecond less per radiograph, and no second copy in memory)."""
    return dcmread(path, defer_size=MAPPED_FROM)


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def keep_header_only(ds: Dataset) -> None:
    """Remove the pixel data and any value `read_image` left in the file: what is kept of an image
    after preparing it takes little memory and never reads its file again."""
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds:
            del ds[keyword]
    for tag in list(ds.keys()):
        element = ds.get_item(tag, keep_deferred=True)
        if isinstance(element, RawDataElement) and element.value is None:
            del ds[tag]


def stored_frames(ds: Dataset) -> np.ndarray:
    """Stored values as (frames, rows, columns); `NotEvaluable` when the pixel data cannot be decoded."""
    native = native_frames(ds)
    if native is not None:
        return native
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types; the reason is what users need
        raise NotEvaluable(f"pixel data cannot be decoded: {exc}") from exc
    if int(ds.get("NumberOfFrames", 1) or 1) == 1 and pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if pixels.ndim != 3:
        raise NotEvaluable(f"unexpected pixel array shape {pixels.shape}")
    return pixels


def native_frames(ds: Dataset) -> np.ndarray | None:
    """A read-only view of uncompressed little-endian 8- or 16-bit pixel data, or None where only
    pydicom's decoders give the right values (other encodings, short data, set bits above Bits Stored)."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax not in _NATIVE_LITTLE_ENDIAN or "PixelData" not in ds:
        return None
    try:
        allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
        dtype = _NATIVE_TYPES.get((allocated, int(ds.PixelRepresentation)))
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        high_bit = int(ds.HighBit)
    except (AttributeError, TypeError, ValueError):
        return None
    if dtype is None or high_bit != stored - 1 or not 0 < stored <= allocated:
        return None
    data = _pixel_bytes(ds)
    if data is None:
        return None
    count = rows * columns * frames
    if rows < 1 or columns < 1 or frames < 1 or len(data) < count * dtype.itemsize:
        return None
    pixels = np.frombuffer(data, dtype=dtype, count=count).reshape(frames, rows, columns)
    return pixels if stored == allocated or _within_stored_bits(pixels, stored) else None


def _pixel_bytes(ds: Dataset) -> bytes | memoryview | None:
    """The Pixel Data element's value: mapped from the file when the read left it there."""
    element = ds.get_item("PixelData", keep_deferred=True)
    if isinstance(element, RawDataElement) and element.value is None:
        return _mapped(ds, element)
    data = ds.PixelData
    return data if isinstance(data, bytes) else None


def _mapped(ds: Dataset, element: RawDataElement) -> memoryview | None:
    """A value left in the file, mapped read-only; None unless the file is still the one whose header
    was read (same modification time, long enough), so pydicom's own deferred read then decides."""
    filename, start = getattr(ds, "filename", None), element.value_tell
    if not isinstance(filename, str) or start is None:
        return None
    try:
        with open(filename, "rb") as file:
            info = os.fstat(file.fileno())
            if info.st_mtime != getattr(ds, "timestamp", None) or info.st_size < start + element.length:
                return None
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    return memoryview(mapped)[start:start + element.length]


def _within_stored_bits(pixels: np.ndarray, stored: int) -> bool:
    """True when every value already is what its low `stored` bits mean (nothing to mask or sign-extend)."""
    if pixels.dtype.kind == "u":
        return int(pixels.max()) < 1 << stored
    return -(1 << (stored - 1)) <= int(pixels.min()) and int(pixels.max()) < 1 << (stored - 1)
