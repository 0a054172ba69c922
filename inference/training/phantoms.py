"""Procedural phantoms: knee radiographs (raw detector values, bright = dense) and lung CT slices (HU).

They vary widely (anatomy, pose, exposure, noise, markers, collimation) so that a model trained on
them has to learn manipulation traces rather than anatomy.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates


def _grid(size: int, rng: np.random.Generator, max_angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates in [-1, 1], rotated by a random angle and shifted a little."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    x, y = x / (size / 2) - 1, y / (size / 2) - 1
    angle = np.deg2rad(rng.uniform(-max_angle, max_angle))
    dx, dy = rng.uniform(-0.1, 0.1, 2)
    c, s = np.cos(angle), np.sin(angle)
    return c * (x - dx) + s * (y - dy), -s * (x - dx) + c * (y - dy)


def _smooth_step(d: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (d < 0), 0 outside, with a soft edge."""
    return np.clip(0.5 - d / max(edge, 1e-6), 0.0, 1.0)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2) - 1.0


def _texture(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Smooth unit-variance noise with correlation length `sigma`. Broad textures are drawn on a coarser
    grid and enlarged with Pillow's bicubic filter: the same look at a fraction of the filtering cost."""
    step = max(1, int(sigma / 3))
    coarse = -(-size // step)
    noise = gaussian_filter(rng.standard_normal((coarse, coarse)).astype(np.float32), sigma / step)
    if step > 1:
        enlarged = Image.fromarray(noise).resize((coarse * step, coarse * step), Image.Resampling.BICUBIC)
        noise = np.asarray(enlarged)[:size, :size]
    return noise / (noise.std() + 1e-6)


def _window(x: np.ndarray, y: np.ndarray, cx: float, cy: float, reach: float) -> tuple[slice, slice]:
    """The pixels of the grids (`_grid`'s affine map of pixel positions) within `reach` of (cx, cy), as a
    rectangle: shapes drawn there instead of on the whole image cost a fraction of the time and give
    the same pixels, where nothing of them reaches beyond."""
    per_column = np.array([x[0, 1] - x[0, 0], y[0, 1] - y[0, 0]], dtype=np.float64)
    per_row = np.array([x[1, 0] - x[0, 0], y[1, 0] - y[0, 0]], dtype=np.float64)
    column, row = np.linalg.solve(np.stack([per_column, per_row], axis=1), [cx - x[0, 0], cy - y[0, 0]])
    radius = reach / np.linalg.svd(np.stack([per_column, per_row], axis=1), compute_uv=False).min() + 2
    rows, columns = x.shape
    return (slice(int(np.clip(row - radius, 0, rows)), int(np.clip(row + radius + 1, 0, rows))),
            slice(int(np.clip(column - radius, 0, columns)), int(np.clip(column + radius + 1, 0, columns))))


def _warp(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A smooth random elastic deformation, so that no two phantoms share exact shapes."""
    size = image.shape[0]
    dy = _texture(rng, size, size / 8) * strength
    dx = _texture(rng, size, size / 8) * strength
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return map_coordinates(image, [y + dy, x + dx], order=1, mode="nearest")


def _bone(x: np.ndarray, y: np.ndarray, shape: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Bone density: a bright cortex around a trabecular medulla."""
    inside = _smooth_step(shape, 0.02)
    core = _smooth_step(shape + rng.uniform(0.15, 0.35), 0.05)
    trabecular = 0.55 + 0.12 * _texture(rng, size, rng.uniform(0.8, 2.0))
    return inside * (1.0 - core) * 1.0 + core * trabecular


def knee_radiograph(rng: np.random.Generator, size: int = 320) -> np.ndarray:
    """An AP knee radiograph phantom as raw 12-bit-like values (MONOCHROME2, bright = dense)."""
    x, y = _grid(size, rng, 12)
    x = x * rng.uniform(0.8, 1.2)
    joint = rng.uniform(-0.15, 0.15)
    gap = rng.uniform(0.03, 0.07)
    leg_w = rng.uniform(0.45, 0.75)
    soft = _smooth_step(np.abs(x) / leg_w - 1 + 0.08 * np.cos(3 * y + rng.uniform(0, 6)), 0.08)
    fat = 0.6 + 0.4 * _smooth_step(np.abs(x) / (leg_w * 0.8) - 1, 0.2)
    shaft_w = rng.uniform(0.16, 0.24)
    # femur: shaft flaring into two condyles above the joint line
    femur_top = np.abs(x) / (shaft_w + 0.35 * np.exp(-((y - joint) / 0.35) ** 2)) - 1
    femur = np.maximum(femur_top, (y - (joint - gap)) * 8)
    # tibia: plateau below the joint, narrowing to the shaft
    tib_w = shaft_w * rng.uniform(0.85, 1.05)
    tibia_shape = np.abs(x + 0.03) / (tib_w + 0.3 * np.exp(-((y - joint) / 0.3) ** 2)) - 1
    tibia = np.maximum(tibia_shape, ((joint + gap) - y) * 8)
    fib_x = rng.uniform(0.3, 0.42) * np.sign(rng.uniform(-1, 1))
    fibula = np.maximum(np.abs(x - fib_x) / rng.uniform(0.04, 0.07) - 1, ((joint + 0.12) - y) * 8)
    patella = _ellipse(x, y, rng.uniform(-0.05, 0.05), joint - rng.uniform(0.1, 0.2),
                       rng.uniform(0.12, 0.18), rng.uniform(0.1, 0.15))
    density = 0.25 * soft * fat
    for shape in (femur, tibia, fibula):
        density = density + 0.75 * _bone(x, y, shape, rng, size)
    density = density + 0.25 * _smooth_step(patella, 0.03)
    density = _warp(density, rng, size * 0.01)
    # exposure, detector response and noise
    gain = rng.uniform(1500, 3500)
    gamma = rng.uniform(0.7, 1.4)
    image = gain * np.clip(density, 0, None) ** gamma + rng.uniform(50, 300)
    image = image + rng.uniform(0.5, 3.0) * np.sqrt(np.maximum(image, 1)) * rng.standard_normal(image.shape)
    image = gaussian_filter(image, rng.uniform(0.3, 1.0))
    image = _add_marker(image, rng, size)
    image = _collimate(image, rng, size)
    return np.clip(image, 0, 4095).astype(np.float32)


def _add_marker(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A lead side marker: a bright block with a darker letter-like cut-out."""
    if rng.random() < 0.3:
        return image
    s = int(size * rng.uniform(0.04, 0.08))
    r0, c0 = rng.integers(2, size - s - 2, 2)
    out = image.copy()
    out[r0:r0 + s, c0:c0 + s] = image.max() * rng.uniform(0.9, 1.0)
    out[r0 + s // 4:r0 + 3 * s // 4, c0 + s // 3:c0 + s // 2] *= 0.6
    return out


def _collimate(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Collimator edges: outside a rectangle the detector sees scatter only."""
    if rng.random() < 0.4:
        return image
    out = image.copy()
    m = rng.integers(0, size // 10, 4)
    level = image.min() + rng.uniform(0, 0.2) * (image.max() - image.min())
    out[: m[0]] = level
    out[size - m[1]:] = level
    out[:, : m[2]] = level
    out[:, size - m[3]:] = level
    return out


def lung_ct_slice(rng: np.random.Generator, size: int = 320, nodules: int | None = None) -> np.ndarray:
    """An axial chest CT slice phantom in Hounsfield units."""
    x, y = _grid(size, rng, 6)
    body_rx, body_ry = rng.uniform(0.75, 0.92), rng.uniform(0.55, 0.75)
    body = _ellipse(x, y, 0, 0.05, body_rx, body_ry)
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    fat_thick = rng.uniform(0.04, 0.12)
    hu = np.where(body < 0, -100 + 10 * _texture(rng, size, 2), hu)
    muscle = _ellipse(x, y, 0, 0.05, body_rx - fat_thick, body_ry - fat_thick)
    hu = np.where(muscle < 0, 45 + 8 * _texture(rng, size, 1.5), hu)
    lung_rx, lung_ry = (body_rx - fat_thick) * rng.uniform(0.38, 0.46), (body_ry - fat_thick) * rng.uniform(0.7, 0.85)
    lungs = np.minimum(_ellipse(x, y, -lung_rx * 1.1, 0.0, lung_rx, lung_ry),
                       _ellipse(x, y, lung_rx * 1.1, 0.0, lung_rx, lung_ry))
    lungs = np.maximum(lungs, -_ellipse(x, y, rng.uniform(-0.15, -0.05), rng.uniform(-0.1, 0.15),
                                        rng.uniform(0.18, 0.26), rng.uniform(0.2, 0.3)))  # heart cut-out
    lungs = _warp(lungs, rng, size * 0.008)
    parenchyma = rng.uniform(-900, -820) + 25 * _texture(rng, size, rng.uniform(1.0, 3.0))
    hu = np.where(lungs < 0, parenchyma, hu)
    lung_mask = lungs < 0
    # vessels: bright branches, denser near the hila
    vessels = np.zeros(hu.shape)  # float64, as the distances are
    for _ in range(rng.integers(25, 60)):
        side = rng.choice([-1, 1])
        cx, cy = side * lung_rx * rng.uniform(0.3, 1.8), rng.uniform(-lung_ry, lung_ry) * 0.9
        r = rng.uniform(0.006, 0.025)
        rx = r * rng.uniform(1, 3)
        at = _window(x, y, cx, cy, 1.1 * max(rx, r))  # the soft edge ends at 1.1 radii
        vessels[at] = np.maximum(vessels[at], _smooth_step(_ellipse(x[at], y[at], cx, cy, rx, r), 0.2))
    hu = np.where(lung_mask, hu + vessels * (rng.uniform(20, 60) - hu), hu)
    # airways: trachea/bronchi as air rings
    for cx in (0.0, -0.12, 0.12)[: rng.integers(1, 4)]:
        cy = -0.35 + rng.uniform(-0.05, 0.05)
        ring = _ellipse(x, y, cx, cy, 0.05, 0.045)
        hu = np.where((ring < 0.3) & (ring > 0), 30.0, hu)
        hu = np.where(ring <= 0, -980.0, hu)
    # spine and ribs
    spine = _ellipse(x, y, 0, body_ry * 0.75, rng.uniform(0.09, 0.12), rng.uniform(0.08, 0.11))
    hu = np.where(spine < 0, 300 + 400 * _smooth_step(-spine - 0.5, 0.2) + 60 * _texture(rng, size, 1), hu)
    for _ in range(rng.integers(4, 9)):
        angle = rng.uniform(0, 2 * np.pi)
        rx, ry = (body_rx - fat_thick * 0.6) * np.cos(angle), (body_ry - fat_thick * 0.6) * np.sin(angle) + 0.05
        at = _window(x, y, rx, ry, 0.035)
        hu[at] = np.where(_ellipse(x[at], y[at], rx, ry, 0.035, 0.03) < 0, rng.uniform(500, 900), hu[at])
    # pristine nodules exist too: a nodule alone must never mean "manipulated"
    count = rng.integers(0, 3) if nodules is None else nodules
    ys, xs = np.nonzero(lung_mask)
    for _ in range(count if len(ys) else 0):
        i = rng.integers(len(ys))
        r = rng.uniform(0.01, 0.03)
        hu = np.maximum(hu, np.where(lung_mask, -850 + 880 * _smooth_step(
            _ellipse(x, y, xs[i] / (size / 2) - 1, ys[i] / (size / 2) - 1, r, r), 0.5), -2000))
    # table and CT noise (correlated, as reconstruction makes it)
    table_y = body_ry + 0.12
    hu = np.where((y > table_y) & (y < table_y + 0.03) & (np.abs(x) < 0.95), 100.0, hu)
    sigma = rng.uniform(8, 35)
    noise = gaussian_filter(rng.standard_normal((size, size)), rng.uniform(0.6, 1.2))
    hu = hu + sigma * noise / (noise.std() + 1e-6)
    return np.clip(hu, -1024, 3071).astype(np.float32)
