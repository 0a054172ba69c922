"""DICOM (or PNG) pixel data to model input: one float32 square image in [0, 1] per frame.

The same code serves the node and training, so the model sees at run time what it learned on.

Steps, for every input the node accepts:
1. decode (pydicom with the pylibjpeg plugins: JPEG baseline/lossless/LS, JPEG 2000, RLE, deflate);
2. Modality LUT (Rescale Slope/Intercept, also per frame for Enhanced CT);
3. windowing from the model card: a fixed HU window for CT, robust percentiles for radiographs;
4. MONOCHROME1 inverted so that bone is bright everywhere;
5. aspect-preserving resize into the model's square input, zero-padded (letterbox).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from node.errors import NotEvaluable

# Synthesised CT images are 16-bit PNGs holding HU + CT_PNG_OFFSET.
CT_PNG_OFFSET = 1024
MIN_SIDE = 32
MAX_FRAME_PIXELS = 1 << 26  # 8192 x 8192: larger claims are refused before anything is decoded
MAX_TOTAL_PIXELS = 1 << 28  # all frames together (about 1 GiB as float32)


@dataclass(frozen=True)
class Preprocessing:
    """The model card's preprocessing section."""

    kind: Literal["xray", "ct"]
    input_size: int
    window_center: float = -600.0
    window_width: float = 1500.0
    percentile_low: float = 0.5
    percentile_high: float = 99.5


@dataclass(frozen=True)
class PreparedFrame:
    """One frame ready for the model; `frame_number` is 1-based, None for single-frame images."""

    frame_number: int | None
    pixels: np.ndarray  # float32, (input_size, input_size), in [0, 1]
    source_shape: tuple[int, int] = (0, 0)  # (rows, columns) of the frame before the letterbox


def _frame_rescale(ds: Dataset, index: int) -> tuple[float, float] | None:
    """Slope and intercept from the functional groups of an enhanced multi-frame image."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) > index:
        groups.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        transform = group.get("PixelValueTransformationSequence")
        if transform:
            item = transform[0]
            return float(item.get("RescaleSlope", 1.0)), float(item.get("RescaleIntercept", 0.0))
    return None


def check_evaluable(ds: Dataset) -> None:
    """Raise `NotEvaluable` for images a greyscale manipulation model cannot use."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise NotEvaluable("no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if int(ds.get("SamplesPerPixel", 1)) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise NotEvaluable(f"colour image ({photometric or 'unknown photometric'}); the models are greyscale")
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        raise NotEvaluable("localizer (scout) image")
    try:
        rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise NotEvaluable(f"unusable image size attributes: {exc}") from exc
    if rows < MIN_SIDE or cols < MIN_SIDE:
        raise NotEvaluable(f"image too small ({rows}x{cols})")
    if rows * cols > MAX_FRAME_PIXELS or rows * cols * max(frames, 1) > MAX_TOTAL_PIXELS or frames < 1:
        raise NotEvaluable(f"claims {frames} frame(s) of {rows}x{cols} pixels, beyond what the node decodes")


def frames_in_modality_units(ds: Dataset) -> list[np.ndarray]:
    """Decode the pixel data and apply the Modality LUT; one float32 2-D array per frame."""
    check_evaluable(ds)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types; the reason is what users need
        raise NotEvaluable(f"pixel data cannot be decoded: {exc}") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1 and pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if pixels.ndim != 3:
        raise NotEvaluable(f"unexpected pixel array shape {pixels.shape}")
    out = []
    for index in range(pixels.shape[0]):
        frame_rescale = _frame_rescale(ds, index) if frames > 1 else None
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught just below, with the reason
            values, rescale = _modality_values(pixels[index], ds, frame_rescale)
        if not _surely_finite(pixels, rescale) and not np.isfinite(values).all():
            raise NotEvaluable("pixel values are not finite after the Modality LUT (bad rescale attributes)")
        out.append(values)
    return out


def _modality_values(frame: np.ndarray, ds: Dataset, frame_rescale: tuple[float, float] | None
                     ) -> tuple[np.ndarray, tuple[float, float] | None]:
    """One frame through the Modality LUT (the frame's own rescale for enhanced images), as float32, and
    the (slope, intercept) applied when the LUT is linear (None for a LUT sequence or partial attributes)."""
    if frame_rescale is not None:
        slope, intercept = frame_rescale
        return frame.astype(np.float32) * slope + intercept, frame_rescale
    if "ModalityLUTSequence" not in ds:
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
            values = frame.astype(np.float32)  # the linear Modality LUT, in float32 throughout
            values *= np.float32(slope)
            values += np.float32(intercept)
            return values, (slope, intercept)
        if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
            return frame.astype(np.float32), (1.0, 0.0)
    return np.asarray(apply_modality_lut(frame, ds), dtype=np.float32), None


