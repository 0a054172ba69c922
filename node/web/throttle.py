"""Sign-in throttling: after too many failed sign-ins from one address, that address waits."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque


class SignInThrottle:
    """At most `max_failures` failed sign-ins per address within `window_seconds`; then the address is
    refused until the oldest of them leaves the window. A successful sign-in clears the address."""

    def __init__(self, max_failures: int = 5, window_seconds: float = 300.0):
        self.max_failures, self.window = max_failures, window_seconds
        self.failures: dict[str, deque[float]] = defaultdict(deque)
        self.lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self.failures[address]
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def wait_seconds(self, address: str) -> float:
        """How long the address must wait before it may try again (0: it may now)."""
        now = time.monotonic()
        with self.lock:
            times = self._recent(address, now)
            if len(times) < self.max_failures:
                return 0.0
            return times[0] + self.window - now

    def failed(self, address: str) -> None:
        with self.lock:
            self._recent(address, time.monotonic()).append(time.monotonic())

    def succeeded(self, address: str) -> None:
        with self.lock:
            self.failures.pop(address, None)
