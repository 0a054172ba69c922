"""Scoring a whole native-size image in tiles: the same cell map as one pass over the whole image,
in a fraction of the memory.

Written here because the stitching depends on the forensic design's cell grid. Tiles start on
multiples of the cell stride, so every tile samples the image on the whole pass's grid; each tile is
run with a halo of context around it (cut at the image's own edges, as the whole pass sees them),
and only the cells of its core are kept. Where the halo covers the network's effective reach, the
stitched map equals the whole pass's (tests/test_forensic.py measures it on a random network).

A batch of images (a CT series' slices) is run a few images at a time, so that no pass holds more
pixels than one tile with its halo on every side: the activations of a full-resolution front grow with
the pixels of a pass, and the memory they take stays taken in the shared arena.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CellsOf = Callable[[torch.Tensor], torch.Tensor]  # (N, C, H, W) -> (N, h, w) cell logits


def cell_count(length: int, stride: int) -> int:
    return -(-length // stride)


def pass_pixels(tile: int, halo: int) -> int:
    """The most pixels one pass holds: a tile with its halo on every side."""
    return (tile + 2 * halo) ** 2


def in_passes(cells_of: CellsOf, images: torch.Tensor, max_pixels: int) -> torch.Tensor:
    """`cells_of(images)`, run a few images at a time: at most `max_pixels` a pass, at least one image."""
    height, width = images.shape[-2:]
    per_pass = max(1, max_pixels // (height * width))
    if images.shape[0] <= per_pass:
        return cells_of(images)
    return torch.cat([cells_of(images[start:start + per_pass]) for start in range(0, images.shape[0], per_pass)])


def tiled_cells(cells_of: CellsOf, image: torch.Tensor, stride: int, tile: int, halo: int,
                max_pixels: int | None = None) -> torch.Tensor:
    """The cell map of `image` (N, C, H, W), computed tile by tile: (N, ceil(H/stride), ceil(W/stride)).
    `tile` and `halo` are whole multiples of `stride`; an image within one tile and its halo is one pass
    (a batch of them, passes of at most `max_pixels`, by default `pass_pixels(tile, halo)`)."""
    if tile % stride or halo % stride:
        raise ValueError(f"tile ({tile}) and halo ({halo}) must be multiples of the cell stride ({stride})")
    height, width = image.shape[-2:]
    max_pixels = max_pixels or pass_pixels(tile, halo)
    if height <= tile + halo and width <= tile + halo:
        return in_passes(cells_of, image, max_pixels)
    out = torch.empty(image.shape[0], cell_count(height, stride), cell_count(width, stride))
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            r0, c0 = max(0, top - halo), max(0, left - halo)
            window = image[..., r0:min(height, top + tile + halo), c0:min(width, left + tile + halo)]
            part = in_passes(cells_of, window, max_pixels)
            rows, cols = cell_count(min(tile, height - top), stride), cell_count(min(tile, width - left), stride)
            skip_r, skip_c = (top - r0) // stride, (left - c0) // stride
            out[:, top // stride:top // stride + rows, left // stride:left // stride + cols] = \
                part[:, skip_r:skip_r + rows, skip_c:skip_c + cols]
    return out
