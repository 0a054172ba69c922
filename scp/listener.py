"""The listening socket: pynetdicom's threaded server, with the TLS handshake moved off the accept thread.

pynetdicom wraps each accepted socket in TLS inside `get_request`, on the one thread that accepts
connections, so a client that connects and then says nothing stalls every other peer until the
network timeout. Here the accept thread only wraps the socket; the handshake runs on the
connection's own thread, bounded by `handshake_timeout`, and a failure is reported and closed.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

RefusalFn = Callable[[str, str], None]  # (peer address, why)


def describe_tls_failure(exc: BaseException) -> str:
    """A short reason for the audit trail: the OpenSSL reason when there is one."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return "TLS handshake not finished in time"
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
    return f"TLS handshake failed: {reason}"


class DeferredHandshakeServer(ThreadedAssociationServer):
    """A `ThreadedAssociationServer` whose TLS handshakes run on the connection threads."""

    handshake_timeout: float = 10.0
    on_refused: RefusalFn = staticmethod(lambda address, why: None)  # type: ignore[assignment]

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(self.handshake_timeout)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
                self._refuse(request, str(client_address[0]), describe_tls_failure(exc))
                return
        super().process_request_thread(request, client_address)

    def _refuse(self, request: ssl.SSLSocket, address: str, why: str) -> None:
        try:
            self.on_refused(address, why)
        except Exception:  # reporting must not keep the socket open
            log.exception("TLS refusal not reported")
        self.shutdown_request(request)


def start_listener(ae: AE, address: tuple[str, int], handlers: list[Any], ssl_context: ssl.SSLContext | None,
                   handshake_timeout: float, on_refused: RefusalFn) -> DeferredHandshakeServer:
    """Listen on `address` in a background thread; `server.shutdown()` stops it."""
    server = ae.make_server(address, evt_handlers=handlers, ssl_context=ssl_context,
                            server_class=DeferredHandshakeServer)
    assert isinstance(server, DeferredHandshakeServer)
    server.handshake_timeout = handshake_timeout
    server.on_refused = on_refused  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, name=f"listener:{server.server_address[1]}", daemon=True).start()
    ae._servers.append(server)  # as AE.start_server does: the server's shutdown() removes itself from there
    return server
