"""Reading and preparing a series' files for the model, without torch: on threads beside the model, or
in worker processes, where a GPU node's preparation is not bound by Python's lock (reading a file and
parsing its header hold it: 15 threads prepare radiographs only 1.7x as fast as one).

The processes come from a fork server that imports this module's dependencies (numpy, pydicom,
Pillow; not torch) and the program's main module (`dfnode`'s imports no torch either), so each worker
is small (about 60 MB) and starts in a fraction of a second; never forked from the node itself, whose
threads and torch's thread pools a fork would copy half-held."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from core.errors import NotEvaluable
from inference.allocator import reuse_large_buffers
from inference.pixels import keep_header_only, read_image
from inference.preprocess import Preprocessing, prepare_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageResult:
    """The result for one image (one frame of a multi-frame image has its own)."""

    sop_instance_uid: str
    frame_number: int | None
    score: float | None  # probability in [0, 1]; None when not evaluated
    reason: str | None = None  # why not evaluated


@dataclass
class PreparedFiles:
    """Some files of a series read and prepared: model inputs, what they are, and what failed."""

    keys: list[tuple[str, int | None]] = field(default_factory=list)  # (SOP Instance UID, frame number)
    images: list[np.ndarray] = field(default_factory=list)
    shapes: list[tuple[int, int]] = field(default_factory=list)  # each image's frame before the letterbox
    failures: list[ImageResult] = field(default_factory=list)
    headers: list[Dataset] = field(default_factory=list)  # each readable file's dataset, pixel data removed
    batch: Any = None  # the images as the network's input, when made where they were prepared (threads)


def prepare_files(paths: list[Path], prep: Preprocessing) -> PreparedFiles:
    """Read and prepare files; unusable images become failures, never exceptions."""
    done = PreparedFiles()
    for path in paths:
        try:
            ds = read_image(path)
            uid = str(ds.SOPInstanceUID)
        except Exception as exc:  # a spooled file that cannot be read is reported, not raised
            done.failures.append(ImageResult(path.stem, None, None, f"cannot be read: {exc}"))
            continue
        try:
            for frame in prepare_dataset(ds, prep):
                done.keys.append((uid, frame.frame_number))
                done.images.append(frame.pixels)
                done.shapes.append(frame.source_shape)
        except NotEvaluable as exc:
            done.failures.append(ImageResult(uid, None, None, str(exc)))
        except Exception as exc:  # malformed attributes surface as many types; one image never fails a series
            done.failures.append(ImageResult(uid, None, None, f"cannot be prepared: {exc.__class__.__name__}: {exc}"))
        keep_header_only(ds)  # keep the series' memory to headers
        done.headers.append(ds)
    return done


class PreparingProcesses:
    """`workers` processes preparing files (`prepare_files`) for one node, started on first use. A
    worker that dies (a decoder crashing on a malformed file) costs no result: the pool is replaced
    and the files it held are prepared on the calling thread."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> Executor:
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
            # each worker keeps its large freed buffers for the next image, as `dfnode` does
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=reuse_large_buffers)
        return self._pool

    def start(self, paths: list[Path], prep: Preprocessing) -> Callable[[], PreparedFiles]:
        """Begin preparing `paths` in a worker; the call returned waits for them (`_result`)."""
        try:
            future = self._executor().submit(prepare_files, paths, prep)
        except BrokenProcessPool:  # broke since the last result: a new pool
            self.close()
            future = self._executor().submit(prepare_files, paths, prep)
        return lambda: self._result(future, paths, prep)

    def _result(self, future: Future[PreparedFiles], paths: list[Path], prep: Preprocessing) -> PreparedFiles:
        """The future's prepared files; prepared here if the pool broke or they could not come back."""
        try:
            return future.result()
        except BrokenProcessPool:
            log.warning("a preparing process died; preparing %d file(s) on this thread and starting new ones",
                        len(paths))
            self.close()
        except Exception as exc:  # what was prepared could not come back (a header that does not pickle)
            log.warning("preparing %d file(s) in a process failed (%s: %s); preparing them on this thread",
                        len(paths), exc.__class__.__name__, exc)
        return prepare_files(paths, prep)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
