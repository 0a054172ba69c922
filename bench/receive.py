"""Receiving: DCMTK storescu sends a 300-slice CT series (512 x 512, 16-bit) to dfnode, to DCMTK's
storescp and to Orthanc, alternating, in one run; then dfnode again while it evaluates another
series; then 4 senders at once; and the C-STORE response latency, idle and during inference. With the
workers idle each receiver is also sent the series by a storescu with `TCP_NODELAY=1` of its own:
without it DCMTK's sender waits on Nagle's algorithm between its writes, which slows storescp 2 to
2.8x on loopback; dfnode acknowledges each segment at once and is not slowed. Each timed transfer
starts with the page cache written out (`os.sync`), so that no receiver waits for the files this
benchmark, or the receiver before it, left unwritten.

    .venv/bin/python -m bench.receive [--slices 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pynetdicom import AE

from bench.common import REPO, in_temp_folder, median, percentile, print_table, start_storescp, storescu, with_new_uids
from tests.conftest import node_config_raw
from tests.helpers import ct_series, free_port, wait_for
from tests.orthanc import start_orthanc
from tests.serve_process import ServeProcess, start_serve, write_config

SIZE = 512


class Targets:
    """dfnode (`dfnode serve`), storescp and Orthanc, each listening on loopback."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.dfnode_port, self.storescp_port = free_port(), free_port()
        raw = node_config_raw(folder / "dfnode", REPO / "weights", free_port(), node={"port": self.dfnode_port})
        raw["logging"] = {"format": "text", "level": "info"}
        self.dfnode = start_serve(write_config(raw, folder / "dfnode.yaml"), self.dfnode_port, folder / "dfnode.log")
        self.storescp = start_storescp(folder / "storescp", self.storescp_port)
        self.orthanc = start_orthanc(folder / "orthanc")

    def ports(self) -> dict[str, tuple[int, str]]:
        return {"dfnode": (self.dfnode_port, "DFNODE"), "storescp": (self.storescp_port, "PACS"),
                "orthanc": (self.orthanc.dicom_port, "ORTHANC")}

    def stop(self) -> None:
        self.dfnode.terminate()
        self.storescp.terminate()
        self.orthanc.process.terminate()
        self.orthanc.process.wait(30)


NODELAY_SENDER = ", sender TCP_NODELAY=1"
SENDERS: tuple[tuple[str, dict[str, str] | None], ...] = (("", None), (NODELAY_SENDER, {"TCP_NODELAY": "1"}))


def timed_send(port: int, called: str, files: list[Path], senders: int = 1,
               sender_env: dict[str, str] | None = None) -> float:
    """Seconds for `senders` storescu processes (with `sender_env` added to their environment) to send
    `files` between them."""
    parts = [files[i::senders] for i in range(senders)]
    os.sync()  # see `latencies`
    started = time.perf_counter()
    threads = [threading.Thread(target=storescu, args=(port, called, part, sender_env)) for part in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def evaluating(serve: ServeProcess, started_reports: int) -> bool:
    """Whether dfnode is between a `series.evaluating` and its `report.created`."""
    log = serve.output()
    return log.count("series.evaluating") > started_reports and log.count("report.created") <= started_reports


def start_inference(serve: ServeProcess, port: int, template: list[Path], folder: Path) -> int:
    """Send a routed chest CT to dfnode and return once its evaluation has started."""
    reports = serve.output().count("report.created")
    storescu(port, "DFNODE", with_new_uids(template, folder))
    wait_for(lambda: evaluating(serve, reports), timeout=120, interval=0.02)
    return reports


def reported_after(serve: ServeProcess, reports: int) -> Callable[[], bool]:
    """A predicate: dfnode has created more than `reports` reports."""
    return lambda: serve.output().count("report.created") > reports


def latencies(port: int, files: list[Path]) -> list[float]:
    """Milliseconds from each C-STORE request to its response, one association."""
    datasets = [pydicom.dcmread(p) for p in files]
    # the copies just written, and what the previous receiver stored without syncing, out to the disk
    # first: dfnode syncs each instance before answering, and would otherwise wait for them (a C-STORE
    # taking 200 to 400 ms while the kernel wrote out this benchmark's 158 MB)
    os.sync()
    ae = AE(ae_title="PACS")
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="DFNODE")
    assert assoc.is_established
    out = []
    for ds in datasets:
        started = time.perf_counter()
        status = assoc.send_c_store(ds)
        out.append((time.perf_counter() - started) * 1000)
        assert status and status.Status == 0
    assoc.release()
    return out


