"""Training augmentation on [0, 1] images: geometry, intensity, and benign degradations.

The benign degradations (noise, blur, resampling, lossy JPEG / JPEG 2000) hit both classes alike,
so the model never learns that compression or resizing means tampering.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, zoom


def _lossy(image: np.ndarray, fmt: str, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    pil = Image.fromarray(np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8))
    if fmt == "JPEG2000":
        pil.save(buf, fmt, quality_mode="rates", quality_layers=[quality])
    else:
        pil.save(buf, fmt, quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf), dtype=np.float32) / 255.0


def resample(image: np.ndarray, factor: float) -> np.ndarray:
    small = zoom(image, factor, order=1)
    back = zoom(small, (image.shape[0] / small.shape[0], image.shape[1] / small.shape[1]), order=1)
    out = np.zeros_like(image)
    h, w = min(back.shape[0], image.shape[0]), min(back.shape[1], image.shape[1])
    out[:h, :w] = back[:h, :w]
    return out


def _rotated(image: np.ndarray, degrees: float) -> np.ndarray:
    """The image turned about its centre, bilinear, zero where nothing comes in: scipy's `rotate` (order 1,
    constant mode) gives the same pixels but for the outermost ones, in 2.4 ms against Pillow's 0.9 ms."""
    turned = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).rotate(
        degrees, Image.Resampling.BILINEAR, fillcolor=0.0)
    return np.asarray(turned)


BENIGN = {
    "jpeg": lambda rng, img: _lossy(img, "JPEG", int(rng.integers(60, 95))),
    "jpeg2000": lambda rng, img: _lossy(img, "JPEG2000", int(rng.integers(8, 30))),
    "noise": lambda rng, img: img + rng.uniform(0.003, 0.02) * rng.standard_normal(img.shape).astype(np.float32),
    "blur": lambda rng, img: gaussian_filter(img, rng.uniform(0.3, 1.0)),
    "resample": lambda rng, img: resample(img, rng.uniform(0.5, 0.9)),
}
# what differs between sites without anyone tampering: display LUTs (gamma), reconstruction kernels
# (sharpening), calibration (an offset, in HU for CT); with BENIGN, the native design's degradations
SITE_VARIATION = {
    "gamma": lambda rng, img: np.clip(img, 0, 1) ** rng.uniform(0.7, 1.4),
    "sharpen": lambda rng, img: img + rng.uniform(0.3, 1.0) * (img - gaussian_filter(img, rng.uniform(0.7, 1.5))),
    "offset": lambda rng, img: img + rng.uniform(-0.04, 0.04),
}
NATIVE_BENIGN = (*BENIGN, *SITE_VARIATION)  # the native design trains and is measured with all of them


def benign_degrade(rng: np.random.Generator, image: np.ndarray, name: str) -> np.ndarray:
    """One named benign degradation (used by training and by the FPR check in evaluation)."""
    degrade = BENIGN.get(name) or SITE_VARIATION[name]
    return np.clip(degrade(rng, image), 0, 1).astype(np.float32)


DEGRADATION_ODDS = (("blur", 0.15), ("resample", 0.15), ("noise", 0.25), ("jpeg", 0.25), ("jpeg2000", 0.1))


def augment(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray | None = None, degrade: float = 1.0
            ) -> tuple[np.ndarray, np.ndarray]:
    """Random geometry (applied to the region mask too) and intensity changes, then each benign
    degradation with its probability in `DEGRADATION_ODDS` times `degrade` (0 to 1). Returns the image and
    the mask (zeros when none is given)."""
    mask = np.zeros_like(image) if mask is None else mask
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        angle = rng.uniform(-10, 10)
        image = _rotated(image, angle)
        if mask.any():  # an empty mask stays empty
            mask = _rotated(mask, angle)
    if rng.random() < 0.5:
        z = rng.uniform(0.85, 1.0)
        h, w = image.shape
        ch, cw = int(h * z), int(w * z)
        r, c = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image, mask = image[r:r + ch, c:c + cw], mask[r:r + ch, c:c + cw]
    image = image * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05)
    image = np.clip(image, 0, 1).astype(np.float32)
    for name, p in DEGRADATION_ODDS:
        if rng.random() < p * degrade:
            image = benign_degrade(rng, image, name)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(mask, dtype=np.float32)
