"""What training's data costs on one core: a phantom, a synthesised pair, and a training item (a file
read, windowed, augmented and letterboxed; or an online pair's image), per kind.

    .venv/bin/python -m bench.training_data [--size 256] [--count 60]

On a GPU the loader processes, not the GPU, set the training speed (README, "Results of the shipped
weights"), so these milliseconds per item bound the images per second a run can train on.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.common import print_table
from inference.preprocess import Preprocessing
from inference.training.datasets import load_samples
from inference.training.manipulations import families_for
from inference.training.online import online_pairs
from inference.training.phantoms import knee_radiograph, lung_ct_slice
from inference.training.synth import SynthSpec, synthesise, synthesise_pair
from inference.training.train import _TrainImages

PHANTOMS = {"xray": knee_radiograph, "ct": lung_ct_slice}


def milliseconds(count: int, run: Callable[[int], object]) -> float:
    """Mean milliseconds of `run(i)` over i < count."""
    started = time.perf_counter()
    for i in range(count):
        run(i)
    return (time.perf_counter() - started) / count * 1000


def measure(kind: str, size: int, count: int, folder: Path) -> list[list[str]]:
    local = tuple(families_for(kind))
    spec = SynthSpec(kind, count, size, seed=3, real_fraction=0.0, families=local)
    synthesise(spec, folder / kind, progress=False)
    samples = load_samples(folder / kind)
    items = _TrainImages(samples, Preprocessing(kind=kind, input_size=size), 0,  # type: ignore[arg-type]
                         online_pairs(samples, kind, size, 0, count))
    files, online = len(samples), 2 * count
    rows = [("phantom", milliseconds(count, lambda i: PHANTOMS[kind](np.random.default_rng(i), size))),
            ("pair (phantom, manipulation; a donor for splicing)",
             milliseconds(count, lambda i: synthesise_pair(spec, i))),
            ("training item from a file", milliseconds(files, lambda i: items[(0, i)])),
            ("training item of an online pair", milliseconds(online, lambda i: items[(0, files + i)]))]
    return [[kind, name, f"{ms:.1f}"] for name, ms in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--count", type=int, default=60, help="phantoms, pairs and online pairs per kind")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="dfnode-bench-training-data-"))
    try:
        rows = [row for kind in PHANTOMS for row in measure(kind, args.size, args.count, folder)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print_table(f"Training data on one core, {args.size} px, local families, {args.count} of each",
                ["kind", "what", "ms each"], rows)


if __name__ == "__main__":
    main()
