"""The test run ends when its tests have ended.

A CI run once printed "588 passed" and then never exited, until the CI's time limit killed it: something
a test started (a thread, a process pool, a child process) kept the interpreter from finishing. This
plugin names whatever is still running once the tests are done, stops child processes that a test left
behind, and, if the interpreter still has not exited `EXIT_GRACE_SECONDS` after pytest has finished,
prints every thread's stack and ends the process with pytest's own exit status.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

EXIT_GRACE_SECONDS = 120


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == pid:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(entry.name), command.strip() or stat.split()[1]))
        except (OSError, ValueError, IndexError):  # ended while being read
            continue
    return found


def _left_running() -> tuple[list[threading.Thread], list[tuple[int, str]]]:
    threads = [t for t in threading.enumerate()
               if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    # the fork server and workers of a process pool are the pool's to end; anything else is a leak
    children = [(pid, command) for pid, command in _children(os.getpid())
                if "multiprocessing" not in command and "forkserver" not in command]
    return threads, children


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    threads, children = _left_running()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if threads or children:
        lines = [f"thread {t.name!r} ({t.__class__.__module__}.{t.__class__.__name__})" for t in threads]
        lines += [f"process {pid}: {command[:200]}" for pid, command in children]
        text = "left running after the tests:\n  " + "\n  ".join(lines)
        if reporter is not None:
            reporter.write_line(text, yellow=True)
        else:
            print(text, file=sys.stderr)
    for pid, _ in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    session.config.stash[_STATUS] = int(exitstatus)


_STATUS = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    status = config.stash.get(_STATUS, None)
    if status is None:  # pytest did not get as far as running tests (--help, a collection error)
        return

    def end_if_still_here() -> None:
        time.sleep(EXIT_GRACE_SECONDS)
        stream = sys.__stderr__
        if stream is not None:
            stream.write(f"\nthe test run had not exited {EXIT_GRACE_SECONDS} s after its tests ended; "
                         "every thread's stack:\n")
            stream.flush()
            faulthandler.dump_traceback(file=stream, all_threads=True)
            stream.flush()
        os._exit(status)

    threading.Thread(target=end_if_still_here, name="exit-guard", daemon=True).start()
