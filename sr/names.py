"""Keeping patients' names out of the log while highdicom builds our objects.

highdicom warns about a person name with a single component ("Smith" rather than "Smith^") and
quotes the name in the warning; a warning becomes a log line. The names are copied unchanged from
the source images (a PACS matches on them), so that warning, and only it, is silenced here.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_PERSON_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"


@contextmanager
def names_kept_out_of_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PERSON_NAME_WARNING, category=UserWarning)
        yield
