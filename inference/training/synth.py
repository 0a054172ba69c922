"""`dfnode synth`: labelled pristine/manipulated pairs as 16-bit PNGs plus a manifest CSV.

Every pair comes from one source (a phantom or a crop of a packaged real image) and carries that
source's id as its group, so a grouped split never separates an image from its manipulated twin.
Output is deterministic for a given seed: sample i draws from `default_rng([seed, i])`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from inference.preprocess import CT_PNG_OFFSET, Preprocessing, window_bounds
from inference.training.gan import (
    GAN_FAMILY,
    GanSynthesiser,
    check_gan_size,
    fake_like,
    to_gan_size,
    train_gan,
)
from inference.training.manipulations import TAKES_A_DONOR, Manipulation, Tampered, families_for
from inference.training.phantoms import knee_radiograph, lung_ct_slice
from inference.training.sources import random_crop, real_images

CPU_GAN_SIZE, GPU_GAN_SIZE = 64, 256  # `dfnode synth`'s default GAN size by where the GAN trains
MANIFEST_FIELDS = ["path", "label", "kind", "manipulation", "group", "box"]
KIND_FOR_MODEL = {"knee": "xray", "lung": "ct"}
# A local manipulation must change its box by at least this much on average, on the [0, 1] scale of the
# model's window (one grey level of an 8-bit display): a change the network cannot see is label noise.
MIN_VISIBLE_CHANGE = 1 / 255
MAX_DRAWS = 8  # draws of a manipulation before the most visible one is kept


@dataclass(frozen=True)
class SynthSpec:
    """What to synthesise: `count` sources, each giving a pristine and a manipulated image."""

    kind: str  # "xray" or "ct"
    count: int
    size: int = 320
    seed: int = 0
    real_fraction: float = 0.15
    families: tuple[str, ...] = ()  # empty: every family that applies to the kind, the GAN included
    gan_steps: int = 1500  # training steps of the synthesis GAN (when the "gan" family is made)
    gan_sources: int = 512  # pristine images the GAN learns from
    gan_size: int = 64  # the GAN's images (64, 128 or 256): at the detector's input size on a GPU

    def __post_init__(self) -> None:
        check_gan_size(self.gan_size)

    def family_names(self) -> list[str]:
        """The families this run makes, in the order sources cycle through them."""
        names = [*families_for(self.kind), GAN_FAMILY]
        chosen = [n for n in names if not self.families or n in self.families]
        unknown = set(self.families) - set(names)
        if unknown:
            raise ValueError(f"unknown manipulation family {', '.join(sorted(unknown))} for {self.kind}; "
                             f"known: {', '.join(names)}")
        return chosen


@dataclass(frozen=True)
class SynthRow:
    path: str
    label: int
    kind: str
    manipulation: str
    group: str
    box: str

    def as_dict(self) -> dict[str, str]:
        return {f: str(getattr(self, f)) for f in MANIFEST_FIELDS}


def _source(rng: np.random.Generator, spec: SynthSpec, index: int) -> tuple[str, np.ndarray]:
    """A pristine image in modality units and its group id."""
    reals = real_images(spec.kind)
    if reals and rng.random() < spec.real_fraction:
        image = reals[int(rng.integers(len(reals)))]
        return image.group, random_crop(rng, image, spec.size)
    make = knee_radiograph if spec.kind == "xray" else lung_ct_slice
    return f"phantom-{spec.seed}-{index}", make(rng, spec.size)


def to_png_values(values: np.ndarray, kind: str) -> np.ndarray:
    """Modality units to the 16-bit PNG convention (CT: HU + CT_PNG_OFFSET)."""
    shifted = values + CT_PNG_OFFSET if kind == "ct" else values
    return np.clip(np.rint(shifted), 0, 65535).astype(np.uint16)


def write_png(values: np.ndarray, kind: str, path: Path) -> None:
    Image.fromarray(to_png_values(values, kind)).save(path, compress_level=1)  # fast: synth is CPU-bound


def gan_source(spec: SynthSpec, index: int) -> np.ndarray:
    """Pristine image `index` of the ones the GAN learns from, in [0, 1] at the GAN's size."""
    _, values = _source(np.random.default_rng([spec.seed, 0x6A4, index]), spec, 2_000_000 + index)
    low, high = np.percentile(values, [0.5, 99.5])
    return to_gan_size(np.clip((values - low) / max(high - low, 1e-6), 0, 1), spec.gan_size)


