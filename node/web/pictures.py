"""PNG pictures for the console: a key image as stored, and the model's view of an upload with its heatmap."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw
from pydicom import dcmread

from inference.localisation import hot_cells

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


def heatmap_png(prepared: np.ndarray, cells: np.ndarray, cell_side: float | None = None) -> bytes:
    """The prepared model input (grey, [0, 1]) with the per-cell activation laid over it in red, and the
    box around its hottest region, its longer side scaled to HEATMAP_SIDE pixels. `cell_side` is how many
    input pixels a cell spans (the forensic design's stride); by default the map spans the input evenly."""
    rows, cols = prepared.shape
    scale = HEATMAP_SIDE / max(rows, cols)
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    grey = Image.fromarray(np.clip(prepared * 255 + 0.5, 0, 255).astype(np.uint8)).resize(
        size, Image.Resampling.BILINEAR).convert("RGB")
    span = float(cells.max() - cells.min())
    heat = (cells - cells.min()) / span if span > 0 else np.zeros_like(cells)
    per_row, per_col = (cell_side, cell_side) if cell_side else (rows / cells.shape[0], cols / cells.shape[1])
    grid = (max(1, round(cells.shape[1] * per_col * scale)), max(1, round(cells.shape[0] * per_row * scale)))
    heat_image = Image.fromarray((heat * 255).astype(np.uint8)).resize(grid, Image.Resampling.BILINEAR)
    alpha = np.zeros((size[1], size[0], 1), dtype=np.float32)
    covered = np.asarray(heat_image, dtype=np.float32)[:size[1], :size[0]] / 255 * 0.55
    alpha[:covered.shape[0], :covered.shape[1], 0] = covered
    red = np.zeros((size[1], size[0], 3), dtype=np.float32)
    red[..., 0] = 255
    blended = (np.asarray(grey, dtype=np.float32) * (1 - alpha) + red * alpha).astype(np.uint8)
    picture = Image.fromarray(blended)
    region = hot_cells(cells)
    if region is not None:
        r0, c0, r1, c1 = region
        ImageDraw.Draw(picture).rectangle((c0 * per_col * scale, r0 * per_row * scale,
                                           min(c1 * per_col * scale, size[0]) - 1,
                                           min(r1 * per_row * scale, size[1]) - 1), outline=OUTLINE, width=3)
    return png_bytes(np.asarray(picture))
