"""Promise 8: SIGTERM stops accepting, finishes the open associations, exits within a bound, and
the next start resumes where this one stopped."""

from __future__ import annotations

import threading
from pathlib import Path

from pydicom import Dataset

from tests.conftest import node_config_raw
from tests.helpers import Receiver, ct_series, free_port, listening, send, wait_for
from tests.serve_process import start_serve, write_config
from tests.sr_contract import image_groups, referenced_images

DRAIN_SECONDS = 30


def test_sigterm_finishes_the_open_association_and_the_next_start_resumes(
        tmp_path: Path, model_dir: Path, receiver: Receiver) -> None:
    port = free_port()
    raw = node_config_raw(tmp_path / "var", model_dir, receiver.port,
                          node={"port": port, "drain_seconds": DRAIN_SECONDS})
    for route in raw["routes"]:  # the series is evaluated after the restart, not once the open one ends
        route["series_stable_seconds"] = 3.0
    config = write_config(raw, tmp_path / "config.yaml")
    spool = tmp_path / "var" / "spool"
    files = ct_series(tmp_path / "ct", slices=200, size=64)
    serve = start_serve(config, port, tmp_path / "serve-1.log")
    statuses: list[int | None] = []
    sender = threading.Thread(target=lambda: statuses.extend(send(files, port)))
    sender.start()
    wait_for(lambda: spool.is_dir() and len(list(spool.rglob("*.dcm"))) >= 20, timeout=60, interval=0.01)
    code, seconds = serve.terminate(timeout=DRAIN_SECONDS + 30)
    sender.join(timeout=60)
    assert code == 0, serve.output()[-3000:]
    assert seconds < DRAIN_SECONDS + 15
    assert statuses == [0x0000] * len(files), "the association open at SIGTERM did not finish"
    assert "stopping: no new associations" in serve.output() and "aborting association" not in serve.output()
    assert not listening(port)
    assert len(list(spool.rglob("*.dcm"))) == len(files)

    def cited(sr: Dataset) -> int:
        return len({uid for g in image_groups(sr)[:-1] for uid, _ in referenced_images(g)})

    # a sender that stalls for the stable time while the open association finishes gets a report of
    # what had arrived by then; the next start must then report the whole series
    again = start_serve(config, port, tmp_path / "serve-2.log")
    try:
        sr = wait_for(lambda: next((r for r in receiver.reports() if cited(r) == len(files)), None), timeout=180)
    finally:
        code, _ = again.terminate()
    assert code == 0
    assert isinstance(sr, Dataset) and "series.evaluating" in again.output()
