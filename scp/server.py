"""pynetdicom's threaded association server, with what the node needs of the accept loop.

- The TLS handshake runs on the connection's own thread, bounded by `handshake_timeout`: the accept
  thread only accepts and wraps, so a client that connects and then says nothing holds up no other
  peer (pynetdicom handshakes on the accept thread). A failed handshake is reported and closed.
- An IPv6 bind address listens on IPv6 ("::" on IPv4 as well, whatever the system's default).
- Each answer goes out at once (TCP_NODELAY).
- A connection's reads and writes time out after the AE's network timeout: pynetdicom's own timer only
  runs between PDUs, so a client that sends half a PDU header (an HTTP request, a port scanner) and
  waits would otherwise hold its thread, and the node's stop, for ever.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
from collections.abc import Callable
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from scp.admission import peer_address

log = logging.getLogger(__name__)

RefusalFn = Callable[[str, str], None]  # (peer address, why)


def describe_tls_failure(exc: BaseException) -> str:
    """A short reason for the audit trail: the OpenSSL reason when there is one."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return "TLS handshake not finished in time"
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
    return f"TLS handshake failed: {reason}"


class NodeAssociationServer(ThreadedAssociationServer):
    """One listening address of the node; made by `AE.make_server(..., server_class=...)`."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, *args: Any, handshake_timeout: float = 10.0, on_tls_refused: RefusalFn | None = None,
                 **kwargs: Any):
        self.handshake_timeout = handshake_timeout
        self.on_tls_refused = on_tls_refused
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.socket is not None:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None  # bound in the constructor
        client, address = self.socket.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.settimeout(self.ae.network_timeout)
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket) and not self._handshake(request, peer_address(str(client_address[0]))):
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)

    def _handshake(self, request: ssl.SSLSocket, address: str) -> bool:
        before = request.gettimeout()
        try:
            request.settimeout(self.handshake_timeout)
            request.do_handshake()
            request.settimeout(before)
            return True
        except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
            if self.on_tls_refused is not None:
                try:
                    self.on_tls_refused(address, describe_tls_failure(exc))
                except Exception:  # reporting must not keep the socket open
                    log.exception("TLS refusal not reported")
            return False

    def shutdown(self) -> None:
        """Stop accepting and close the listening socket; open associations go on in their threads."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()
