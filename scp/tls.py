"""TLS contexts for DICOM TLS (BCP 195: TLS 1.2 or later), from the files in `TlsFiles`.

Each function returns the context and the problems loading its files as (config key, message), so
that the caller reports every one at start-up, never a failure at the first association.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from scp.settings import TlsFiles

Problems = list[tuple[str, str]]


def _load(problems: Problems, key: str, path: Path | None, action: Callable[[], None]) -> None:
    try:
        action()
    except FileNotFoundError:
        problems.append((key, f"{path} does not exist"))
    except (ssl.SSLError, OSError, ValueError) as exc:
        problems.append((key, f"cannot load {path}: {getattr(exc, 'reason', None) or exc}"))


def _context(purpose: ssl.Purpose, files: TlsFiles, problems: Problems) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.certificate is not None and files.private_key is not None:
        certificate, key = files.certificate, files.private_key
        _load(problems, "tls.certificate", certificate, lambda: context.load_cert_chain(certificate, key))
    if files.ca_certificates is not None:
        ca = files.ca_certificates
        _load(problems, "tls.ca_certificates", ca, lambda: context.load_verify_locations(cafile=ca))
    return context


def server_context(files: TlsFiles) -> tuple[ssl.SSLContext, Problems]:
    """The listener's context and any problems loading its files."""
    problems: Problems = []
    context = _context(ssl.Purpose.CLIENT_AUTH, files, problems)
    if files.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    elif files.ca_certificates is not None:
        context.verify_mode = ssl.CERT_OPTIONAL  # a certificate shown must be valid
    return context, problems


def client_context(files: TlsFiles) -> tuple[ssl.SSLContext, Problems]:
    """The context for sending to `tls: true` peers: their certificate is verified against
    `ca_certificates` (or the system's CAs); the node's own certificate is shown when configured."""
    problems: Problems = []
    context = _context(ssl.Purpose.SERVER_AUTH, files, problems)
    context.check_hostname = files.verify_peer_hostname
    return context, problems
