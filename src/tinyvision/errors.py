"""The project's own exceptions: each one carries a message a user can act on.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
from pathlib import Path


class TinyVisionError(Exception):
    """Base class: an error the user can fix (bad input, missing data, bad config)."""


class ConfigError(TinyVisionError, ValueError):
    """A configuration is invalid: unknown key, wrong type or impossible value."""


class DataError(TinyVisionError):
    """A data set is missing, corrupt, truncated or fails its integrity check."""


class TrainingError(TinyVisionError):
    """Training cannot go on (non-finite loss, out of memory); the message says why."""


class TrainingInterrupted(TinyVisionError):
    """Ctrl-C during training: the state was saved and the run can be resumed."""


class WriteError(TinyVisionError):
    """A file could not be written (disk full, read-only folder, no permission).

    ``path`` is the file that was being written; ``errno`` the operating system's error number
    (``errno.ENOSPC`` for a full disk). Files are written atomically, so the failed write left
    the previous version of ``path``, if any, untouched.
    """

    def __init__(self, path: str | os.PathLike, err: OSError) -> None:
        self.path = Path(path)
        self.errno = err.errno
        self.strerror = err.strerror or str(err)
        super().__init__(f"cannot write {self.path}: {self.strerror}")


class RunInUse(TinyVisionError):
    """Another process holds the run folder's lock: it is training in that folder now."""
