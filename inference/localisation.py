"""Where a classifier looks: a class-activation map and the box around its hottest region.

The map is EfficientNet's one-output linear head applied to every cell of the last feature map; the
image's logit is its mean, or the mean of its k highest cells (`inference.pooling`), so the map shows
where the verdict comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import label

from inference.letterbox import letterbox_geometry
from inference.pooling import cell_logits

FLAT_MAP = 1e-6  # logit spread below which a map points nowhere (numerical noise)


@dataclass(frozen=True)
class Box:
    """A rectangle in source pixel coordinates: rows [row0, row1), columns [col0, col1)."""

    row0: int
    col0: int
    row1: int
    col1: int

    def corners(self) -> list[tuple[float, float]]:
        """The closed outline as (column, row) points, the order DICOM graphic data uses."""
        r0, c0, r1, c1 = float(self.row0), float(self.col0), float(self.row1 - 1), float(self.col1 - 1)
        return [(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)]


def activation_cells(network: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The one-output linear head applied to every cell of the last feature map: per-cell logits (N, h, w)."""
    head = network.get_classifier()  # type: ignore[operator]
    return cell_logits(features, head.weight, head.bias)


def activation_maps(network: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Per-cell logits (N, h, w) of a timm EfficientNet with a one-output linear head."""
    return activation_cells(network, network.forward_features(batch))  # type: ignore[operator]


def hot_cells(cell_logits: np.ndarray) -> tuple[int, int, int, int] | None:
    """(row0, col0, row1, col1) in cells of the connected hot region holding the map's maximum; hot
    means above the midpoint between the map's median and its maximum. None for a flat map."""
    high, middle = float(cell_logits.max()), float(np.median(cell_logits))
    if high - float(cell_logits.min()) < FLAT_MAP:
        return None
    regions, _ = label(cell_logits >= (high + middle) / 2)
    peak = np.unravel_index(int(np.argmax(cell_logits)), cell_logits.shape)
    rows, cols = np.nonzero(regions == regions[peak])
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def hottest_box(cell_logits: np.ndarray, input_size: int, source_shape: tuple[int, int]) -> Box | None:
    """The box around the hot region (`hot_cells`) of a letterboxed input's map, in source pixels."""
    region = hot_cells(cell_logits)
    if region is None:
        return None
    cell = input_size / cell_logits.shape[0], input_size / cell_logits.shape[1]
    scale, top, left = letterbox_geometry(source_shape, input_size)

    def to_source(value: float, offset: int, limit: int) -> int:
        return int(np.clip(round((value - offset) / scale), 0, limit))

    h, w = source_shape
    r0, c0, r1, c1 = region
    box = Box(to_source(r0 * cell[0], top, h), to_source(c0 * cell[1], left, w),
              to_source(r1 * cell[0], top, h), to_source(c1 * cell[1], left, w))
    return box if box.row1 - box.row0 >= 2 and box.col1 - box.col0 >= 2 else None
