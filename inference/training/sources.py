"""Real source images that ship inside registry packages, as modality-unit arrays.

Radiographs: pydicom-data's RG1 (chest CR) and RG3 (extremity CR), deid-data's DX radiograph.
CT: pydicom-data's and pydicom's CT slices and the Enhanced CT. Each file is one source group:
crops of one image never end up in two splits.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from scipy.ndimage import zoom

from core.errors import NotEvaluable
from inference.preprocess import frames_in_modality_units

log = logging.getLogger(__name__)

_XRAY_FILES = [("data_store", "RG1_UNCR.dcm"), ("data_store", "RG3_UNCR.dcm"), ("deid_data", "animals/cat.dcm")]
_CT_FILES = [("data_store", "693_UNCR.dcm"), ("data_store", "eCT_Supplemental.dcm"),
             ("data_store", "explicit_VR-UN.dcm"), ("pydicom.data", "test_files/CT_small.dcm"),
             ("pydicom.data", "test_files/J2K_pixelrep_mismatch.dcm")]


@dataclass(frozen=True)
class RealImage:
    group: str
    values: np.ndarray  # modality units (raw for X-ray, HU for CT), bright = dense


def package_file(package: str, relative: str) -> Path | None:
    """A data file shipped by an installed package, or None."""
    try:
        module = __import__(package, fromlist=["__file__"])
    except ImportError:
        return None
    if module.__file__ is None:
        return None
    base = Path(module.__file__).parent
    for candidate in (base / "data" / relative, base / relative):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def real_images(kind: str) -> tuple[RealImage, ...]:
    """The packaged real images for a kind ("xray" or "ct"); missing packages are skipped."""
    images = []
    for package, relative in _XRAY_FILES if kind == "xray" else _CT_FILES:
        path = package_file(package, relative)
        if path is None:
            log.warning("real source %s/%s not installed; skipped", package, relative)
            continue
        ds = dcmread(path)
        try:
            frames = frames_in_modality_units(ds)
        except NotEvaluable as exc:
            log.warning("real source %s skipped: %s", path.name, exc)
            continue
        monochrome1 = str(ds.get("PhotometricInterpretation")) == "MONOCHROME1"
        for values in frames:
            if monochrome1:  # store bright = dense, like the phantoms
                values = float(values.max()) + float(values.min()) - values
            images.append(RealImage(f"real-{path.stem}", values.astype(np.float32)))
    return tuple(images)


def random_crop(rng: np.random.Generator, image: RealImage, size: int) -> np.ndarray:
    """A random square crop (40-100% of the shorter side), flipped at random, resized to `size`."""
    values = image.values
    side = min(values.shape)
    crop = int(side * rng.uniform(0.4, 1.0))
    r = int(rng.integers(0, values.shape[0] - crop + 1))
    c = int(rng.integers(0, values.shape[1] - crop + 1))
    patch = values[r:r + crop, c:c + crop]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    out = zoom(patch, size / crop, order=1)[:size, :size]
    if out.shape != (size, size):
        out = np.pad(out, [(0, size - out.shape[0]), (0, size - out.shape[1])], "edge")
    return out.astype(np.float32)
