"""PNG pictures for the console: a key image as stored, and the model's view of an upload with its heatmap."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw
from pydicom import dcmread

from inference.localisation import hottest_box

HEATMAP_SIDE = 448
OUTLINE = (255, 200, 0)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def key_image_png(path: str) -> bytes:
    """The key image (RGB secondary capture with the box and banner burnt in) as a PNG."""
    ds = dcmread(path)
    return png_bytes(np.asarray(ds.pixel_array, dtype=np.uint8))


def heatmap_png(prepared: np.ndarray, cells: np.ndarray) -> bytes:
    """The prepared model input (grey, [0, 1]) with the per-cell activation laid over it in red, and the
    box around its hottest region, scaled to HEATMAP_SIDE pixels."""
    side = prepared.shape[0]
    grey = Image.fromarray(np.clip(prepared * 255 + 0.5, 0, 255).astype(np.uint8)).resize(
        (HEATMAP_SIDE, HEATMAP_SIDE), Image.Resampling.BILINEAR).convert("RGB")
    span = float(cells.max() - cells.min())
    heat = (cells - cells.min()) / span if span > 0 else np.zeros_like(cells)
    heat_image = Image.fromarray((heat * 255).astype(np.uint8)).resize((HEATMAP_SIDE, HEATMAP_SIDE),
                                                                       Image.Resampling.BILINEAR)
    alpha = np.asarray(heat_image, dtype=np.float32)[..., None] / 255 * 0.55
    red = np.zeros((HEATMAP_SIDE, HEATMAP_SIDE, 3), dtype=np.float32)
    red[..., 0] = 255
    blended = (np.asarray(grey, dtype=np.float32) * (1 - alpha) + red * alpha).astype(np.uint8)
    picture = Image.fromarray(blended)
    box = hottest_box(cells, side, (side, side))
    if box is not None:
        scale = HEATMAP_SIDE / side
        ImageDraw.Draw(picture).rectangle((box.col0 * scale, box.row0 * scale, box.col1 * scale - 1,
                                           box.row1 * scale - 1), outline=OUTLINE, width=3)
    return png_bytes(np.asarray(picture))
