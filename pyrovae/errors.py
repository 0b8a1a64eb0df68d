"""pyrovae's own exceptions: each message names the problem and the fix."""

from __future__ import annotations

import difflib
from typing import Iterable


class PyrovaeError(Exception):
    """Base class of every error pyrovae raises on purpose."""


class ConfigError(PyrovaeError, ValueError):
    """A config key, value or name is wrong."""


class DataError(PyrovaeError, ValueError):
    """A dataset is missing, corrupt, or does not fit the model."""


class CheckpointError(PyrovaeError):
    """A checkpoint or run directory is missing or unreadable."""


class ModelError(PyrovaeError, ValueError):
    """A model and guide do not fit together (their sample sites differ)."""


class NonFiniteError(PyrovaeError, FloatingPointError):
    """Training met a non-finite loss or gradient (``train.nan_policy = "stop"``)."""


class Interrupted(PyrovaeError, KeyboardInterrupt):
    """Training was stopped by SIGINT or SIGTERM after saving a checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def unknown_name(kind: str, name: str, known: Iterable[str]) -> ConfigError:
    """A ConfigError for an unknown name, listing the known ones and the closest match."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown {kind} {name!r}; known: {', '.join(known)}.{hint}")
