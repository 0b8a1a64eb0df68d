"""Input checks, made once before training, evaluation or diagnostics (library level).

Every entry point (``fit``, ``evaluate_data``, the diagnostics) checks its inputs here, so
that inner loops can run with Pyro's own argument checks off: data shape, dtype and
finiteness, the model's own check (:func:`pyrovae.hooks.check_data`), conditioning rows,
and that the guide samples exactly the model's latent sites.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pyro.poutine.util import site_is_subsample

from pyrovae import hooks
from pyrovae.data.splits import Split
from pyrovae.errors import ConfigError, DataError, ModelError, PyrovaeError
from pyrovae.inference.chunks import runs_on_slices
from pyrovae.inference.weights import inspection_traces


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


def _latent(trace) -> set[str]:
    return {
        n
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    }


def check_sites(model: Callable, guide: Callable, *args) -> None:
    """Run the guide and the model once on ``args`` with Pyro's argument checks on, and raise
    ModelError when that fails (naming the error) or unless every latent sample site of the
    model is sampled by the guide and the guide samples nothing the model lacks (Pyro only warns)."""
    try:
        # Pyro's argument checks, this once: a clear error for bad values
        guide_tr, model_tr = inspection_traces(model, guide, args, {}, validate=True)
    except (ValueError, RuntimeError, TypeError, IndexError, NotImplementedError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelError(
            f"running the guide and the model on {args[0].shape[0]} datapoints failed ({type(e).__name__}: "
            f"{first}); check their options and code against the data"
        ) from e
    in_model, in_guide = _latent(model_tr), _latent(guide_tr)
    # a discrete site the model enumerates itself is summed out there, not sampled by the guide
    in_model -= {n for n in in_model - in_guide if model_tr.nodes[n]["infer"].get("enumerate") == "parallel"}
    if in_model != in_guide:
        parts = []
        if in_model - in_guide:
            parts.append(f"the guide does not sample {sorted(in_model - in_guide)}")
        if in_guide - in_model:
            parts.append(f"the model has no site {sorted(in_guide - in_model)}")
        raise ModelError(
            f"model and guide do not match: {'; '.join(parts)} (model latent sites "
            f"{sorted(in_model)}, guide sites {sorted(in_guide)}); give the guide one "
            "sample site per latent site of the model, with the same names"
        )


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
    check_sites(model, guide, *example_rows(model, guide, args))
    return args


def example_rows(model: Callable, guide: Callable, args: tuple, rows: int = 2) -> tuple:
    """The first ``rows`` datapoints of ``args`` when the pair runs on a slice of the data,
    else all of them (a guide sized for all N datapoints: see
    :func:`pyrovae.inference.chunks.runs_on_slices`)."""
    n = args[0].shape[0]
    if n <= rows or not runs_on_slices(model, guide, args, {}, rows):
        return args
    return tuple(a[:rows] for a in args)
