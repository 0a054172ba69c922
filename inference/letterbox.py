"""Resizing into the model's square input: aspect kept, the longer side fills it, zero padding around.

A large image is first box-averaged by a whole factor down to at least REDUCING_GAP times the
input, then resized with an antialiasing bilinear filter: nearly what the filter gives on the full
image, at a fraction of the work (a 2,000 x 2,000 radiograph into 160 pixels: a 6 x 6 box first).
Box averaging is linear, so a linear step (rescale, window) may run before or after it."""

from __future__ import annotations

import numpy as np
from PIL import Image

REDUCING_GAP = 2.0


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
