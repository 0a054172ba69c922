"""Manipulations modelled on the attacks in the literature, applied to modality-unit images.

Each local manipulation returns the tampered image and the box (row0, col0, row1, col1) outside
which the image is unchanged. Whole-image synthesis (the GAN) lives in `inference.training.gan`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates, zoom

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Tampered:
    image: np.ndarray
    box: Box | None


def _noise_sigma(image: np.ndarray) -> float:
    """Noise level estimated from the high-pass residual (robust median absolute deviation)."""
    residual = image - gaussian_filter(image, 1.0)
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


def _soft_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random blob inside an h x w box, soft at its edge and zero on the box's border."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    angle = np.arctan2(y - cy, x - cx)
    wobble = 1 + 0.15 * np.sin(rng.integers(2, 6) * angle + rng.uniform(0, 6.3))
    r = np.sqrt(((y - cy) / (h / 2)) ** 2 + ((x - cx) / (w / 2)) ** 2) / (0.8 * wobble)
    soft = rng.uniform(0.1, 0.4)
    mask = np.clip((1 - r) / soft, 0, 1)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 0
    return mask


def _random_box(rng: np.random.Generator, shape: tuple[int, ...], lo: float, hi: float) -> Box:
    rows, cols = shape
    h = int(rows * rng.uniform(lo, hi))
    w = int(cols * rng.uniform(lo, hi))
    r0 = int(rng.integers(0, rows - h))
    c0 = int(rng.integers(0, cols - w))
    return r0, c0, r0 + h, c0 + w


def _blend(image: np.ndarray, patch: np.ndarray, box: Box, mask: np.ndarray) -> np.ndarray:
    r0, c0, r1, c1 = box
    out = image.copy()
    out[r0:r1, c0:c1] = image[r0:r1, c0:c1] * (1 - mask) + patch * mask
    return out


def copy_move(rng: np.random.Generator, image: np.ndarray, donor: np.ndarray | None = None) -> Tampered:
    """A region of the image pasted elsewhere in the same image (hard or feathered edge)."""
    r0, c0, r1, c1 = _random_box(rng, image.shape, 0.1, 0.3)
    h, w = r1 - r0, c1 - c0
    sr = int(rng.integers(0, image.shape[0] - h))
    sc = int(rng.integers(0, image.shape[1] - w))
    patch = image[sr:sr + h, sc:sc + w]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    mask = _soft_mask(rng, h, w) if rng.random() < 0.7 else np.pad(np.ones((h - 2, w - 2)), 1)
    return Tampered(_blend(image, patch, (r0, c0, r1, c1), mask), (r0, c0, r1, c1))


def splice(rng: np.random.Generator, image: np.ndarray, donor: np.ndarray | None = None) -> Tampered:
    """A region from another image, its intensities matched to the target's surroundings."""
    if donor is None:
        raise ValueError("splice needs a donor image")
    box = _random_box(rng, image.shape, 0.12, 0.35)
    r0, c0, r1, c1 = box
    h, w = r1 - r0, c1 - c0
    dr = int(rng.integers(0, donor.shape[0] - h))
    dc = int(rng.integers(0, donor.shape[1] - w))
    patch = donor[dr:dr + h, dc:dc + w]
    target = image[r0:r1, c0:c1]
    patch = (patch - patch.mean()) / (patch.std() + 1e-6) * target.std() + target.mean()
    return Tampered(_blend(image, patch, box, _soft_mask(rng, h, w)), box)


