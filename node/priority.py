"""CPU priority of the node's own threads: receiving comes first, evaluation takes what is left.

On Linux each thread has its own nice value and the threads it starts inherit it, so evaluation is
made nicer on its own thread, and the models are loaded on a nicer thread so that the thread pools
the inference libraries start then are nicer too. Elsewhere this does nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

EVALUATION_NICENESS = 10
T = TypeVar("T")


def lower_this_thread(increment: int = EVALUATION_NICENESS) -> None:
    """Raise the calling thread's nice value by `increment` (best effort)."""
    if not increment or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except OSError as exc:
        log.debug("thread priority unchanged: %s", exc)


def at_lower_priority(work: Callable[[], T], increment: int = EVALUATION_NICENESS) -> T:
    """Run `work` on a new thread with a higher nice value and return its result (or raise its error)."""
    outcome: dict[str, object] = {}

    def run() -> None:
        lower_this_thread(increment)
        try:
            outcome["result"] = work()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="load-models")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]
