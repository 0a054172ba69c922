"""The listening socket: one thread per connection, the TLS handshake on that thread, a shared limit
on open associations.

The accept thread only accepts (and wraps a TLS socket without a handshake), so a client that
connects and then says nothing holds up no other peer: its handshake runs on its own thread,
bounded by `handshake_timeout`, and a failure is reported and closed.

An IPv6 bind address listens on IPv6 ("::" on IPv4 as well); a peer's IPv4-mapped IPv6 address is
given on as plain IPv4, so that the known-peer policy and the audit trail see one form.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from typing import Any

from scp.association import Association

log = logging.getLogger(__name__)

RefusalFn = Callable[[str, str], None]  # (peer address, why)
AssociationFactory = Callable[[socket.socket, str], Association]  # (connection, peer address)


def describe_tls_failure(exc: BaseException) -> str:
    """A short reason for the audit trail: the OpenSSL reason when there is one."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return "TLS handshake not finished in time"
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
    return f"TLS handshake failed: {reason}"


def peer_address(address: str) -> str:
    """The peer's address as the policy and the audit trail know it: "::ffff:10.0.0.5" is "10.0.0.5"."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    mapped = getattr(parsed, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else address


class AssociationSlots:
    """The admitted associations of every listener of the node, at most `maximum` of them."""

    def __init__(self, maximum: int):
        self.maximum = maximum
        self._open: set[Association] = set()
        self._lock = threading.Lock()

    def take(self, association: Association) -> bool:
        with self._lock:
            if len(self._open) >= self.maximum:
                return False
            self._open.add(association)
            return True

    def give_back(self, association: Association) -> None:
        with self._lock:
            self._open.discard(association)


class AssociationServer(socketserver.ThreadingTCPServer):
    """Accepts connections on one address and serves each as an `Association` on its own thread."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], new_association: AssociationFactory, slots: AssociationSlots,
                 ssl_context: ssl.SSLContext | None, handshake_timeout: float, on_refused: RefusalFn):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, socketserver.BaseRequestHandler)
        self.new_association = new_association
        self.slots = slots
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self.on_refused = on_refused
        self._running: set[Association] = set()
        self._running_lock = threading.Lock()

    @property
    def active_associations(self) -> list[Association]:
        """This listener's connections that are still being served."""
        with self._running_lock:
            return list(self._running)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:  # "::" takes IPv4 peers too, whatever the system's default
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = self.socket.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each answer goes out whole, at once
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        address = peer_address(str(client_address[0]))
        try:
            if isinstance(request, ssl.SSLSocket) and not self._handshake(request, address):
                return
            association = self.new_association(request, address)
            with self._running_lock:
                self._running.add(association)
            try:
                association.run()
            finally:
                self.slots.give_back(association)
                with self._running_lock:
                    self._running.discard(association)
        except Exception:  # one connection's failure must not reach the server's thread
            log.exception("connection from %s failed", address)
        finally:
            self.shutdown_request(request)

    def _handshake(self, request: ssl.SSLSocket, address: str) -> bool:
        try:
            request.settimeout(self.handshake_timeout)
            request.do_handshake()
            return True
        except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
            try:
                self.on_refused(address, describe_tls_failure(exc))
            except Exception:  # reporting must not keep the socket open
                log.exception("TLS refusal not reported")
            return False

    def shutdown(self) -> None:
        """Stop accepting and close the listening socket; open associations go on in their threads."""
        super().shutdown()
        self.server_close()


def start_listener(address: tuple[str, int], new_association: AssociationFactory, slots: AssociationSlots,
                   ssl_context: ssl.SSLContext | None, handshake_timeout: float,
                   on_refused: RefusalFn) -> AssociationServer:
    """Listen on `address` in a background thread; `server.shutdown()` stops it."""
    server = AssociationServer(address, new_association, slots, ssl_context, handshake_timeout, on_refused)
    threading.Thread(target=server.serve_forever, name=f"listener:{server.server_address[1]}", daemon=True).start()
    return server
