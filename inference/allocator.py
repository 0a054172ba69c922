"""glibc's allocator set to keep large freed buffers for reuse.

By default glibc hands buffers above a moving threshold straight back to the kernel when they are
freed, and trims its heap soon after; every radiograph then pays for its 7 to 15 MB buffers again in
page faults (preparing a 1,955 x 1,841 radiograph: 21 ms instead of 6.5 ms on the CI machine). With a
fixed threshold above one large frame and a trim threshold of a few such frames, the same pages serve
image after image. An administrator's MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ is left as set."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 32 << 20  # buffers below this come from the heap, where freed ones are reused
TRIM_THRESHOLD = 64 << 20  # free memory the heap keeps before returning any to the kernel


def reuse_large_buffers() -> bool:
    """Apply the settings above; False where the C library has no `mallopt` or the environment sets them."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
