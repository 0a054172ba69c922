"""What the benchmarks share: the machine's description, percentiles, tables, the peers and the data.

The peers and the synthetic series come from the test helpers, so a benchmark talks to exactly
what the tests prove correct.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom
import torch
from pydicom.uid import generate_uid

from node.config import Route, load_config
from node.tables import format_table

REPO = Path(__file__).resolve().parent.parent


def machine() -> str:
    """CPU model, cores, memory and torch: the line every table is printed under."""
    cpu = platform.processor() or "unknown CPU"
    try:
        info = Path("/proc/cpuinfo").read_text()
        found = re.search(r"model name\s*:\s*(.+)", info)
        cpu = found.group(1).strip() if found else cpu
        memory = int(re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 2**20  # type: ignore[union-attr]
    except (OSError, AttributeError):
        memory = 0.0
    return (f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def shipped_routes() -> dict[str, Route]:
    """Each model's route in the shipped config.yaml."""
    return {r.model: r for r in load_config(REPO / "config.yaml").routes}


def shipped_stable_seconds() -> dict[str, float]:
    """Each model's `series_stable_seconds` in the shipped config.yaml."""
    return {model: route.series_stable_seconds for model, route in shipped_routes().items()}


def with_shipped_stable_times(raw: dict) -> dict:
    """A config document's routes with the shipped stable and early-scoring times (the tests' stable
    times are short), so that what the node does while a series waits is as shipped."""
    shipped = shipped_routes()
    for route in raw["routes"]:
        route["series_stable_seconds"] = shipped[route["model"]].series_stable_seconds
        route["early_scoring_seconds"] = shipped[route["model"]].early_scoring_seconds
    return raw


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    print(f"\n## {title}\n{machine()}\n")
    print(format_table(headers, rows))


def with_new_uids(paths: list[Path], folder: Path) -> list[Path]:
    """A copy of a series under new study, series and SOP instance UIDs (so no receiver sees a duplicate)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    out = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = folder / path.name
        ds.save_as(target, enforce_file_format=True)
        out.append(target)
    return out


def in_temp_folder(name: str, run: Callable[[Path], None]) -> None:
    """Run a benchmark in a fresh temporary folder, removed afterwards whatever happens."""
    folder = Path(tempfile.mkdtemp(prefix=f"dfnode-bench-{name}-"))
    try:
        run(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def storescu(port: int, called: str, files: list[Path], extra_env: dict[str, str] | None = None) -> None:
    """DCMTK's storescu, one association for all files; raises when it fails."""
    env = {**os.environ, **(extra_env or {})}
    result = subprocess.run(["storescu", "-aet", "PACS", "-aec", called, "127.0.0.1", str(port),
                             *map(str, files)], capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"storescu to {called} failed: {result.stderr[-500:]}")


def start_storescp(folder: Path, port: int, *options: str) -> subprocess.Popen[bytes]:
    """DCMTK's storescp as AE `PACS` on `port`, writing into `folder` (created), with `TCP_NODELAY=1`
    (which it needs on loopback); returns once it listens."""
    from tests.helpers import listening, require_tool, wait_for

    folder.mkdir(parents=True)
    process = subprocess.Popen([require_tool("storescp"), "-aet", "PACS", "-od", str(folder), *options, str(port)],
                               env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: listening(port), timeout=20)
    return process
