"""Twin crops at the image's own pixel scale: the training data of the forensic design.

A pair is made where a user's image would be manipulated: in a native-size image (a 1,000-2,400 px
radiograph phantom or packaged real radiograph, a 512 px CT slice), inside a region around the
crop, in modality units. Both twins are windowed with the whole source image's window, go through
the same benign degradations (before cropping: JPEG, JPEG 2000, noise, blur, resampling, gamma,
sharpening, offsets), and are cropped at the same position, most often over the manipulated box. Only
flips and quarter turns follow; nothing resamples the crop.

The curriculum (`Level`) sets how strong a trace must be (how much the manipulation changes the noise
level inside its box) and how often the degradations apply.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.forensic import CELL_STRIDE, noise_level
from inference.preprocess import Preprocessing, window_bounds
from inference.training.augment import NATIVE_BENIGN, benign_degrade
from inference.training.gan import GAN_FAMILY, GanSynthesiser, fake_like
from inference.training.manipulations import TAKES_A_DONOR, Manipulation, Tampered, families_for
from inference.training.phantoms import knee_radiograph, lung_ct_slice
from inference.training.sources import real_images

XRAY_SIDES = (1000, 2400)  # native phantom radiographs: square sides drawn in this range, then cut to an aspect
CT_SIDE = 512


@dataclass(frozen=True)
class Level:
    """One curriculum level: the least noise-level change (|log ratio| inside the box) a manipulation must
    make, and how much of the degradations it applies: each benign kind with odds `degrade` / 4 (at 1,
    two of the eight kinds on average; at 0, none)."""

    name: str
    min_trace: float
    degrade: float


CURRICULUM = (Level("easy", 0.25, 0.0), Level("medium", 0.1, 0.5), Level("real", 0.0, 1.0))
MAX_DRAWS = 6


@dataclass(frozen=True)
class Source:
    """A pristine native image in modality units (bright = dense) and its whole-image window."""

    group: str
    values: np.ndarray
    low: float
    width: float

    def unit(self, values: np.ndarray) -> np.ndarray:
        return np.clip((values - self.low) / self.width, 0.0, 1.0).astype(np.float32)


def _source(group: str, values: np.ndarray, kind: str) -> Source:
    low, width = window_bounds(values, Preprocessing(kind, 256))  # type: ignore[arg-type]
    return Source(group, values.astype(np.float32), low, width)


def _phantom(args: tuple[str, int, int]) -> Source:
    kind, seed, index = args
    rng = np.random.default_rng([seed, 0x5EED, index])
    if kind == "ct":
        return _source(f"phantom-{seed}-{index}", lung_ct_slice(rng, CT_SIDE), kind)
    side = int(rng.integers(*XRAY_SIDES))
    image = knee_radiograph(rng, side)
    keep = int(side * rng.uniform(0.7, 1.0))  # a portrait or landscape detector
    image = image[:keep] if rng.random() < 0.5 else image[:, :keep]
    return _source(f"phantom-{seed}-{index}", image, kind)


def phantom_sources(kind: str, seed: int, indices: range, workers: int = 2) -> list[Source]:
    """Native phantoms `indices` of the stream `seed` (the same images whatever the workers)."""
    jobs = [(kind, seed, i) for i in indices]
    if workers <= 1 or len(jobs) < 2:
        return [_phantom(job) for job in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_phantom, jobs))


def real_sources(kind: str) -> list[Source]:
    """The packaged real images, each its own group."""
    return [_source(image.group, image.values, kind) for image in real_images(kind)]


@dataclass(frozen=True)
class Twins:
    """A pristine crop, its manipulated twin, the box's coverage of each cell, and the family."""

    pristine: np.ndarray  # (2, C, C): `forensic_input` channels
    tampered: np.ndarray
    coverage: np.ndarray  # (C / CELL_STRIDE, C / CELL_STRIDE): share of each cell inside the box
    family: str
    trace: float


