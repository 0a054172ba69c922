"""The C-STORE SCU: sends one file to one peer and says whether to retry."""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from scp import statuses

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendOutcome:
    """What happened: `delivered`, or not and whether a later try may succeed."""

    delivered: bool
    retryable: bool
    status: int | None
    detail: str

    @property
    def status_text(self) -> str:
        return f"0x{self.status:04X}" if self.status is not None else "-"


def send_files(paths: list[Path], calling_ae: str, ae_title: str, host: str, port: int,
               timeout: float, tls: ssl.SSLContext | None = None) -> SendOutcome:
    """C-STORE `paths` to the peer over one association (over TLS with `tls`); delivered when every
    file is stored.

    Connection failures, TLS failures, aborts, timeouts and 0xA7xx are retryable; 0xA9xx and 0xCxxx
    (the peer refuses the object itself) are not."""
    failure = _unreachable(host, port, timeout, tls)
    if failure:
        return SendOutcome(False, True, None, f"cannot connect to {ae_title}@{host}:{port}: {failure}")
    try:
        datasets = [dcmread(p) for p in paths]
    except Exception as exc:  # a report on disk is unreadable: retrying cannot help
        return SendOutcome(False, False, None, f"cannot read a report file: {exc}")
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
        syntaxes = [ds.file_meta.TransferSyntaxUID for ds in datasets if ds.SOPClassUID == sop_class]
        ae.add_requested_context(sop_class, list(dict.fromkeys([*syntaxes, ExplicitVRLittleEndian,
                                                                 ImplicitVRLittleEndian])))
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=(tls, host) if tls else None)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
        return SendOutcome(False, True, None, f"association with {ae_title}@{host}:{port} {why}")
    try:
        outcome = SendOutcome(True, False, 0x0000, "stored")
        for ds in datasets:
            outcome = _store(assoc, ds)
            if not outcome.delivered:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return outcome


def _unreachable(host: str, port: int, timeout: float, tls: ssl.SSLContext | None) -> str | None:
    """Why the peer cannot be reached, or None. A plain connect (and, for TLS, a handshake) before the
    association: a peer that is down costs no association and leaves no socket behind, and a TLS
    failure is named (certificate not trusted, wrong host) instead of showing up as an abort."""
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 10)) as sock:
            if tls is not None:
                with tls.wrap_socket(sock, server_hostname=host):
                    pass
    except ssl.SSLError as exc:  # certificate errors included
        verify = getattr(exc, "verify_message", None)
        return f"TLS: certificate verify failed: {verify}" if verify else f"TLS: {exc.reason or exc}"
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


def _store(assoc, ds) -> SendOutcome:  # type: ignore[no-untyped-def]
    """One C-STORE on an open association, classified."""
    try:
        response = assoc.send_c_store(ds)
    except Exception as exc:  # pynetdicom raises on protocol errors; treat as transient
        assoc.abort()
        return SendOutcome(False, True, None, f"C-STORE failed: {exc}")
    status = int(response.Status) if response and "Status" in response else None
    if status is None:
        return SendOutcome(False, True, None, "no response (timeout or abort)")
    if statuses.is_success(status):
        return SendOutcome(True, False, status, "stored")
    if statuses.is_retryable(status):
        return SendOutcome(False, True, status, "peer out of resources")
    return SendOutcome(False, False, status, f"{ds.SOPClassUID.name} refused by the peer")
