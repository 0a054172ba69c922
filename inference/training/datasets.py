"""Labelled datasets in the layouts users have: a `synth` manifest, `real/` + `fake/` folders, or a
CSV of path,label,group. Each sample knows its group (patient/scan/source) for splitting."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread

from inference.preprocess import frames_in_modality_units, png_in_modality_units

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ""}
_REAL_NAMES = {"real", "pristine", "0", "authentic", "genuine"}
_FAKE_NAMES = {"fake", "manipulated", "1", "tampered", "synthetic"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 1: manipulated
    group: str
    manipulation: str = ""
    box: tuple[int, int, int, int] | None = None  # (row0, col0, row1, col1) of a local manipulation

    def region_mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """1 inside the manipulated box, 0 elsewhere (all 0 for pristine or whole-image fakes)."""
        mask = np.zeros(shape[:2], dtype=np.float32)
        if self.box is not None and self.label == 1:
            r0, c0, r1, c1 = self.box
            mask[r0:r1, c0:c1] = 1.0
        return mask


def _label(value: str, where: str) -> int:
    v = value.strip().lower()
    if v in _REAL_NAMES:
        return 0
    if v in _FAKE_NAMES:
        return 1
    raise ValueError(f"{where}: label {value!r} is not one of real/fake/0/1")


def _from_csv(path: Path) -> list[Sample]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        samples = []
        for n, row in enumerate(reader, start=2):
            image = (path.parent / row["path"]).resolve()
            group = row.get("group") or row.get("source_id") or image.stem
            box = tuple(int(v) for v in row["box"].split()) if row.get("box") else None
            samples.append(Sample(image, _label(row["label"], f"{path}:{n}"), group,
                                  row.get("manipulation") or "", box))  # type: ignore[arg-type]
    return samples


def _from_folders(root: Path) -> list[Sample]:
    samples = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        label = _label(sub.name, str(sub))
        for image in sorted(sub.rglob("*")):
            if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES:
                # files named <group>_<anything> share a group; otherwise each file is its own
                group = image.stem.split("_")[0] if "_" in image.stem else image.stem
                samples.append(Sample(image, label, group, "pristine" if label == 0 else "unknown"))
    return samples


def load_samples(source: Path) -> list[Sample]:
    """Samples from a manifest/CSV file or a folder with real/ and fake/ subfolders."""
    if source.is_file():
        samples = _from_csv(source)
    elif source.is_dir():
        manifest = source / "manifest.csv"
        samples = _from_csv(manifest) if manifest.is_file() else _from_folders(source)
    else:
        raise FileNotFoundError(f"{source}: no such dataset file or folder")
    if not samples:
        raise ValueError(f"{source}: no images found")
    return samples


def load_values(path: Path, kind: str) -> tuple[np.ndarray, bool]:
    """An image file in modality units and whether it is MONOCHROME1 (middle frame of a volume)."""
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return png_in_modality_units(path, kind), False  # type: ignore[arg-type]
    ds = dcmread(path)
    frames = frames_in_modality_units(ds)
    return frames[len(frames) // 2], str(ds.get("PhotometricInterpretation")) == "MONOCHROME1"