def trace_strength(pristine: np.ndarray, tampered: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """|log| of the ratio of the noise levels inside the box, after and before."""
    r0, c0, r1, c1 = box
    if r1 - r0 < 4 or c1 - c0 < 4:
        return 0.0
    before, after = (_box_noise(image[r0:r1, c0:c1]) for image in (pristine, tampered))
    return float(abs(np.log((after + 1e-6) / (before + 1e-6))))


def _box_noise(x: np.ndarray) -> float:
    residual = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
    return float(np.median(np.abs(residual)))


def anatomy_origin(rng: np.random.Generator, source: Source, size: tuple[int, int]) -> tuple[int, int]:
    """A region's top-left corner, preferring regions with structure (not flat background)."""
    rows, cols = source.values.shape
    best, best_spread = (0, 0), -1.0
    for _ in range(6):
        r = int(rng.integers(0, rows - size[0] + 1))
        c = int(rng.integers(0, cols - size[1] + 1))
        sample = source.unit(source.values[r:r + size[0]:16, c:c + size[1]:16])
        spread = float(sample.std())
        if spread > 0.08:
            return r, c
        if spread > best_spread:
            best, best_spread = (r, c), spread
    return best


def strong_enough(manipulate: Manipulation, rng: np.random.Generator, region: np.ndarray,
                   donor: np.ndarray | None, level: Level) -> tuple[Tampered, float]:
    """The manipulation drawn until its trace reaches the level's, at most MAX_DRAWS times (then the
    strongest draw); draws that change nothing inside their box are never kept when another does."""
    best: tuple[Tampered, float] | None = None
    for _ in range(MAX_DRAWS):
        tampered = manipulate(rng, region, donor)
        assert tampered.box is not None
        changed = not np.array_equal(tampered.image, region)
        trace = trace_strength(region, tampered.image, tampered.box) if changed else -1.0
        if changed and trace >= level.min_trace:
            return tampered, trace
        if best is None or trace > best[1]:
            best = (tampered, trace)
    assert best is not None
    return best


def _crop_origin(rng: np.random.Generator, box: tuple[int, int, int, int] | None, region: int, crop: int
                 ) -> tuple[int, int]:
    """Where the crop starts in the region: mostly over the box (its centre jittered), sometimes (and for a
    whole-image fake always) anywhere."""
    if box is not None and rng.random() < 0.8:
        r0, c0, r1, c1 = box
        centre = np.array([(r0 + r1) / 2, (c0 + c1) / 2]) + rng.uniform(-crop / 3, crop / 3, 2)
        origin = np.round(centre - crop / 2).astype(int)
    else:
        origin = rng.integers(0, region - crop + 1, 2)
    return int(np.clip(origin[0], 0, region - crop)), int(np.clip(origin[1], 0, region - crop))


def cell_coverage(mask: np.ndarray) -> np.ndarray:
    """The share of each CELL_STRIDE x CELL_STRIDE cell that `mask` covers."""
    h, w = (s // CELL_STRIDE for s in mask.shape)
    return mask[:h * CELL_STRIDE, :w * CELL_STRIDE].reshape(h, CELL_STRIDE, w, CELL_STRIDE).mean(axis=(1, 3))


def donor_region_for(rng: np.random.Generator, family: str, source: Source, donor: Source, side: int
                     ) -> np.ndarray | None:
    """A side x side region of the donor for the families that take one (of the source itself when the
    donor is smaller), else None."""
    if family not in TAKES_A_DONOR:
        return None
    if min(donor.values.shape) < side:
        donor = source
    r, c = anatomy_origin(rng, donor, (side, side))
    return donor.values[r:r + side, c:c + side]


def make_twins(rng: np.random.Generator, kind: str, source: Source, donor: Source, family: str, level: Level,
               crop: int, gan: GanSynthesiser | None = None) -> Twins:
    """One pair of twin crops (see the module's docstring). The `gan` family replaces the whole region by
    an image of the run's synthesis GAN, brought to the region's size and intensities (every cell is
    fake)."""
    from inference.forensic import forensic_input

    side = min(2 * crop, *source.values.shape) if kind == "xray" else min(source.values.shape)
    size = (side, side)
    r, c = anatomy_origin(rng, source, size)
    region = np.rint(source.values[r:r + side, c:c + side])  # stored values are whole numbers, as DICOM's are
    mask = np.zeros(size, dtype=np.float32)
    box: tuple[int, int, int, int] | None = None
    if family == GAN_FAMILY:
        fake, trace = generated_like(rng, gan, region), float("inf")
        mask[:] = 1.0
    else:
        tampered, trace = strong_enough(families_for(kind)[family], rng, region,
                                        donor_region_for(rng, family, source, donor, side), level)
        assert tampered.box is not None
        fake, box = tampered.image, tampered.box
        mask[box[0]:box[2], box[1]:box[3]] = 1.0
    twins = [source.unit(region), source.unit(np.rint(fake))]
    degradations = [name for name in NATIVE_BENIGN if rng.random() < level.degrade / 4]
    degrade_seed = int(rng.integers(1 << 31))
    for name in degradations:
        twins = [benign_degrade(np.random.default_rng(degrade_seed), image, name) for image in twins]
        degrade_seed += 1
    cr, cc = _crop_origin(rng, box, side, crop)
    window = (slice(cr, cr + crop), slice(cc, cc + crop))
    turns, flip = int(rng.integers(4)), bool(rng.random() < 0.5)

    def view(image: np.ndarray) -> np.ndarray:
        out = np.rot90(image[window], turns)
        return np.ascontiguousarray(out[:, ::-1] if flip else out)

    inputs = [forensic_input(view(image), noise_level(image)) for image in twins]
    return Twins(inputs[0], inputs[1], cell_coverage(view(mask)), family, trace)


def generated_like(rng: np.random.Generator, gan: GanSynthesiser | None, pristine: np.ndarray) -> np.ndarray:
    """A fresh image of the synthesis GAN at the pristine image's size and intensities."""
    if gan is None:
        raise ValueError("the gan family needs the run's synthesis GAN")
    (generated,) = gan.generate([int(rng.integers(1 << 30))], 0)
    return fake_like(generated, pristine)


@dataclass(frozen=True)
class SourceSplit:
    train: list[Source]
    val: list[Source]
    test: list[Source]


def real_split(groups: list[str], seed: int) -> dict[str, str]:
    """Each packaged real image's split: about a third to test, the rest to training (validation is
    made of phantoms), in a seeded order."""
    order = sorted(groups)
    np.random.default_rng([seed, 0x7E57]).shuffle(order)
    return {group: ("test" if n % 3 == 0 else "train") for n, group in enumerate(order)}


TEST_STREAM = 1_000_000  # phantom indices of the test images: never drawn for training or validation


def folder_sources(kind: str, folder: Path | None) -> list[Source]:
    """Pristine images of the user's (DICOM, or 16-bit PNG in the synth convention) under `folder`, each
    its own group; none without a folder."""
    if folder is None:
        return []
    from inference.training.datasets import IMAGE_SUFFIXES, load_values

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no DICOM or PNG images found")
    sources = []
    for path in files:
        values, monochrome1 = load_values(path, kind)
        if monochrome1:  # bright = dense, like the phantoms
            values = float(values.max()) + float(values.min()) - values
        sources.append(_source(f"user-{path.relative_to(folder).with_suffix('')}", values, kind))
    return sources


def split_sources(kind: str, seed: int, train: int, val: int, min_side: int, workers: int = 2,
                  pristine: Path | None = None) -> SourceSplit:
    """Training and validation sources: phantoms of the run's stream, and the packaged real images and
    the user's pristine images (`pristine`) of the training split, at least `min_side` pixels a side."""
    reals = [s for s in real_sources(kind) + folder_sources(kind, pristine) if min(s.values.shape) >= min_side]
    where = real_split(sorted({s.group for s in reals}), seed)
    phantoms = phantom_sources(kind, seed, range(train + val), workers)
    return SourceSplit(phantoms[:train] + [s for s in reals if where[s.group] == "train"], phantoms[train:],
                       [s for s in reals if where[s.group] == "test"])


def test_sources(kind: str, seed: int, count: int, workers: int = 2, pristine: Path | None = None) -> list[Source]:
    """The test images' sources: `count` phantoms of the test stream and the real (packaged, and the user's
    `pristine`) images of the test split."""
    reals = real_sources(kind) + folder_sources(kind, pristine)
    where = real_split(sorted({s.group for s in reals}), seed)
    return (phantom_sources(kind, seed, range(TEST_STREAM, TEST_STREAM + count), workers)
            + [s for s in reals if where[s.group] == "test"])
