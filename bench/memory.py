"""Memory: the resident set of `dfnode serve` with both models loaded, and while 2,000 instances are
received, evaluated and reported (10 CT series of 200 slices, each scored while it waits for the
shipped stable time), to see that it does not grow.

    .venv/bin/python -m bench.memory [--series 10] [--slices 200]
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from bench.common import REPO, in_temp_folder, print_table, with_new_uids, with_shipped_stable_times
from tests.conftest import node_config_raw
from tests.helpers import Receiver, ct_series, free_port, send, wait_for
from tests.serve_process import start_serve, write_config


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) of a process, MiB."""
    status = Path(f"/proc/{pid}/status").read_text()

    def field(name: str) -> float:
        found = re.search(rf"{name}:\s*(\d+) kB", status)
        return int(found.group(1)) / 1024 if found else float("nan")
    return field("VmRSS"), field("VmHWM")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10)
    parser.add_argument("--slices", type=int, default=200)
    args = parser.parse_args()
    in_temp_folder("memory", lambda folder: run(folder, args.series, args.slices))


def run(folder: Path, series: int, slices: int) -> None:
    template = ct_series(folder / "template", slices=slices, size=512)
    receiver = Receiver().start()
    port = free_port()
    raw = with_shipped_stable_times(node_config_raw(folder / "var", REPO / "weights", receiver.port,
                                                    node={"port": port},
                                                    console={"enabled": True, "port": free_port()}))  # as shipped
    config = write_config(raw, folder / "config.yaml")
    first = start_serve(config, port, folder / "serve-first.log")  # exports the models for onnxruntime
    rows = [["first start (exports both models), idle", *(f"{v:.0f}" for v in memory_mib(first.process.pid))]]
    first.terminate()
    serve = start_serve(config, port, folder / "serve.log")
    pid = serve.process.pid
    rows.append(["restart: both models loaded, idle", *(f"{v:.0f}" for v in memory_mib(pid))])
    try:
        for n in range(1, series + 1):
            files = with_new_uids(template, folder / f"s{n}")
            assert set(send(files, port)) == {0}
            wait_for(lambda: len(receiver.reports()) >= n, timeout=900)  # noqa: B023 (called before n changes)
            shutil.rmtree(folder / f"s{n}")
            rows.append([f"after {n * slices} instances received, evaluated, reported", *(f"{v:.0f}" for v in
                                                                                          memory_mib(pid))])
    finally:
        serve.terminate()
        receiver.stop()
    half = float(rows[len(rows) // 2][1])
    growth = float(rows[-1][1]) - half
    rows.append(["growth over the second half", f"{growth:+.0f}", ""])
    print_table("Memory of dfnode serve (MiB; target: peak < 1,536 and no growth)", ["when", "resident", "peak"],
                rows)


if __name__ == "__main__":
    main()
