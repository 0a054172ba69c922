"""Which slices of a CT series to score when a route screens every n-th slice.

Slices are put in anatomical order (position along the slice normal, else Instance Number, else
arrival order); every `stride`-th is scored, and the unscored slices within `stride - 1` of any that
scores at or above the threshold are scored after, so a suspicious region is screened slice by slice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from pydicom.dataset import Dataset


def slice_order(headers: Sequence[Dataset | None]) -> list[int]:
    """Indices of `headers` from one end of the volume to the other; arrival order where the
    geometry or numbering is missing from any slice."""
    positions = [_position_along_normal(ds) for ds in headers]
    if all(p is not None for p in positions):
        return sorted(range(len(headers)), key=lambda n: (positions[n], n))
    numbers = [_instance_number(ds) for ds in headers]
    if all(n is not None for n in numbers):
        return sorted(range(len(headers)), key=lambda n: (numbers[n], n))
    return list(range(len(headers)))


def sampled_positions(count: int, stride: int) -> list[int]:
    """Positions (in slice order) scored first: every `stride`-th, always the first and the last."""
    positions = list(range(0, count, stride))
    if count and positions[-1] != count - 1:
        positions.append(count - 1)
    return positions


def neighbour_positions(flagged: Iterable[int], stride: int, count: int, done: set[int]) -> list[int]:
    """Positions within `stride - 1` of a flagged one that have not been scored yet."""
    wanted = {p for f in flagged for p in range(max(0, f - stride + 1), min(count, f + stride))}
    return sorted(wanted - done)


def _position_along_normal(ds: Dataset | None) -> float | None:
    if ds is None:
        return None
    try:
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
    except Exception:  # missing, or malformed in any of the ways pydicom reports
        return None
    if position.shape != (3,) or orientation.shape != (6,):
        return None
    return float(np.dot(position, np.cross(orientation[:3], orientation[3:])))


def _instance_number(ds: Dataset | None) -> int | None:
    try:
        return int(ds.InstanceNumber) if ds is not None else None
    except Exception:  # missing, or malformed in any of the ways pydicom reports
        return None
