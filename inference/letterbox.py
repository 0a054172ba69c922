"""Resizing into the model's square input: aspect kept, the longer side fills it, zero padding around.

A large image is first box-averaged by a whole factor down to at least REDUCING_GAP times the
input, then resized with an antialiasing bilinear filter: nearly what the filter gives on the full
image, at a fraction of the work (a 2,000 x 2,000 radiograph into 160 pixels: a 6 x 6 box first).
Box averaging is linear, so a linear step (rescale, window) may run before or after it."""

from __future__ import annotations

from types import ModuleType

import numpy as np
from PIL import Image


def _compiled_module() -> ModuleType | None:
    """`inference._clipped_box`, compiled at install where a C compiler is found (setup.py); None
    without it, and numpy does the same work."""
    try:
        from inference import _clipped_box
    except ImportError:
        return None
    return _clipped_box


_clipped_box = _compiled_module()

REDUCING_GAP = 2.0
MAX_COMPILED_FACTOR = 32768  # 65,535 x 32,768 still fits the compiled module's 32-bit row sums
_COMPILED_TYPES = {np.dtype(np.uint8): "B", np.dtype(np.int8): "b", np.dtype(np.uint16): "H", np.dtype(np.int16): "h"}


def letterbox_geometry(source_shape: tuple[int, int], size: int) -> tuple[float, int, int]:
    """(scale, top, left): source pixel (r, c) lands at (top + r*scale, left + c*scale)."""
    h, w = source_shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return scale, (size - nh) // 2, (size - nw) // 2


def reduction_factor(source_shape: tuple[int, int], size: int) -> int:
    """The whole factor an image of `source_shape` is box-averaged by before the final resize."""
    return max(1, int(max(source_shape) / size / REDUCING_GAP))


def reduced(image: np.ndarray, factor: int) -> np.ndarray:
    """A 2-D image box-averaged by `factor` (edge boxes average what they hold), as a new float32 array."""
    if factor == 1:
        return np.array(image, dtype=np.float32)
    return np.array(_float_image(image).reduce(factor))


def clipped_box_means(image: np.ndarray, factor: int, low: int, high: int) -> np.ndarray:
    """`reduced(np.clip(image, low, high), factor)` for integer images, summed exactly in integers.
    8- and 16-bit images go through the compiled one-pass version where it is built, others (and every
    image without it) through `numpy_clipped_box_means`; both give the same bits."""
    if factor == 1:
        return np.clip(image, low, high).astype(np.float32)
    code = _COMPILED_TYPES.get(image.dtype)
    if _clipped_box is None or code is None or not _compiled_route_takes(image, factor, low, high):
        return numpy_clipped_box_means(image, factor, low, high)
    h, w = image.shape
    means = np.empty((-(-h // factor), -(-w // factor)), np.float32)
    _clipped_box.clipped_box_means(image, h, w, code, factor, low, high, means)
    return means


def _compiled_route_takes(image: np.ndarray, factor: int, low: int, high: int) -> bool:
    """Whether the compiled module sums this 8- or 16-bit image: C-ordered, a window within its type's
    range, and a factor whose 32-bit row sums cannot overflow."""
    info = np.iinfo(image.dtype)
    return image.flags.c_contiguous and info.min <= low <= high <= info.max and factor <= MAX_COMPILED_FACTOR


def compiled_box_means_built() -> bool:
    """Whether the install compiled `inference._clipped_box` (the fast route of `clipped_box_means`)."""
    return _clipped_box is not None


def numpy_clipped_box_means(image: np.ndarray, factor: int, low: int, high: int) -> np.ndarray:
    """`clipped_box_means` in numpy: first each box column's `factor` rows (in 16 bits where the clipped
    values allow), then the columns. No full-size clipped or float copy."""
    h, w = image.shape
    rows, cols = -(-h // factor), -(-w // factor)
    largest = max(abs(low), abs(high))
    row_sums = np.empty((rows, w), _integer_holding(largest * factor, signed=image.dtype.kind == "i"))
    np.clip(image[0::factor], low, high, out=row_sums)
    clipped = np.empty((rows, w), image.dtype)
    for phase in range(1, factor):
        part = image[phase::factor]
        n = part.shape[0]
        np.clip(part, low, high, out=clipped[:n])
        row_sums[:n] += clipped[:n]
    sums = row_sums[:, 0::factor].astype(_integer_holding(largest * factor * factor, signed=True))
    for phase in range(1, factor):
        part = row_sums[:, phase::factor]
        sums[:, :part.shape[1]] += part
    means = sums.astype(np.float32)
    means /= np.outer(_box_sizes(h, factor, rows), _box_sizes(w, factor, cols))
    return means


def _integer_holding(largest: int, signed: bool) -> type[np.integer]:
    """The narrowest of 16, 32 and 64 bits whose integers reach `largest` (and its negative if `signed`)."""
    if largest <= (32767 if signed else 65535):
        return np.int16 if signed else np.uint16
    return np.int32 if largest <= 2**31 - 1 else np.int64


def _box_sizes(length: int, factor: int, boxes: int) -> np.ndarray:
    """How many pixels each box holds along one axis (the last may be short)."""
    sizes = np.full(boxes, factor, np.float32)
    sizes[-1] = length - (boxes - 1) * factor
    return sizes


def into_square(small: np.ndarray, factor: int, source_shape: tuple[int, int], size: int) -> np.ndarray:
    """The `reduced` image of a `source_shape` image resized into the centre of a zero square of
    side `size`, values clipped to [0, 1]."""
    h, w = source_shape
    scale, top, left = letterbox_geometry(source_shape, size)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = _float_image(small).resize((nw, nh), Image.Resampling.BILINEAR, box=(0, 0, w / factor, h / factor))
    out = np.zeros((size, size), dtype=np.float32)
    out[top:top + nh, left:left + nw] = np.clip(np.asarray(resized), 0.0, 1.0)
    return out


def fit_to_square(image: np.ndarray, size: int) -> np.ndarray:
    """A [0, 1] image (or mask) letterboxed into the model's square input."""
    factor = reduction_factor(image.shape, size)  # type: ignore[arg-type]
    return into_square(reduced(image, factor), factor, image.shape, size)  # type: ignore[arg-type]


def _float_image(image: np.ndarray) -> Image.Image:
    """A 32-bit float PIL image of a 2-D array; 8- and 16-bit unsigned data convert inside PIL (faster)."""
    if image.dtype in (np.uint8, np.uint16):
        return Image.fromarray(np.ascontiguousarray(image)).convert("F")
    return Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
