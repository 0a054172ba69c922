"""`dfnode serve` as a separate process, for the tests that kill it or send it signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.helpers import wait_for

READY = "dfnode ready"


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed; what is on disk is all there is."""
        self.process.kill()
        self.process.wait()

    def terminate(self, timeout: float = 60) -> tuple[int, float]:
        """SIGTERM; returns the exit code and the seconds it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - started


def write_config(raw: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def start_serve(config_path: Path, port: int, log: Path, timeout: float = 120) -> ServeProcess:
    """Start `dfnode serve`, logging to `log` (a new file per start), and wait until it is ready."""
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--config", str(config_path)],
                                   stdout=out, stderr=subprocess.STDOUT)
    serving = ServeProcess(process, log, port)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"dfnode serve exited with {process.returncode}: {serving.output()[-3000:]}")
        return READY in serving.output()
    wait_for(ready, timeout=timeout, interval=0.05)
    return serving