def _gan_source_job(args: tuple[SynthSpec, int]) -> np.ndarray:
    return gan_source(*args)


def train_synthesis_gan(spec: SynthSpec, progress: bool = True, mapper: Callable = map,
                        device: torch.device | None = None) -> GanSynthesiser:
    """The GAN of this run, trained on `gan_sources` pristine images drawn from the run's seed;
    `mapper` makes the sources (a process pool's map in parallel), `device` trains the GAN."""
    images = list(mapper(_gan_source_job, [(spec, i) for i in range(spec.gan_sources)]))
    return GanSynthesiser(train_gan(np.stack(images), spec.gan_steps, spec.seed, progress=progress, device=device))


@dataclass(frozen=True)
class Pair:
    """Source `index`'s pristine image and its manipulated twin, in modality units."""

    group: str
    pristine: np.ndarray
    family: str
    tampered: Tampered


def synthesise_pair(spec: SynthSpec, index: int, generated: np.ndarray | None = None) -> Pair:
    """The pair of source `index`, drawn from `default_rng([spec.seed, index])`; a gan-family pair
    takes the synthesis GAN's image for it (`generated_for`)."""
    rng = np.random.default_rng([spec.seed, index])
    group, pristine = _source(rng, spec, index)
    names = spec.family_names()
    name = names[index % len(names)]
    donor = _source(rng, spec, index + 1_000_000)[1] if name in TAKES_A_DONOR else None
    if name == GAN_FAMILY:
        if generated is None:
            raise ValueError("the gan family needs a trained synthesis GAN")
        tampered = Tampered(fake_like(generated, pristine), None)
    else:
        tampered = visible_manipulation(families_for(spec.kind)[name], rng, pristine, donor, spec.kind)
    return Pair(group, pristine, name, tampered)


def visible_change(pristine: np.ndarray, tampered: Tampered, kind: str) -> float:
    """Mean absolute change inside the box, in the pristine image's model window scaled to [0, 1]
    (the card's HU window for CT, the image's percentiles for radiographs), clipped as the model clips."""
    if tampered.box is None:
        return float("inf")
    low, width = window_bounds(pristine, Preprocessing(kind, pristine.shape[0]))  # type: ignore[arg-type]
    r0, c0, r1, c1 = tampered.box
    before = np.clip((pristine[r0:r1, c0:c1] - low) / width, 0, 1)
    after = np.clip((tampered.image[r0:r1, c0:c1] - low) / width, 0, 1)
    return float(np.abs(after - before).mean())


def visible_manipulation(manipulate: Manipulation, rng: np.random.Generator, pristine: np.ndarray,
                         donor: np.ndarray | None, kind: str) -> Tampered:
    """The manipulation drawn until its change is visible (`MIN_VISIBLE_CHANGE`), at most `MAX_DRAWS`
    times; then the most visible draw. A local resampling of a smooth region, or an in-painting of flat
    background, can otherwise change nothing the model sees and still be labelled manipulated."""
    best, best_change = None, -1.0
    for _ in range(MAX_DRAWS):
        tampered = manipulate(rng, pristine, donor)
        change = visible_change(pristine, tampered, kind)
        if change >= MIN_VISIBLE_CHANGE:
            return tampered
        if change > best_change:
            best, best_change = tampered, change
    assert best is not None
    return best


