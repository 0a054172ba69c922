"""The C-STORE SCU: sends one file to one peer and says whether to retry."""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config

from scp import statuses

log = logging.getLogger(__name__)
# a file whose transfer syntax the peer accepts goes out as its stored bytes, streamed from disk:
# re-encoding a 300-group SR through pydicom takes 2 s (see _store)
_config.STORE_SEND_CHUNKED_DATASET = True


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
        # one context per stored syntax (so a peer preferring another still takes the file as it is),
        # and one the dataset can be converted to
        for syntax in dict.fromkeys(ds.file_meta.TransferSyntaxUID for ds in datasets if ds.SOPClassUID == sop_class):
            ae.add_requested_context(sop_class, syntax)
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=(tls, host) if tls else None)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
        return SendOutcome(False, True, None, f"association with {ae_title}@{host}:{port} {why}")
    try:
        outcome = SendOutcome(True, False, 0x0000, "stored")
        for path, ds in zip(paths, datasets, strict=True):
            outcome = _store(assoc, path, ds)
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


def _store(assoc, path: Path, ds: Dataset) -> SendOutcome:  # type: ignore[no-untyped-def]
    """One C-STORE on an open association, classified. The file is sent as stored when the peer took
    its transfer syntax, else the dataset is converted to the one it took."""
    as_stored = any(cx.abstract_syntax == ds.SOPClassUID and cx.transfer_syntax[0] == ds.file_meta.TransferSyntaxUID
                    for cx in assoc.accepted_contexts)
    try:
        response = assoc.send_c_store(path if as_stored else ds)
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
