"""Serving the console with uvicorn on a thread of `dfnode serve`."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette

log = logging.getLogger(__name__)


class ConsoleServer:
    """uvicorn on its own thread, on a socket bound before it starts (port 0: any free port)."""

    def __init__(self, app: Starlette, host: str, port: int):
        self.socket = socket.create_server((host, port), reuse_port=False)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="console", daemon=True)

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    @property
    def address(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{host}:{port}/"

    def start(self, timeout: float = 30.0) -> ConsoleServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the web console did not start; see the log above")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.socket.close()