def _ratios(name: str, rate: dict[str, float]) -> str:
    """dfnode's rate against storescp's and Orthanc's under the same conditions (4 senders with 4, a
    sender with TCP_NODELAY with the same)."""
    if not name.startswith("dfnode"):
        return ""
    same = next((suffix for suffix in (", 4 senders", NODELAY_SENDER) if name.endswith(suffix)), "")
    return (f"{rate[name] / rate['storescp' + same]:.2f}x storescp, "
            f"{rate[name] / rate['orthanc' + same]:.2f}x Orthanc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    in_temp_folder("receive", lambda folder: run(folder, args.slices, args.rounds))


def run(folder: Path, slices: int, rounds: int) -> None:
    # PELVIS: no route takes it, so receiving is measured with the workers idle
    unrouted = ct_series(folder / "template", slices=slices, size=SIZE, body_part="PELVIS")
    routed = ct_series(folder / "routed", slices=slices, size=SIZE, body_part="CHEST", seed=1)
    megabytes = sum(p.stat().st_size for p in unrouted) / 1e6
    targets = Targets(folder)
    seconds: dict[str, list[float]] = {}
    busy_overlap: list[bool] = []
    try:
        for r in range(rounds):
            for name, (port, called) in targets.ports().items():
                for suffix, sender_env in SENDERS:
                    copy = folder / f"send-{name}-{r}{suffix}"
                    seconds.setdefault(name + suffix, []).append(
                        timed_send(port, called, with_new_uids(unrouted, copy), sender_env=sender_env))
                    shutil.rmtree(copy)
            files = with_new_uids(unrouted, folder / f"send-busy-{r}")
            reports = start_inference(targets.dfnode, targets.dfnode_port, routed, folder / f"routed-{r}")
            seconds.setdefault("dfnode, inference running", []).append(
                timed_send(targets.dfnode_port, "DFNODE", files))
            busy_overlap.append(evaluating(targets.dfnode, reports))
            wait_for(reported_after(targets.dfnode, reports), timeout=600)
            for name, (port, called) in targets.ports().items():
                files = with_new_uids(unrouted, folder / f"send4-{name}-{r}")
                seconds.setdefault(f"{name}, 4 senders", []).append(timed_send(port, called, files, senders=4))
        reports = start_inference(targets.dfnode, targets.dfnode_port, routed, folder / "routed-latency")
        busy_ms = latencies(targets.dfnode_port, with_new_uids(unrouted, folder / "latency-busy"))
        wait_for(reported_after(targets.dfnode, reports), timeout=600)  # idle again for the next measurement
        idle_ms = latencies(targets.dfnode_port, with_new_uids(unrouted, folder / "latency-idle"))
    finally:
        targets.stop()

    rate = {name: slices / median(values) for name, values in seconds.items()}
    rows = [[name, f"{rate[name]:.1f}", f"{rate[name] * megabytes / slices:.1f}", f"{slices / rate[name]:.2f}",
             _ratios(name, rate)] for name in rate]
    print_table(f"Receiving {slices} CT slices of {SIZE} x {SIZE} ({megabytes:.0f} MB) from storescu, "
                f"median of {rounds} rounds", ["receiver", "instances/s", "MB/s", "seconds", "dfnode's ratio"], rows)
    print(f"\ninference was still running when the timed transfer ended in {sum(busy_overlap)} of "
          f"{len(busy_overlap)} rounds")
    print_table("C-STORE response latency at dfnode (pynetdicom SCU, one association, ms)",
                ["workers", "p50", "p99", "max"],
                [[label, f"{percentile(v, 50):.1f}", f"{percentile(v, 99):.1f}", f"{max(v):.1f}"]
                 for label, v in (("idle", idle_ms), ("evaluating a CT series", busy_ms))])


if __name__ == "__main__":
    main()
