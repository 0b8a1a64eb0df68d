"""How a run of a model and guide is laid out over particles and datapoints: K particles under a
plate left of every plate of the program (Pyro's ``vectorize_particles``), or, for a pair whose
code does not broadcast over that dim, its data repeated K times along the ``"data"`` plate (the
decision is :func:`pyrovae.inference.particles.decide`'s, recorded here per pair); and the
tensor arguments that carry one row per datapoint."""

from __future__ import annotations

import weakref
from typing import Callable

import pyro
import pyro.poutine as poutine
import torch

from pyrovae.errors import ModelError, PyrovaeError

PARTICLE_PLATE = "_pyrovae_particles"  #: the plate of the K vectorized particles, outside the data plate
#: a site's ``infer`` key: K, when the pair ran on its data repeated K times instead of under the plate
TILED = "_pyrovae_tiled"


def vectorize(fn: Callable, num_samples: int, particle_dim: int) -> Callable:
    """``fn`` run inside a plate of ``num_samples`` particles at ``particle_dim``."""

    def wrapped(*a, **k):
        with pyro.plate(PARTICLE_PLATE, num_samples, dim=particle_dim):
            return fn(*a, **k)

    return wrapped


#: pairs whose code does not broadcast over a leading particle dim, by owner (guide, then model);
#: decided once by :func:`pyrovae.inference.particles.decide`, read by :func:`traces`
_TILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def owner(fn: Callable):
    """What a callable's decisions are kept under: the module behind a bound method or a
    ``functools.partial``, else the callable itself."""
    while hasattr(fn, "func") and not isinstance(fn, torch.nn.Module):
        fn = fn.func
    return getattr(fn, "__self__", None) if hasattr(fn, "__self__") else fn


def decided(model: Callable, guide: Callable) -> bool | None:
    """Whether the pair runs on repeated data rather than under a particle plate (None: undecided)."""
    try:
        return _TILED.get(owner(guide), {}).get(owner(model))
    except TypeError:  # not weakly referable
        return None


def remember(model: Callable, guide: Callable, tiled: bool) -> None:
    try:
        _TILED.setdefault(owner(guide), weakref.WeakKeyDictionary())[owner(model)] = tiled
    except TypeError:
        pass


def is_tiled(model: Callable, guide: Callable) -> bool:
    return bool(decided(model, guide))


def data_size(args, kwargs) -> int:
    """The number of datapoints: the leading size of the first tensor argument."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            return a.shape[0]
    raise PyrovaeError("no tensor argument to read the number of datapoints from")


def slice_args(args, kwargs, n: int, start: int, stop: int):
    """Slice every tensor argument whose leading dim is the data size ``n``."""
    cut = lambda a: a[start:stop] if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == n else a
    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def take_args(args, kwargs, n: int, index: torch.Tensor):
    """The rows ``index`` of every tensor argument whose leading dim is the data size ``n``."""
    take = lambda a: (
        a[index.to(a.device)] if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == n else a
    )
    return tuple(take(a) for a in args), {k: take(v) for k, v in kwargs.items()}


def tile(args, kwargs, k: int):
    """Every tensor argument with the data's leading size n repeated k times: (k n, ...)."""
    n = data_size(args, kwargs)

    def rep(a):
        per_datapoint = isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == n
        return a.repeat(k, *[1] * (a.dim() - 1)) if per_datapoint else a

    return tuple(map(rep, args)), {key: rep(v) for key, v in kwargs.items()}


def replayed(program: Callable, trace, args, kwargs, k: int, particle_dim: int):
    """The trace of ``program`` replayed on ``trace`` (one of :func:`traces`), laid out as it is:
    under the particle plate, or on the data repeated k times."""
    tiled = any(s["type"] == "sample" and s["infer"].get(TILED) for s in trace.nodes.values())
    if tiled:
        args, kwargs = tile(args, kwargs, k)
    elif k > 1:
        program = vectorize(program, k, particle_dim)
    out = poutine.trace(poutine.replay(program, trace=trace)).get_trace(*args, **kwargs)
    if tiled:
        mark_tiled(k, out)
    return out


def mark_tiled(k: int, *trs) -> None:
    """Mark every sample site of traces run on k copies of the data (:data:`TILED`)."""
    for tr in trs:
        for site in tr.nodes.values():
            if site["type"] != "sample":
                continue
            if site["infer"].get("_enumerate_dim") is not None:
                raise ModelError(
                    f"site {site['name']!r} is enumerated and the pair does not broadcast over a "
                    "leading particle dim; write model and guide to broadcast over leading dims "
                    "(docs/guide/own_model.md, the particle dimension)"
                )
            site["infer"] = {**site["infer"], TILED: k}