def inpaint(rng: np.random.Generator, image: np.ndarray, donor: np.ndarray | None = None) -> Tampered:
    """A region erased and filled from its surroundings (diffusion), with or without matched noise."""
    box = _random_box(rng, image.shape, 0.08, 0.25)
    r0, c0, r1, c1 = box
    mask = _soft_mask(rng, r1 - r0, c1 - c0)
    region = image[max(r0 - 8, 0):r1 + 8, max(c0 - 8, 0):c1 + 8].astype(np.float64)
    inner = (slice(r0 - max(r0 - 8, 0), r0 - max(r0 - 8, 0) + r1 - r0),
             slice(c0 - max(c0 - 8, 0), c0 - max(c0 - 8, 0) + c1 - c0))
    hole = np.zeros(region.shape, dtype=bool)
    hole[inner] = mask > 0
    filled = region.copy()
    filled[hole] = region[~hole].mean()
    for sigma in (8, 4, 2, 1):
        for _ in range(6):
            filled[hole] = gaussian_filter(filled, sigma)[hole]
    patch = filled[inner]
    if rng.random() < 0.5:
        patch = patch + _noise_sigma(image) * rng.standard_normal(patch.shape)
    return Tampered(_blend(image, patch.astype(np.float32), box, mask), box)


def self_blend(rng: np.random.Generator, image: np.ndarray, donor: np.ndarray | None = None) -> Tampered:
    """The image blended with a slightly transformed copy of itself inside a soft random mask."""
    box = _random_box(rng, image.shape, 0.2, 0.5)
    r0, c0, r1, c1 = box
    h, w = r1 - r0, c1 - c0
    y, x = np.mgrid[r0:r1, c0:c1].astype(np.float32)
    s = rng.uniform(0.95, 1.05)
    dy, dx = rng.uniform(-3, 3, 2)
    cy, cx = (r0 + r1) / 2, (c0 + c1) / 2
    moved = map_coordinates(image, [(y - cy) * s + cy + dy, (x - cx) * s + cx + dx], order=1, mode="reflect")
    if rng.random() < 0.5:
        moved = gaussian_filter(moved, rng.uniform(0.5, 1.5))
    span = float(np.ptp(image))
    moved = moved * rng.uniform(0.93, 1.07) + rng.uniform(-0.03, 0.03) * span
    mask = _soft_mask(rng, h, w) * rng.uniform(0.5, 1.0)
    return Tampered(_blend(image, moved.astype(np.float32), box, mask), box)


def local_resample(rng: np.random.Generator, image: np.ndarray, donor: np.ndarray | None = None) -> Tampered:
    """A region scaled down and up again, or slightly rescaled: interpolation traces, lost noise."""
    box = _random_box(rng, image.shape, 0.15, 0.4)
    r0, c0, r1, c1 = box
    region = image[r0:r1, c0:c1]
    factor = rng.uniform(0.3, 0.8)
    small = zoom(region, factor, order=1)
    back = zoom(small, (region.shape[0] / small.shape[0], region.shape[1] / small.shape[1]), order=3)
    back = back[: region.shape[0], : region.shape[1]]
    if back.shape != region.shape:
        back = np.pad(back, [(0, region.shape[0] - back.shape[0]), (0, region.shape[1] - back.shape[1])], "edge")
    return Tampered(_blend(image, back.astype(np.float32), box, _soft_mask(rng, *region.shape)), box)


def _lung_points(image: np.ndarray) -> np.ndarray:
    """Pixel coordinates of lung parenchyma (-950..-600 HU) with parenchyma all around."""
    lung = (image > -950) & (image < -600)
    smooth = gaussian_filter(lung.astype(np.float32), 6) > 0.9
    return np.argwhere(smooth)


def _nodule_box(rng: np.random.Generator, image: np.ndarray, radius: int) -> Box | None:
    points = _lung_points(image)
    points = points[(points[:, 0] > radius * 2) & (points[:, 0] < image.shape[0] - radius * 2)
                    & (points[:, 1] > radius * 2) & (points[:, 1] < image.shape[1] - radius * 2)]
    if len(points) == 0:
        return None
    r, c = points[rng.integers(len(points))]
    pad = radius * 2
    return int(r - pad), int(c - pad), int(r + pad), int(c + pad)


