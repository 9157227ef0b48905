"""The project's own exceptions: each one carries a message a user can act on.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""


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
