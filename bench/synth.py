"""Synthesis throughput: `dfnode synth`'s process pool with one torch thread per worker, against a
plain pool whose workers each start a torch thread pool as wide as the machine.

    .venv/bin/python -m bench.synth [--kind knee] [--count 256] [--size 256] [--workers N] [--rounds 2]

Both pools run the same pairs (every family, the GAN's included, with a GAN trained for a few steps)
in alternating rounds; the table gives pairs/s per pool and their ratio.
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
from inference.training.synth import (
    KIND_FOR_MODEL,
    SynthSpec,
    _make_pair_job,
    train_synthesis_gan,
    worker_pool,
)


def pairs_per_second(pool: ProcessPoolExecutor, spec: SynthSpec, gan: object, first: int) -> float:
    """Pairs/s of one round: `spec.count` pairs from index `first`, written to a scratch folder."""
    out = Path(tempfile.mkdtemp(prefix="dfnode-bench-synth-"))
    try:
        (out / spec.kind).mkdir()
        jobs = [(spec, first + i, out, gan) for i in range(spec.count)]
        started = time.perf_counter()
        for _ in pool.map(_make_pair_job, jobs, chunksize=8):
            pass
        return spec.count / (time.perf_counter() - started)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="knee", choices=sorted(KIND_FOR_MODEL))
    parser.add_argument("--count", type=int, default=256, help="pairs per round")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    workers = max(2, args.workers)
    spec = SynthSpec(KIND_FOR_MODEL[args.kind], args.count, args.size, seed=1, gan_steps=20, gan_sources=64)
    pools = {"plain": ProcessPoolExecutor(workers), "one thread": worker_pool(workers)}
    for pool in pools.values():  # every worker forked before this process runs torch (as synth does)
        assert pool is not None
        list(pool.map(time.sleep, [0.2] * workers))
    gan = train_synthesis_gan(spec, progress=False)
    rates: dict[str, list[float]] = {name: [] for name in pools}
    for round_number in range(args.rounds):
        for name, pool in pools.items():
            rates[name].append(pairs_per_second(pool, spec, gan, round_number * args.count))  # type: ignore[arg-type]
    for pool in pools.values():
        pool.shutdown()  # type: ignore[union-attr]
    plain, single = median(rates["plain"]), median(rates["one thread"])
    print_table(f"Synthesis, {args.kind} at {args.size} px, {args.count} pairs per round, {workers} workers, "
                f"median of {args.rounds}",
                ["pool", "pairs/s", "vs plain"],
                [["plain ProcessPoolExecutor (torch threads as wide as the machine)", f"{plain:.1f}", "1.00x"],
                 ["dfnode synth's pool (one torch thread per worker)", f"{single:.1f}", f"{single / plain:.2f}x"]])


if __name__ == "__main__":
    main()
