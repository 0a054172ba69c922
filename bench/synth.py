"""Synthesis throughput: where the synthesis GAN's images are made.

    .venv/bin/python -m bench.synth [--kind knee] [--count 256] [--size 256] [--gan-size 64] [--workers N]

The same pairs (every family, with a GAN trained for a few steps) in alternating rounds, made three ways:
each job running the generator for its own pair, in a plain process pool (every worker's torch as wide
as the machine) and in synth's pool (one torch thread per worker), against `dfnode synth`'s way: the
GAN's images made here in batches and handed to the jobs. The table gives pairs/s and the ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.common import median, print_table
from inference.training.gan import GAN_SIZES, GanSynthesiser
from inference.training.synth import (
    KIND_FOR_MODEL,
    SynthRow,
    SynthSpec,
    _make_pair_job,
    generated_for,
    make_pair,
    pair_jobs,
    train_synthesis_gan,
    worker_pool,
)


def _pair_running_the_generator(args: tuple[SynthSpec, int, Path, GanSynthesiser]) -> list[SynthRow]:
    """One pair whose job runs the generator itself (the generator travels with every job)."""
    spec, index, out, gan = args
    return make_pair(spec, index, out, generated_for(spec, range(index, index + 1), gan)[0])


def pairs_per_second(pool: ProcessPoolExecutor, spec: SynthSpec, gan: GanSynthesiser, first: int,
                     generator_in_jobs: bool) -> float:
    """Pairs/s of one round: `spec.count` pairs from index `first`, written to a scratch folder; the
    GAN's images are made in the jobs or here (that time counted)."""
    out = Path(tempfile.mkdtemp(prefix="dfnode-bench-synth-"))
    try:
        (out / spec.kind).mkdir()
        indices = range(first, first + spec.count)
        started = time.perf_counter()
        if generator_in_jobs:
            done = pool.map(_pair_running_the_generator, [(spec, i, out, gan) for i in indices], chunksize=8)
        else:
            done = pool.map(_make_pair_job, pair_jobs(spec, indices, out, gan), chunksize=8)
        for _ in done:
            pass
        return spec.count / (time.perf_counter() - started)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="knee", choices=sorted(KIND_FOR_MODEL))
    parser.add_argument("--count", type=int, default=256, help="pairs per round")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--gan-size", type=int, default=64, choices=GAN_SIZES)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    workers = max(2, args.workers)
    spec = SynthSpec(KIND_FOR_MODEL[args.kind], args.count, args.size, seed=1, gan_steps=20, gan_sources=64,
                     gan_size=args.gan_size)
    plain, single = ProcessPoolExecutor(workers), worker_pool(workers)
    assert single is not None
    for pool in (plain, single):  # every worker forked before this process runs torch (as synth does)
        list(pool.map(time.sleep, [0.2] * workers))
    gan = train_synthesis_gan(spec, progress=False)
    ways = {"generator in every job, plain pool": (plain, True),
            "generator in every job, one torch thread per worker": (single, True),
            "images made here in batches (dfnode synth)": (single, False)}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for round_number in range(args.rounds):
        for name, (pool, in_jobs) in ways.items():
            rates[name].append(pairs_per_second(pool, spec, gan, round_number * args.count, in_jobs))
    for pool in (plain, single):
        pool.shutdown()
    first = median(rates[next(iter(ways))])
    print_table(f"Synthesis, {args.kind} at {args.size} px, GAN at {args.gan_size} px, {args.count} pairs per "
                f"round, {workers} workers, median of {args.rounds}",
                ["how the GAN's images are made", "pairs/s", "vs the first"],
                [[name, f"{median(r):.1f}", f"{median(r) / first:.2f}x"] for name, r in rates.items()])


if __name__ == "__main__":
    main()
