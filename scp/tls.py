"""TLS contexts built from the `tls` section (BCP 195: TLS 1.2 or later).

A file that cannot be loaded becomes a `ConfigError` naming its key, at start-up and in
`dfnode check-config`, never a failure at the first association.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from node.config import Config, TlsSettings
from node.errors import ConfigError


def _load(problems: list[tuple[str, str]], key: str, path: Path | None, action: Callable[[], None]) -> None:
    try:
        action()
    except FileNotFoundError:
        problems.append((key, f"{path} does not exist"))
    except (ssl.SSLError, OSError, ValueError) as exc:
        problems.append((key, f"cannot load {path}: {getattr(exc, 'reason', None) or exc}"))


def _context(purpose: ssl.Purpose, tls: TlsSettings, problems: list[tuple[str, str]]) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.certificate is not None and tls.private_key is not None:
        certificate, key = tls.certificate, tls.private_key
        _load(problems, "tls.certificate", certificate, lambda: context.load_cert_chain(certificate, key))
    if tls.ca_certificates is not None:
        ca = tls.ca_certificates
        _load(problems, "tls.ca_certificates", ca, lambda: context.load_verify_locations(cafile=ca))
    return context


def server_context(tls: TlsSettings) -> tuple[ssl.SSLContext, list[tuple[str, str]]]:
    """The listener's context and any problems loading its files."""
    problems: list[tuple[str, str]] = []
    context = _context(ssl.Purpose.CLIENT_AUTH, tls, problems)
    if tls.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_certificates is not None:
        context.verify_mode = ssl.CERT_OPTIONAL  # a certificate shown must be valid
    return context, problems


def client_context(tls: TlsSettings) -> tuple[ssl.SSLContext, list[tuple[str, str]]]:
    """The context for sending to `tls: true` peers: their certificate is verified against
    `ca_certificates` (or the system's CAs); the node's own certificate is shown when configured."""
    problems: list[tuple[str, str]] = []
    context = _context(ssl.Purpose.SERVER_AUTH, tls, problems)
    context.check_hostname = tls.verify_peer_hostname
    return context, problems


class TlsContexts:
    """The contexts a configuration needs: `server` when it has a TLS listener, `client` when a peer has
    `tls: true`. Raises `ConfigError` listing every file that cannot be loaded."""

    def __init__(self, config: Config):
        problems: list[tuple[str, str]] = []
        self.server: ssl.SSLContext | None = None
        self.client: ssl.SSLContext | None = None
        if config.tls.port is not None:
            self.server, found = server_context(config.tls)
            problems += found
        if any(peer.tls for peer in config.peers):
            self.client, found = client_context(config.tls)
            problems += [p for p in found if p not in problems]
        if problems:
            raise ConfigError("tls", problems)
