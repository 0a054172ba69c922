"""The C-STORE SCU: sends one file to one peer and says whether to retry."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.transport import AssociationSocket

from scp import statuses

log = logging.getLogger(__name__)
# a file whose transfer syntax the peer accepts goes out as its stored bytes, streamed from disk:
# re-encoding a 300-group SR through pydicom takes 2 s (see _store)
_config.STORE_SEND_CHUNKED_DATASET = True


def _shutdown_and_close(self: AssociationSocket) -> None:
    """pynetdicom's socket shutdown skips the close when the shutdown fails, as it does for a socket whose
    connect failed (a peer that is down): each retry would leave a socket for the collector."""
    sock = self.socket
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


AssociationSocket._shutdown_socket = _shutdown_and_close  # type: ignore[method-assign]


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
    file is stored."""
    return send_batch([paths], calling_ae, ae_title, host, port, timeout, tls)[0]


def send_batch(groups: list[list[Path]], calling_ae: str, ae_title: str, host: str, port: int,
               timeout: float, tls: ssl.SSLContext | None = None) -> list[SendOutcome]:
    """C-STORE each group of files (one report and its key image) to the peer, all over one association;
    an outcome per group, delivered when each of its files is stored.

    Connection failures, TLS failures, aborts, timeouts and 0xA7xx are retryable; 0xA9xx and 0xCxxx
    (the peer refuses the object itself) are not. No connection is opened but the association's own:
    a peer that counts connections (pynetdicom's does) sees one per batch."""
    datasets: list[list[Dataset]] = []
    outcomes: list[SendOutcome | None] = []
    for paths in groups:
        try:
            datasets.append([dcmread(p) for p in paths])
            outcomes.append(None)
        except Exception as exc:  # a report on disk is unreadable: retrying cannot help
            datasets.append([])
            log.error("report file unreadable: %s", exc)
            outcomes.append(SendOutcome(False, False, None, "a report file cannot be read (details in the node's log)"))
    readable = [ds for group in datasets for ds in group]
    if not readable:
        return [o or SendOutcome(True, False, 0x0000, "nothing to send") for o in outcomes]
    ae = _requesting_ae(calling_ae, timeout, readable)
    with _connection_failures() as failures:
        assoc = ae.associate(host, port, ae_title=ae_title, tls_args=(tls, host) if tls else None)
    if not assoc.is_established:
        why = _refusal(assoc, failures)
        failed = SendOutcome(False, True, None, f"association with {ae_title}@{host}:{port}: {why}")
        return [o or failed for o in outcomes]
    try:
        for n, (paths, group) in enumerate(zip(groups, datasets, strict=True)):
            if outcomes[n] is not None:
                continue
            if not assoc.is_established:
                outcomes[n] = SendOutcome(False, True, None, "the association ended before this report was sent")
                continue
            outcome = SendOutcome(True, False, 0x0000, "stored")
            for path, ds in zip(paths, group, strict=True):
                outcome = _store(assoc, path, ds)
                if not outcome.delivered:
                    break
            outcomes[n] = outcome
    finally:
        if assoc.is_established:
            assoc.release()
    return [o or SendOutcome(False, True, None, "not sent") for o in outcomes]


def _requesting_ae(calling_ae: str, timeout: float, datasets: list[Dataset]) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = min(timeout, 10)
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
        # one context per stored syntax (so a peer preferring another still takes the file as it is),
        # and one the dataset can be converted to
        for syntax in dict.fromkeys(ds.file_meta.TransferSyntaxUID for ds in datasets if ds.SOPClassUID == sop_class):
            ae.add_requested_context(sop_class, syntax)
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae


class _FailureRecords(logging.Handler):
    """pynetdicom's records of why a connection failed (it logs the error rather than raising it), kept
    with the thread that logged them: an association's own thread connects."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def of(self, threads: set[int | None]) -> tuple[list[BaseException], list[str]]:
        """The errors and messages logged by `threads`."""
        mine = [r for r in self.records if r.thread in threads]
        return ([r.exc_info[1] for r in mine if r.exc_info and r.exc_info[1] is not None],
                [r.getMessage() for r in mine])


@contextmanager
def _connection_failures() -> Iterator[_FailureRecords]:
    records = _FailureRecords()
    transport = logging.getLogger("pynetdicom.transport")
    transport.addHandler(records)
    try:
        yield records
    finally:
        transport.removeHandler(records)


def _refusal(assoc: Any, failures: _FailureRecords) -> str:
    """Why the association was not established, as the attempt itself says: rejected (with the
    peer's reason), aborted, TLS not trusted, refused or not answering."""
    errors, messages = failures.of({assoc.ident, assoc.dul.ident})  # the association's and its DUL's threads
    if assoc.is_rejected:
        rejection = getattr(assoc.acceptor, "primitive", None)
        reason = getattr(rejection, "reason_str", None) or getattr(rejection, "result_str", None)
        return f"rejected ({reason})" if reason else "rejected"
    for exc in errors:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"TLS: certificate verify failed: {exc.verify_message}"
        if isinstance(exc, ssl.SSLError):
            return f"TLS: {exc.reason or exc}"
    text = " ".join(messages)
    if "Connection refused" in text:
        return "connection refused (nothing listens on that port)"
    if "timed out" in text:
        return "no answer (the host is down or a firewall drops the connection)"
    if "Name or service not known" in text or "not known" in text:
        return "the host name does not resolve"
    if messages:
        return "no connection: " + messages[-1].removeprefix("TCP Initialisation Error: ")
    return "aborted" if assoc.is_aborted else "no connection"


def _store(assoc, path: Path, ds: Dataset) -> SendOutcome:  # type: ignore[no-untyped-def]
    """One C-STORE on an open association, classified. The file is sent as stored when the peer took
    its transfer syntax, else the dataset is converted to the one it took."""
    as_stored = any(cx.abstract_syntax == ds.SOPClassUID and cx.transfer_syntax[0] == ds.file_meta.TransferSyntaxUID
                    for cx in assoc.accepted_contexts)
    try:
        response = assoc.send_c_store(path if as_stored else ds)
    except Exception:  # pynetdicom raises on protocol errors; treat as transient
        log.warning("C-STORE of %s failed", path.name, exc_info=True)
        assoc.abort()
        return SendOutcome(False, True, None, "the C-STORE could not be completed (details in the node's log)")
    status = int(response.Status) if response and "Status" in response else None
    if status is None:
        return SendOutcome(False, True, None, "no response (timeout or abort)")
    if statuses.is_success(status):
        return SendOutcome(True, False, status, "stored")
    if statuses.is_retryable(status):
        return SendOutcome(False, True, status, "peer out of resources")
    return SendOutcome(False, False, status, f"{ds.SOPClassUID.name} refused by the peer")
