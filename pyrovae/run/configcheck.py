"""A whole config checked before anything is written or loaded (run level).

Names and ranges are checked as the config is read (:mod:`pyrovae.run.config`); here the model's
and guide's options are checked against the annotated types of their constructors, the
pair is built for the dataset's image shape (on the ``meta`` device for a dry check: no
memory, no data), and the device is checked. Every problem is one :class:`~pyrovae.errors.ConfigError`.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import inspect
import math
import types
import typing
import warnings
from typing import Any

import torch

from pyrovae import hooks
from pyrovae.data.splits import image_shape
from pyrovae.errors import ConfigError, PyrovaeError
from pyrovae.registry import lookup
from pyrovae.run.config import Config
from pyrovae.run.recipes import build
from pyrovae.runtime.devices import resolve_device

MAX_PARAMETERS = 2**31  #: a model and guide with more parameters than this are refused (8 GiB in float32)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value (TOML data) fits a constructor's type hint; unknown hints pass."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or isinstance(hint, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, cabc.Sequence) or hint in (list, tuple, cabc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        inner = [a for a in args if a is not Ellipsis]
        return not inner or all(_matches(v, inner[0]) for v in value)
    if origin in (dict, cabc.Mapping) or hint in (dict, cabc.Mapping):
        return isinstance(value, cabc.Mapping)
    return not isinstance(hint, type) or isinstance(value, hint)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Union or isinstance(hint, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (list, tuple, cabc.Sequence):
        return f"a list of {_describe(typing.get_args(hint)[0])}" if typing.get_args(hint) else "a list"
    if origin in (dict, cabc.Mapping):
        return "a table"
    return getattr(hint, "__name__", str(hint))


def check_options(kind: str, name: str, options: dict, folders=()) -> None:
    """Each option of the ``kind`` ``name`` (registered or an import path) against its
    constructor's type hints."""
    cls = lookup(kind, name, folders)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable annotations: the dry build still checks
        hints = {}
    for key, value in options.items():
        if key in hints and not _matches(value, hints[key]):
            raise ConfigError(f"{kind}.{key} must be {_describe(hints[key])}, got {value!r}")


def validate(config: Config, device: torch.device | None = None, *, meta: bool = True) -> tuple[Any, Any]:
    """Raise ConfigError for anything wrong with ``config`` that shows without data, and return
    the model and guide it builds for the dataset's image shape: on the ``meta`` device (no
    memory) with ``meta``, else for real (the pair a command then trains: built once).
    ``device`` is the command's resolved device (by default resolved from ``config.device``)."""
    device = resolve_device(config.device) if device is None else device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {config.device!r}: no CUDA device is available here; use auto or cpu")
    check_options("model", config.model.name, dict(config.model.options), config.paths)
    check_options("guide", config.guide.name, dict(config.guide.options), config.paths)
    d = config.data
    shape = image_shape(d.name, d.root, **d.source())
    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            model, guide = build(config, shape)
    except PyrovaeError:
        raise
    except Exception as e:  # noqa: BLE001 - any constructor failure (or allocation) is a config problem
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(
            f"[model] {config.model.name!r} / [guide] {config.guide.name!r} with these options do "
            f"not build ({type(e).__name__}: {first}); check their values"
        ) from e
    count = sum(p.numel() for m in (model, guide) if isinstance(m, torch.nn.Module) for p in m.parameters())
    if count > MAX_PARAMETERS:
        raise ConfigError(
            f"the model and guide would have {count:,} parameters (more than {MAX_PARAMETERS:,}); "
            "check the sizes in [model] and [guide]"
        )
    with warnings.catch_warnings():  # refusals now, before any data is read; warnings come with fit's checks
        warnings.simplefilter("ignore")
        hooks.check_pixels(model, d.pixels)
    return model, guide
