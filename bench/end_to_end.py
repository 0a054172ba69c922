"""End to end: from the last C-STORE of a study to its SR arriving at the PACS, through `dfnode serve`
with the shipped models and the shipped stable times. 20 knee radiographs one by one, then one
300-slice CT series, whose time is compared with slices / the path's measured throughput.

    .venv/bin/python -m bench.end_to_end [--studies 20] [--slices 300]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pydicom

from bench.common import REPO, in_temp_folder, percentile, print_table
from inference.model import load_classifier
from inference.scoring import score_files
from node.config import load_config
from tests.conftest import node_config_raw
from tests.helpers import Receiver, copy_with_new_uids, ct_series, free_port, real_file, send, wait_for
from tests.serve_process import start_serve, write_config


def shipped_stable_seconds() -> dict[str, float]:
    return {r.model: r.series_stable_seconds for r in load_config(REPO / "config.yaml").routes}


def seconds_to_report(receiver: Receiver, files: list[Path], port: int) -> float:
    """Send the files in one association; seconds from the last response to the study's SR arriving."""
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    assert set(send(files, port)) == {0}
    sent = time.monotonic()

    def arrival() -> float | None:
        with receiver.lock:
            return next((t for ds, t in zip(receiver.received, receiver.arrived_at, strict=True)
                         if ds.Modality == "SR" and ds.StudyInstanceUID == study), None)
    arrived = wait_for(arrival, timeout=900, interval=0.01)
    assert isinstance(arrived, float)
    return arrived - sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args()
    in_temp_folder("end-to-end", lambda folder: run(folder, args.studies, args.slices))


def run(folder: Path, studies: int, slices: int) -> None:
    stable = shipped_stable_seconds()
    ct = ct_series(folder / "ct", slices=slices, size=512)
    lung = load_classifier(REPO / "weights" / "lung.json", backend="onnxruntime", cache_dir=folder / "cache")
    score_files(lung, ct[:16])  # warm-up
    started = time.perf_counter()
    score_files(lung, ct)
    throughput = slices / (time.perf_counter() - started)
    del lung

    receiver = Receiver().start()
    port = free_port()
    raw = node_config_raw(folder / "var", REPO / "weights", receiver.port, node={"port": port})
    for route in raw["routes"]:
        route["series_stable_seconds"] = stable[route["model"]]
    serve = start_serve(write_config(raw, folder / "config.yaml"), port, folder / "serve.log")
    try:
        knee = [seconds_to_report(receiver, [copy_with_new_uids(real_file("RG1_UNCR.dcm"), folder / f"knee{i}",
                                                                BodyPartExamined="KNEE")], port)
                for i in range(studies)]
        ct_seconds = seconds_to_report(receiver, ct, port)
    finally:
        serve.terminate()
        receiver.stop()
    beyond = [s - stable["knee"] for s in knee]
    expected = slices / throughput
    ct_beyond = ct_seconds - stable["lung"]
    print_table("End to end: last C-STORE to the SR at the PACS (dfnode serve, shipped models and stable times)",
                ["study", "stable time", "p50 beyond it", "p95 beyond it", "target", "met"],
                [[f"{studies} knee radiographs (1,955 x 1,841)", f"{stable['knee']:g} s",
                  f"{percentile(beyond, 50):.2f} s", f"{percentile(beyond, 95):.2f} s", "p95 < 1 s",
                  "yes" if percentile(beyond, 95) < 1 else "no"],
                 [f"CT, {slices} slices of 512 x 512", f"{stable['lung']:g} s", f"{ct_beyond:.1f} s", "",
                  f"<= 1.2 x {expected:.1f} s ({throughput:.1f} slices/s measured)",
                  "yes" if ct_beyond <= 1.2 * expected else "no"]])


if __name__ == "__main__":
    main()