def ct_lesion_inject(rng: np.random.Generator, image: np.ndarray, donor: np.ndarray | None = None) -> Tampered:
    """CT-GAN style injection: a nodule blended in HU with a density-dependent weight."""
    radius = int(rng.integers(3, 12))
    box = _nodule_box(rng, image, radius) or _random_box(rng, image.shape, 0.05, 0.1)
    r0, c0, r1, c1 = box
    y, x = np.mgrid[r0:r1, c0:c1].astype(np.float32)
    cy, cx = (r0 + r1) / 2, (c0 + c1) / 2
    shape = np.sqrt(((y - cy) / radius) ** 2 + ((x - cx) / (radius * rng.uniform(0.7, 1.3))) ** 2)
    shape = shape + 0.25 * gaussian_filter(rng.standard_normal(shape.shape), 1.5)  # lobulated margin
    profile = np.clip(1.2 - shape, 0, 1) ** rng.uniform(0.5, 1.5)
    region = image[r0:r1, c0:c1]
    nodule_hu = rng.uniform(-100, 100)
    weight = profile * np.clip((nodule_hu - region) / 1000, 0, 1)  # denser tissue takes less of it
    patch = region + weight * (nodule_hu - region)
    if rng.random() < 0.5:  # matched noise, so the nodule is not suspiciously smooth
        patch = patch + profile * _noise_sigma(image) * rng.standard_normal(patch.shape)
    out = image.copy()
    out[r0 + 1:r1 - 1, c0 + 1:c1 - 1] = patch[1:-1, 1:-1]
    return Tampered(out.astype(np.float32), box)


def ct_lesion_remove(rng: np.random.Generator, image: np.ndarray, donor: np.ndarray | None = None) -> Tampered:
    """Lesion removal: a dense structure inside the lung replaced by parenchyma and matched noise."""
    lung = (image > -950) & (image < -600)
    near_lung = gaussian_filter(lung.astype(np.float32), 5) > 0.6
    dense = np.argwhere(near_lung & (image > -300))
    radius = int(rng.integers(4, 12))
    if len(dense) == 0:
        box = _nodule_box(rng, image, radius) or _random_box(rng, image.shape, 0.05, 0.1)
    else:
        r, c = dense[rng.integers(len(dense))]
        r = int(np.clip(r, radius * 2, image.shape[0] - radius * 2))
        c = int(np.clip(c, radius * 2, image.shape[1] - radius * 2))
        box = (r - radius * 2, c - radius * 2, r + radius * 2, c + radius * 2)
    r0, c0, r1, c1 = box
    region = image[r0:r1, c0:c1]
    parenchyma = region[(region > -950) & (region < -600)]
    level = float(np.median(parenchyma)) if parenchyma.size else -850.0
    patch = gaussian_filter(np.full(region.shape, level, dtype=np.float32), 1)
    patch = patch + _noise_sigma(image) * rng.standard_normal(region.shape)
    return Tampered(_blend(image, patch.astype(np.float32), box, _soft_mask(rng, r1 - r0, c1 - c0)), box)


Manipulation = Callable[[np.random.Generator, np.ndarray, "np.ndarray | None"], Tampered]

LOCAL_MANIPULATIONS: dict[str, Manipulation] = {
    "copy_move": copy_move,
    "splice": splice,
    "inpaint": inpaint,
    "self_blend": self_blend,
    "local_resample": local_resample,
}
TAKES_A_DONOR = frozenset({"splice"})  # the families that use a second image (the others get None)
CT_MANIPULATIONS: dict[str, Manipulation] = {
    "ct_lesion_inject": ct_lesion_inject,
    "ct_lesion_remove": ct_lesion_remove,
}


def families_for(kind: str) -> dict[str, Manipulation]:
    """The local manipulation families that apply to a modality kind ("xray" or "ct")."""
    return {**LOCAL_MANIPULATIONS, **(CT_MANIPULATIONS if kind == "ct" else {})}
