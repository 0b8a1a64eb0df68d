"""pyrovae's own exceptions: each message names the problem and the fix."""

from __future__ import annotations

import difflib
import math
from typing import Any, Iterable


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


# The checks every settings dataclass runs in __post_init__, raising the errors above.
def require(cls_name: str, checks: dict[str, tuple[Any, bool, str]]) -> None:
    """Raise ConfigError for the first (value, ok, rule) whose ``ok`` is False."""
    for key, (value, ok, rule) in checks.items():
        if not ok:
            raise ConfigError(f"{cls_name}.{key} must be {rule}, got {value!r}")


def require_names(section: str, checks: dict[str, tuple[str, Any, tuple[str, ...]]]) -> None:
    """Raise ConfigError (with the closest known name) for the first unknown name."""
    for key, (label, value, known) in checks.items():
        if value not in known:
            raise unknown_name(f"{label} ({section}.{key})", value, known)


def int_in(v, low, high) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v)


def at_least(v, low) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= low and math.isfinite(v)
