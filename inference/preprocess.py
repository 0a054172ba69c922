"""DICOM (or PNG) pixel data to model input: one float32 square image in [0, 1] per frame.

The same code serves the node and training, so the model sees at run time what it learned on.

Steps, for every input the node accepts:
1. decode (pydicom with the pylibjpeg plugins: JPEG baseline/lossless/LS, JPEG 2000, RLE, deflate);
2. Modality LUT (Rescale Slope/Intercept, also per frame for Enhanced CT);
3. windowing from the model card: a fixed HU window for CT, robust percentiles for radiographs;
4. MONOCHROME1 inverted so that bone is bright everywhere;
5. aspect-preserving resize into the model's square input, zero-padded (`inference.letterbox`).

Integer pixels with a linear Modality LUT take a shorter road to the same input (within one stored
value's step): clipped at the window in stored units, box-averaged, and only then rescaled and windowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from core.errors import NotEvaluable
from inference.letterbox import clipped_box_means, fit_to_square, into_square, reduction_factor
from inference.pixels import stored_frames

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
    native: bool = False  # the forensic design: windowed at the image's own size, never resized


@dataclass(frozen=True)
class PreparedFrame:
    """One frame ready for the model; `frame_number` is 1-based, None for single-frame images."""

    frame_number: int | None
    pixels: np.ndarray  # float32 in [0, 1]: (input_size, input_size), or the frame's own size when native
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
    stored = stored_frames(ds)
    return [_modality_values(frame, ds, linear_rescale(ds, index)) for index, frame in enumerate(stored)]


def linear_rescale(ds: Dataset, index: int) -> tuple[float, float] | None:
    """(slope, intercept) of frame `index`'s Modality LUT when it is linear: the frame's functional groups
    in an enhanced multi-frame image, else Rescale Slope/Intercept, (1, 0) without any; None for a
    Modality LUT Sequence or a slope without its intercept (pydicom's `apply_modality_lut` handles those)."""
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        frame_rescale = _frame_rescale(ds, index)
        if frame_rescale is not None:
            return frame_rescale
    if "ModalityLUTSequence" in ds:
        return None
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        return float(ds.RescaleSlope), float(ds.RescaleIntercept)
    if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
        return 1.0, 0.0
    return None


def _modality_values(frame: np.ndarray, ds: Dataset, rescale: tuple[float, float] | None) -> np.ndarray:
    """One frame through the Modality LUT as float32; `NotEvaluable` when that leaves float32's range."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught just below, with the reason
        if rescale is None:
            values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float32)
        else:
            values = frame.astype(np.float32)  # the linear Modality LUT, in float32 throughout
            values *= np.float32(rescale[0])
            values += np.float32(rescale[1])
    if not _surely_finite(frame, rescale) and not np.isfinite(values).all():
        raise NotEvaluable("pixel values are not finite after the Modality LUT (bad rescale attributes)")
    return values


def _surely_finite(pixels: np.ndarray, rescale: tuple[float, float] | None) -> bool:
    """True when integer pixels through a finite linear rescale cannot leave float32's range, so that
    the result needs no check (3.6 million checks on a large radiograph)."""
    if rescale is None or pixels.dtype.kind not in "iu":
        return False
    slope, intercept = rescale
    return bool(np.isfinite(slope) and np.isfinite(intercept) and abs(slope) < 1e28 and abs(intercept) < 1e37)


PERCENTILE_SAMPLE = 1 << 18  # pixels the radiograph percentiles are taken from (a regular grid)


def window_bounds(values: np.ndarray, prep: Preprocessing,
                  rescale: tuple[float, float] = (1.0, 0.0)) -> tuple[float, float]:
    """(low, width) of the window in modality units: the card's HU window for CT, robust percentiles
    for radiographs, taken of `values` and mapped through a rising linear `rescale` (so that stored
    values give the window of their modality values).

    Percentiles come from a regular grid of about PERCENTILE_SAMPLE pixels: on a 2,000 x 2,000
    radiograph that is 16 times less sorting for a difference far below one grey level."""
    if prep.kind == "ct":
        return prep.window_center - prep.window_width / 2, prep.window_width
    step = max(1, int(np.ceil(np.sqrt(values.size / PERCENTILE_SAMPLE))))
    sample = values[::step, ::step] if values.ndim == 2 else values
    lo, hi = percentiles(sample, (prep.percentile_low, prep.percentile_high))
    slope, intercept = rescale
    return float(lo) * slope + intercept, max(float(hi - lo) * slope, 1e-6)


def percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """`np.percentile(values, qs)` (its linear method); unsigned 8- and 16-bit values are counted in a
    histogram instead of sorted (a fifth of the time for a radiograph's sample), with the same result."""
    if values.dtype.kind != "u" or values.dtype.itemsize > 2 or values.size == 0:
        return [float(v) for v in np.percentile(values, qs)]
    flat = values.ravel()
    at_or_below = np.cumsum(np.bincount(flat))  # at_or_below[v]: how many values are <= v
    last = flat.size - 1
    out = []
    for q in qs:
        position = q / 100 * last
        rank = math.floor(position)
        a, b = (float(v) for v in np.searchsorted(at_or_below, [rank, min(rank + 1, last)], side="right"))
        t = position - rank
        out.append(a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t))  # as numpy interpolates
    return out


def to_unit_range(values: np.ndarray, prep: Preprocessing, monochrome1: bool = False) -> np.ndarray:
    """Window modality values into [0, 1], bright meaning dense, as the card says (float32, a new array)."""
    low, width = window_bounds(values, prep)
    scaled = np.subtract(values, np.float32(low), dtype=np.float32)
    scaled *= np.float32(1.0 / width)
    np.clip(scaled, 0.0, 1.0, out=scaled)
    if monochrome1:
        np.subtract(np.float32(1.0), scaled, out=scaled)
    return scaled


def prepare_values(values: np.ndarray, prep: Preprocessing, monochrome1: bool = False) -> np.ndarray:
    """Modality-unit image to model input."""
    if prep.native:
        return to_unit_range(values, prep, monochrome1)
    return fit_to_square(to_unit_range(values, prep, monochrome1), prep.input_size)


def prepare_dataset(ds: Dataset, prep: Preprocessing) -> list[PreparedFrame]:
    """Every frame of a DICOM image as model input; raises `NotEvaluable` with the reason."""
    check_evaluable(ds)
    monochrome1 = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    stored = stored_frames(ds)
    numbered = len(stored) > 1 or int(ds.get("NumberOfFrames", 1) or 1) > 1
    prepared = []
    for index, frame in enumerate(stored):
        rescale = linear_rescale(ds, index)
        if prep.native:
            pixels = to_unit_range(_modality_values(frame, ds, rescale), prep, monochrome1)
        elif rescale is not None and _windowable_in_stored_units(frame, rescale):
            pixels = _prepare_stored(frame, rescale, prep, monochrome1)
        else:
            pixels = prepare_values(_modality_values(frame, ds, rescale), prep, monochrome1)
        prepared.append(PreparedFrame(index + 1 if numbered else None, pixels, (frame.shape[0], frame.shape[1])))
    return prepared


def _windowable_in_stored_units(frame: np.ndarray, rescale: tuple[float, float]) -> bool:
    """Whether `_prepare_stored` gives this frame's input: integer values, a rising and finite rescale."""
    return rescale[0] > 0 and _surely_finite(frame, rescale)


def _prepare_stored(frame: np.ndarray, rescale: tuple[float, float], prep: Preprocessing,
                    monochrome1: bool) -> np.ndarray:
    """`prepare_values` of the frame's modality values, computed on the stored integers: clipped at the
    window's edges (rounded outwards to whole stored values: the result differs by less than one stored
    value's step), box-averaged, and only then rescaled and windowed, on the small image."""
    slope, intercept = rescale
    low, width = window_bounds(frame, prep, rescale)
    limits = np.iinfo(frame.dtype)
    first = min(max(math.floor((low - intercept) / slope), limits.min), limits.max)
    last = min(max(math.ceil((low + width - intercept) / slope), limits.min), limits.max)
    factor = reduction_factor(frame.shape, prep.input_size)  # type: ignore[arg-type]
    small = clipped_box_means(frame, factor, first, last)
    small *= np.float32(slope / width)
    small += np.float32((intercept - low) / width)
    np.clip(small, 0.0, 1.0, out=small)
    if monochrome1:
        np.subtract(np.float32(1.0), small, out=small)
    return into_square(small, factor, frame.shape, prep.input_size)  # type: ignore[arg-type]


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
