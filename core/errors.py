"""dfnode's exceptions, one hierarchy for the whole node::

    DfnodeError
    ├── ConfigError          config.yaml is invalid (carries every problem with its key path)
    ├── ModelLoadError       a model card or its weights are missing, corrupt or mismatched
    ├── NotEvaluable         an image the model cannot use (colour, scout, no pixel data ...)
    ├── SpoolError           an instance could not be written to the spool
    ├── DatabaseUnavailable  the database cannot be reached or opened
    └── UserError            a console user cannot be added, changed, removed or made by setup token
"""

from __future__ import annotations


class DfnodeError(Exception):
    """Base class of every error dfnode raises on purpose."""


class ConfigError(DfnodeError):
    """The configuration is invalid; ``problems`` lists ``(key path, message)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path}: {message}" for path, message in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class ModelLoadError(DfnodeError):
    """A model's card or weights cannot be used; the message names the file and the fault."""


class NotEvaluable(DfnodeError):
    """An image the model cannot evaluate; the message is the reason shown to users."""


class SpoolError(DfnodeError):
    """Writing a received instance to the spool failed (disk full, read-only, I/O error)."""


class DatabaseUnavailable(DfnodeError):
    """The database cannot be reached or opened; the message names it (never its password) and why."""


class UserError(DfnodeError):
    """A console user cannot be added, changed or removed; the message says why."""
