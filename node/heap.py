"""Python's cyclic garbage collector kept off the receive path.

A full collection walks every object the collector tracks and holds Python's lock while it does.
After its first report `dfnode serve` tracked about 760,000 (torch, onnxruntime, pydicom,
SQLAlchemy, the web console, and highdicom's tables of the standard, which it reads on the first
report), and each full collection took 200 to 300 ms: a C-STORE arriving then was answered that
much later. What exists at start-up lives as long as the node, so highdicom's tables are read at
start, everything is collected once and moved out of the collector's generations (`gc.freeze`),
and a full collection walks only what was made since (`bench/receive.py`'s latency table).
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

# highdicom reads these JSON tables of the standard on the first SR or key image (about 200,000
# dicts and lists); they are cached for the life of the process
HIGHDICOM_TABLES = ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map")


def read_highdicom_tables() -> bool:
    """Read highdicom's cached tables now; False where this highdicom has other names for them (the
    first report then reads them, and full collections walk them)."""
    try:
        from highdicom import _standard_utils

        for name in HIGHDICOM_TABLES:
            getattr(_standard_utils, name)()
    except (ImportError, AttributeError) as exc:
        log.debug("highdicom's tables not read at start: %s", exc)
        return False
    return True


def freeze_start_up_objects() -> int:
    """Read highdicom's tables, collect once, then leave every object alive now out of later
    collections; returns how many. Objects made later are collected as before; a frozen object
    still goes when its last reference does."""
    read_highdicom_tables()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
