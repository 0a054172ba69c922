"""Python's cyclic garbage collector kept off the receive path.

A full collection walks every object the collector tracks and holds Python's lock while it does.
After start-up `dfnode serve` tracks about 560,000 (torch, onnxruntime, pydicom, SQLAlchemy, the
web console), and each full collection took 200 to 300 ms: a C-STORE arriving then was answered
that much later. What exists at start-up lives as long as the node, so it is collected once and
moved out of the collector's generations (`gc.freeze`); a full collection then walks only what was
made since, about 200,000 objects, in 35 to 50 ms (`bench/receive.py`'s latency table).
"""

from __future__ import annotations

import gc


def freeze_start_up_objects() -> int:
    """Collect once, then leave every object alive now out of later collections; returns how many.
    Objects made later are collected as before; a frozen object still goes when its last reference does."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
