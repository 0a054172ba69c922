"""Test helpers: real DICOM files, synthetic series, a result receiver, a sender, polling."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import data_store
import pydicom
import pydicom.data
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from inference.training.sample_studies import write_ct_series

DATA_STORE = Path(data_store.__file__).parent / "data"
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
IN_CI = os.environ.get("CI") == "true"


def real_file(name: str) -> Path:
    """A packaged real DICOM file, from pydicom-data or pydicom's own test files."""
    for folder in (DATA_STORE, PYDICOM_FILES):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(name)


def require_tool(name: str) -> str:
    """The path of a peer binary; missing in CI is a failure, elsewhere a skip."""
    import pytest

    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")  # Orthanc is in sbin
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed (.ci/run installs it)")
        pytest.skip(f"{name} not installed")
    return path


def free_port() -> int:
    """A loopback port nobody listens on (for a destination that is down until the test starts it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether anything accepts TCP connections on the loopback port (pynetdicom leaks a socket
    when it tries a port nobody listens on, so ask with a plain connect)."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return True
    except OSError:
        return False


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.1) -> object:
    """Poll until `predicate()` is truthy; fail with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def ct_series(folder: Path, slices: int = 60, size: int = 128, seed: int = 0, body_part: str = "CHEST") -> list[Path]:
    """A synthetic axial chest CT series written as DICOM files (one study, one series)."""
    return write_ct_series(folder, slices, size, seed, body_part)


def copy_with_new_uids(source: Path, folder: Path, **changes: str) -> Path:
    """A copy of a real file with fresh UIDs (so tests never collide) and optional attribute changes."""
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in changes.items():
        setattr(ds, key, value)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{source.stem}-{ds.SOPInstanceUID[-8:]}.dcm"
    ds.save_as(out)
    return out


@dataclass
class Receiver:
    """A test PACS receiving side: a pynetdicom Storage SCP that keeps what it receives."""

    ae_title: str = "PACS"
    status: int = 0x0000
    delay: float = 0.0  # seconds before each answer: a slow PACS
    maximum_associations: int = 100  # a PACS takes many; in-process tests also leave finished threads behind
    transfer_syntaxes: list[str] = field(default_factory=lambda: list(ALL_TRANSFER_SYNTAXES))
    received: list[Dataset] = field(default_factory=list)
    arrived_at: list[float] = field(default_factory=list)  # time.monotonic() of each, as `received`
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: object = None

    def _on_store(self, event: evt.Event) -> int:
        time.sleep(self.delay)
        if self.status != 0x0000:
            return self.status
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.lock:
            self.received.append(ds)
            self.arrived_at.append(time.monotonic())
        return 0x0000

    def start(self, port: int = 0) -> Receiver:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = self.maximum_associations
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(str(cx.abstract_syntax), self.transfer_syntaxes)
        ae.add_supported_context(Verification)
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])  # type: ignore[attr-defined]

    def reports(self) -> list[Dataset]:
        with self.lock:
            return [ds for ds in self.received if ds.Modality == "SR"]

    def key_images(self) -> list[Dataset]:
        with self.lock:
            return [ds for ds in self.received if ds.SOPClassUID == SecondaryCaptureImageStorage]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()  # type: ignore[attr-defined]
            self.server = None


def send(paths: list[Path], port: int, calling: str = "PACS", called: str = "DFNODE") -> list[int | None]:
    """C-STORE the files with pynetdicom as the PACS; returns each status (None: not sent)."""
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=calling)
    for syntax_uid in {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}:
        ae.add_requested_context(syntax_uid[0], [syntax_uid[1]])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return [None] * len(paths)
    statuses = []
    for ds in datasets:
        rsp = assoc.send_c_store(ds)
        statuses.append(int(rsp.Status) if rsp and "Status" in rsp else None)
    assoc.release()
    return statuses


def echo(port: int, calling: str = "PACS", called: str = "DFNODE") -> int | None:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    rsp = assoc.send_c_echo()
    assoc.release()
    return int(rsp.Status) if rsp and "Status" in rsp else None


def run_tool(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def storescu(port: int, files: list[Path], *options: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """DCMTK's storescu from PACS to DFNODE on 127.0.0.1, `options` (TLS, transfer syntax) first."""
    return run_tool(require_tool("storescu"), *options, "-aet", "PACS", "-aec", "DFNODE", "127.0.0.1", str(port),
                    *map(str, files), timeout=timeout)


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy (dicom3tools) prints for a file."""
    tool = require_tool("dciodvfy")
    result = run_tool(tool, "-new", str(path))
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
