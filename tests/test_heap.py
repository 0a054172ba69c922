"""The start-up objects of `dfnode serve` are left out of the garbage collector's full collections
(which hold Python's lock, and so the answer to a C-STORE, for as long as they walk), and what is
made later is still collected. Run in a child process: freezing this one would keep the test
session's own garbage."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import gc, weakref
import pydicom, pynetdicom, sqlalchemy, torch  # what a node holds from start-up
from highdicom import _standard_utils
from node.heap import HIGHDICOM_TABLES, freeze_start_up_objects

frozen = freeze_start_up_objects()
for name in HIGHDICOM_TABLES:  # what the first report reads: already there, and frozen
    getattr(_standard_utils, name)()
tracked = len(gc.get_objects())

class Node:
    pass

cycle = Node(); cycle.itself = cycle; later = weakref.ref(cycle)
del cycle
gc.collect()
print(frozen, tracked, later() is None)
"""


def test_start_up_objects_and_highdicoms_tables_are_frozen_and_later_cycles_are_still_collected() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True)
    frozen, tracked, collected = out.stdout.split()
    assert int(frozen) > 100_000  # torch alone brings more
    assert int(tracked) < 1_000  # a full collection walks what is made later, not highdicom's tables
    assert collected == "True"
