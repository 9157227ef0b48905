"""The project's own exceptions: each one carries a message a user can act on.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
:func:`format_validation_error` turns pydantic's validation errors into the message a
``ConfigError`` carries (used by the config and by the model registry alike).
"""

from __future__ import annotations

import os
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel


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


def format_validation_error(
    err: pydantic.ValidationError, schema: type[BaseModel] | None = None, prefix: str = ""
) -> str:
    """One line per problem, with the dotted key and, for unknown keys, a 'did you mean'."""
    known = _field_paths(schema) if schema is not None else []
    lines = []
    for problem in _one_branch_per_union(err.errors()):
        key = (prefix + ".".join(str(part) for part in problem["loc"])).rstrip(".") or "config"
        if problem["type"] == "extra_forbidden":
            close = get_close_matches(key, [prefix + k for k in known], n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            lines.append(f"  {key}: unknown key.{hint}")
        else:
            message = problem["msg"]
            if problem["type"] == "value_error":  # raised by our own validators
                message = message.removeprefix("Value error, ")
            got = problem.get("input")
            lines.append(
                f"  {key}: {message}" + ("" if isinstance(got, dict) else f" (got {got!r})")
            )
    return "invalid configuration:\n" + "\n".join(lines)


# pydantic's error types for "not even the right type" (as opposed to a wrong value).
_TYPE_MISMATCH = ("_type", "_parsing", "int_from_float")


def _one_branch_per_union(problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For a union field (``int | list[int]``) pydantic reports every branch it tried, with the
    branch's name in the location ("constrained-int", "list[constrained-int]"). Keep only the
    branch that accepted the value's type (for [0]: "token_hidden.0: should be greater than
    0", not also "should be a valid integer"), or the first one if none did; drop the names."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for problem in problems:
        loc = problem["loc"]
        branch = next((i for i, part in enumerate(loc) if _is_union_branch(part)), len(loc))
        groups.setdefault(loc[:branch], []).append(problem)
    kept = []
    for group in groups.values():
        matched = [p for p in group if not p["type"].endswith(_TYPE_MISMATCH)]
        for problem in matched or group[:1]:
            loc = tuple(part for part in problem["loc"] if not _is_union_branch(part))
            kept.append({**problem, "loc": loc})
    return kept


def _is_union_branch(part: str | int) -> bool:
    # Field names are identifiers; branch names are types: "int", "list[int]", "literal['a']".
    return isinstance(part, str) and (
        not part.isidentifier() or part in ("int", "float", "str", "bool", "list", "dict")
    )


def _field_paths(schema: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in schema.model_fields.items():
        annotation = field.annotation
        paths.append(prefix + name)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += _field_paths(annotation, f"{prefix}{name}.")
    return paths