def _surely_finite(pixels: np.ndarray, rescale: tuple[float, float] | None) -> bool:
    """True when integer pixels through a finite linear rescale cannot leave float32's range, so that
    the result needs no check (3.6 million checks on a large radiograph)."""
    if rescale is None or pixels.dtype.kind not in "iu":
        return False
    slope, intercept = rescale
    return bool(np.isfinite(slope) and np.isfinite(intercept) and abs(slope) < 1e28 and abs(intercept) < 1e37)


PERCENTILE_SAMPLE = 1 << 18  # pixels the radiograph percentiles are taken from (a regular grid)


def window_bounds(values: np.ndarray, prep: Preprocessing) -> tuple[float, float]:
    """(low, width) of the window: the card's HU window for CT, robust percentiles for radiographs.

    Percentiles come from a regular grid of about PERCENTILE_SAMPLE pixels: on a 2,000 x 2,000
    radiograph that is 16 times less sorting for a difference far below one grey level."""
    if prep.kind == "ct":
        return prep.window_center - prep.window_width / 2, prep.window_width
    step = max(1, int(np.ceil(np.sqrt(values.size / PERCENTILE_SAMPLE))))
    sample = values[::step, ::step] if values.ndim == 2 else values
    lo, hi = np.percentile(sample, [prep.percentile_low, prep.percentile_high])
    return float(lo), max(float(hi - lo), 1e-6)


def to_unit_range(values: np.ndarray, prep: Preprocessing, monochrome1: bool = False) -> np.ndarray:
    """Window modality values into [0, 1], bright meaning dense, as the card says (float32, a new array)."""
    low, width = window_bounds(values, prep)
    scaled = np.subtract(values, np.float32(low), dtype=np.float32)
    scaled *= np.float32(1.0 / width)
    np.clip(scaled, 0.0, 1.0, out=scaled)
    if monochrome1:
        np.subtract(np.float32(1.0), scaled, out=scaled)
    return scaled


def fit_to_square(image: np.ndarray, size: int) -> np.ndarray:
    """Aspect-preserving resize so that the longer side is `size`, centred on a zero square."""
    h, w = image.shape
    scale, top, left = letterbox_geometry((h, w), size)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    resized = torch.nn.functional.interpolate(tensor, size=(nh, nw), mode="bilinear",
                                              antialias=scale < 1, align_corners=False)[0, 0].numpy()
    out = np.zeros((size, size), dtype=np.float32)
    out[top:top + nh, left:left + nw] = np.clip(resized, 0.0, 1.0)
    return out


def letterbox_geometry(source_shape: tuple[int, int], size: int) -> tuple[float, int, int]:
    """(scale, top, left) of `fit_to_square`: source pixel (r, c) lands at (top + r*scale, left + c*scale)."""
    h, w = source_shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return scale, (size - nh) // 2, (size - nw) // 2


def prepare_values(values: np.ndarray, prep: Preprocessing, monochrome1: bool = False) -> np.ndarray:
    """Modality-unit image to model input."""
    return fit_to_square(to_unit_range(values, prep, monochrome1), prep.input_size)


def prepare_dataset(ds: Dataset, prep: Preprocessing) -> list[PreparedFrame]:
    """Every frame of a DICOM image as model input; raises `NotEvaluable` with the reason."""
    monochrome1 = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    frames = frames_in_modality_units(ds)
    numbered = len(frames) > 1 or int(ds.get("NumberOfFrames", 1) or 1) > 1
    return [
        PreparedFrame(i + 1 if numbered else None, prepare_values(values, prep, monochrome1),
                      (values.shape[0], values.shape[1]))
        for i, values in enumerate(frames)
    ]


def png_values_in_modality_units(values: np.ndarray, kind: Literal["xray", "ct"]) -> np.ndarray:
    """A PNG's pixel values as modality values (CT PNGs hold HU + CT_PNG_OFFSET)."""
    return values - CT_PNG_OFFSET if kind == "ct" else values


def png_in_modality_units(path: Path, kind: Literal["xray", "ct"]) -> np.ndarray:
    """A greyscale PNG (8 or 16 bit) as modality values; CT PNGs hold HU + CT_PNG_OFFSET."""
    with Image.open(path) as img:
        grey = img if img.mode in ("I;16", "I;16B", "I", "L") else img.convert("L")
        values = np.asarray(grey, dtype=np.float32)
    if values.ndim != 2:
        raise NotEvaluable(f"{path.name}: not a greyscale image")
    return png_values_in_modality_units(values, kind)
