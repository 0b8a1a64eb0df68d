"""Input checks, made once before training, evaluation or diagnostics (library level).

Every entry point (``fit``, ``evaluate_data``, the diagnostics) checks its inputs here, so
that inner loops can run with Pyro's own argument checks off: data shape, dtype and
finiteness, the model's own check (:func:`pyrovae.hooks.check_data`), conditioning rows,
and the pair itself (:func:`pyrovae.inference.pairs.check_pair`).
"""

from __future__ import annotations

from typing import Any

import torch

from pyrovae import hooks
from pyrovae.data.splits import Split
from pyrovae.errors import ConfigError, DataError, PyrovaeError
from pyrovae.inference.pairs import check_pair


def as_split(data: Split | torch.Tensor) -> Split:
    """Wrap a plain tensor of observations as a Split (no resampling)."""
    if isinstance(data, Split):
        return data
    if isinstance(data, torch.Tensor):
        if data.dim() < 1 or data.shape[0] == 0:
            raise DataError(
                f"data must be a non-empty batch of shape (N, ...), got a tensor of shape {tuple(data.shape)}"
            )
        labels = torch.full((data.shape[0],), -1, dtype=torch.long, device=data.device)
        if data.dtype == torch.uint8:  # 8-bit levels, or binary pixels when all are 0 or 1
            return (
                Split(data, labels, "static", maximum=1) if data.max() <= 1 else Split(data, labels, "8bit")
            )
        return Split(data, labels, "continuous")
    raise PyrovaeError(f"data must be a pyrovae.data.Split or a torch.Tensor, got {type(data).__name__}")


def check_data(model: Any, split: Split, name: str, chunk: int = 8192) -> None:
    """Check all of ``split`` once, chunk by chunk (bounded memory), so that the training loop
    can run with Pyro's validation off."""
    x = split.images
    if x.dim() < 1 or len(split) == 0:
        raise DataError(f"{name} data must be a non-empty batch of shape (N, ...), got {tuple(x.shape)}")
    if not x.is_floating_point() and x.dtype != torch.uint8:
        raise DataError(
            f"{name} data must be a floating-point (or uint8) tensor, got {x.dtype}; use x.float()"
        )
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        for start in range(0, len(split), chunk):
            part = split.values(slice(start, start + chunk))
            if not torch.isfinite(part).all():
                raise DataError(f"{name} data contains NaN or inf; clean it first")
            if split.pixels == "dynamic" and ((part < 0) | (part > 1)).any():
                raise DataError(f"{name} data: dynamic binarization needs intensities in [0, 1]")
            hooks.check_data(model, split.observe(slice(start, start + chunk)))


def check_inputs(
    model: Any,
    guide: Any,
    x: torch.Tensor,
    *condition: torch.Tensor,
    images: torch.Tensor | None = None,
    num_samples: int = 1,
    name: str = "evaluation",
) -> tuple:
    """The checks training makes (shape, dtype, NaN/inf, the model's own, chunk by chunk), on
    ``images`` (or ``x``), plus conditioning rows, matching latent sites and ``num_samples``;
    returns the model's arguments ``(x, *condition)``."""
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
    check_data(model, as_split(x if images is None else images), name)
    for a in condition:
        if not isinstance(a, torch.Tensor) or a.dim() < 1 or a.shape[0] != x.shape[0]:
            got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise DataError(f"each conditioning tensor needs one row per datapoint ({x.shape[0]}), got {got}")
        if a.is_floating_point() and not torch.isfinite(a).all():
            raise DataError("the conditioning data contain NaN or inf; clean them first")
    args = (x, *condition)
    check_pair(model, guide, args)
    return args
