"""glibc's allocator set to keep large freed buffers for reuse.

By default glibc hands buffers above a moving threshold straight back to the kernel when they are
freed, and trims its heap soon after; every radiograph then pays for its 7 to 15 MB buffers again in
page faults (preparing a 1,955 x 1,841 radiograph: 21 ms instead of 6.5 ms on the CI machine). With a
fixed threshold above one large frame and a trim threshold of a few such frames, the same pages serve
image after image. Threads share two heaps: glibc gives threads heaps of their own (up to eight per
core), each keeping up to the trim threshold of freed memory, and `dfnode serve` grew by about 60 MB
whenever a new receiving or evaluating thread took a new heap (bench/memory.py: peak 1,641 MB and
+59 MB over the second 1,000 instances, against 1,490 MB and +0 with two heaps). An administrator's
MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or MALLOC_ARENA_MAX is left as set."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters
MMAP_THRESHOLD = 32 << 20  # buffers below this come from the heap, where freed ones are reused
TRIM_THRESHOLD = 64 << 20  # free memory the heap keeps before returning any to the kernel
ARENA_MAX = 2  # heaps shared by all threads


def reuse_large_buffers() -> bool:
    """Apply the settings above; False where the C library has no `mallopt` or the environment sets them."""
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(option, value) for option, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, ARENA_MAX)))