def generated_for(spec: SynthSpec, indices: range, gan: GanSynthesiser | None) -> list[np.ndarray | None]:
    """The GAN's image for each gan-family pair among `indices` (None for the others), made here in
    batches: the pool's jobs then carry an image each, not the generator."""
    names = spec.family_names()
    wanted = [i for i in indices if names[i % len(names)] == GAN_FAMILY]
    if gan is None or not wanted:
        return [None] * len(indices)
    made = dict(zip(wanted, gan.generate(wanted, spec.seed), strict=True))
    return [made.get(i) for i in indices]


def make_pair(spec: SynthSpec, index: int, out_dir: Path, generated: np.ndarray | None = None) -> list[SynthRow]:
    """Write the pristine and the manipulated image of source `index`."""
    pair = synthesise_pair(spec, index, generated)
    rows = []
    for label, image, kind_name, box in ((0, pair.pristine, "pristine", None),
                                         (1, pair.tampered.image, pair.family, pair.tampered.box)):
        rel = f"{spec.kind}/{index:06d}_{label}.png"
        write_png(image, spec.kind, out_dir / rel)
        box_text = " ".join(map(str, box)) if box else ""
        rows.append(SynthRow(rel, label, spec.kind, kind_name, pair.group, box_text))
    return rows


def pair_jobs(spec: SynthSpec, indices: range, out_dir: Path, gan: GanSynthesiser | None
              ) -> list[tuple[SynthSpec, int, Path, np.ndarray | None]]:
    """The pool's jobs for the pairs `indices` (`_make_pair_job`), each with its GAN image if it needs one."""
    return [(spec, i, out_dir, image) for i, image in zip(indices, generated_for(spec, indices, gan), strict=True)]


def _make_pair_job(args: tuple[SynthSpec, int, Path, np.ndarray | None]) -> list[SynthRow]:
    return make_pair(*args)


def single_threaded_worker() -> None:
    """Initialiser of synth's pool processes: torch on one thread. Each process would otherwise start
    an intra-op pool as wide as the machine for any torch work, and `workers` such pools
    oversubscribe the cores (measured on 16 cores: bench/synth.py)."""
    torch.set_num_threads(1)


def worker_pool(workers: int) -> ProcessPoolExecutor | None:
    """The process pool of a synth run, or None for `workers` <= 1 (everything in this process)."""
    return ProcessPoolExecutor(workers, initializer=single_threaded_worker) if workers > 1 else None


PAIRS_PER_BLOCK = 1024  # a block's generated images (256 px) hold about 40 MB


def synthesise(spec: SynthSpec, out_dir: Path, workers: int = 1, progress: bool = True,
               device: torch.device | None = None) -> Path:
    """Write `spec.count` pairs under `out_dir` and the manifest `out_dir/manifest.csv`; the GAN (when
    the run makes the gan family) trains on `device`, the CPU by default."""
    (out_dir / spec.kind).mkdir(parents=True, exist_ok=True)
    pool = worker_pool(workers)
    try:
        def mapper(job: Callable, args: list) -> Iterator:
            return pool.map(job, args, chunksize=8) if pool is not None else map(job, args)

        gan = (train_synthesis_gan(spec, progress, mapper, device)
               if GAN_FAMILY in spec.family_names() else None)
        rows: list[SynthRow] = []
        with tqdm(total=spec.count, desc=f"synth {spec.kind}", unit="pair", disable=not progress) as bar:
            for block in range(0, spec.count, PAIRS_PER_BLOCK):  # the GAN's images of one block at a time
                indices = range(block, min(block + PAIRS_PER_BLOCK, spec.count))
                for pair in mapper(_make_pair_job, pair_jobs(spec, indices, out_dir, gan)):
                    rows.extend(pair)
                    bar.update()
    finally:
        if pool is not None:
            pool.shutdown()
    return write_manifest(rows, out_dir)


def write_manifest(rows: list[SynthRow], out_dir: Path) -> Path:
    """`out_dir/manifest.csv` with the rows (the layout `inference.training.datasets` reads)."""
    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(r.as_dict() for r in rows)
    return manifest
