"""Scoring a whole native-size image in tiles: the same cell map as one pass over the whole image,
in a fraction of the memory.

Written here because the stitching depends on the forensic design's cell grid. Tiles start on
multiples of the cell stride, so every tile samples the image on the whole pass's grid; each tile is
run with a halo of context around it (cut at the image's own edges, as the whole pass sees them),
and only the cells of its core are kept. Where the halo covers the network's effective reach, the
stitched map equals the whole pass's (tests/test_forensic.py measures it on a random network).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CellsOf = Callable[[torch.Tensor], torch.Tensor]  # (N, C, H, W) -> (N, h, w) cell logits


def cell_count(length: int, stride: int) -> int:
    return -(-length // stride)


def tiled_cells(cells_of: CellsOf, image: torch.Tensor, stride: int, tile: int, halo: int) -> torch.Tensor:
    """The cell map of `image` (N, C, H, W), computed tile by tile: (N, ceil(H/stride), ceil(W/stride)).
    `tile` and `halo` are whole multiples of `stride`; an image within one tile and its halo is one pass."""
    if tile % stride or halo % stride:
        raise ValueError(f"tile ({tile}) and halo ({halo}) must be multiples of the cell stride ({stride})")
    height, width = image.shape[-2:]
    if height <= tile + halo and width <= tile + halo:
        return cells_of(image)
    out = torch.empty(image.shape[0], cell_count(height, stride), cell_count(width, stride))
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            r0, c0 = max(0, top - halo), max(0, left - halo)
            part = cells_of(image[..., r0:min(height, top + tile + halo), c0:min(width, left + tile + halo)])
            rows, cols = cell_count(min(tile, height - top), stride), cell_count(min(tile, width - left), stride)
            skip_r, skip_c = (top - r0) // stride, (left - c0) // stride
            out[:, top // stride:top // stride + rows, left // stride:left // stride + cols] = \
                part[:, skip_r:skip_r + rows, skip_c:skip_c + cols]
    return out
