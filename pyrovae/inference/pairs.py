"""The two decisions about a model and guide that every path reads (the estimators, AIS and
BDMC, refinement, the diagnostics, the objectives, ``fit``), each made in this one place:

- :func:`check_pair`: the guide matches the model, site by site: the same latent site names,
  the guide's support inside the model's, values of the shape the model's site scores, and the
  ``"data"`` plate on the same axis on both sides. Pyro itself only warns about a missing site,
  and a mismatch otherwise scores numbers that mean nothing.
- :func:`whole_data`: the pair holds per-datapoint state (a table of one row per datapoint,
  a guide sized for all N), so it must see the whole data, never a slice of it: found by
  structure (a parameter or buffer whose leading dim is N) and by value (the pair scores
  datapoints from several positions, the last rows included, the same in any order), unless
  model or guide declares ``per_datapoint`` (:func:`pyrovae.hooks.per_datapoint`).
"""

from __future__ import annotations

import math
from typing import Callable

import pyro
import torch
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyrovae import hooks
from pyrovae.errors import ModelError
from pyrovae.inference import weights
from pyrovae.inference.plates import data_size, slice_args, take_args
from pyrovae.sites import DATA_PLATE

PROBE_ROWS = 2  #: datapoints a pair is first run on, to check it runs on a slice of the data


def _latent(trace) -> dict:
    return {
        n: s
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    }


def _sample_sites(trs) -> list:
    return [s for t in trs for s in t.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


def example_rows(
    model: Callable, guide: Callable, args: tuple, kwargs: dict | None = None, whole: bool | None = None
) -> tuple[tuple, dict]:
    """The first :data:`PROBE_ROWS` datapoints of ``args`` and ``kwargs``, or all of them for a
    pair that runs only on whole data (``whole``, else :func:`whole_data`)."""
    kwargs = kwargs or {}
    n = data_size(args, kwargs)
    if n <= PROBE_ROWS or (whole if whole is not None else whole_data(model, guide, args, kwargs)):
        return args, kwargs
    return slice_args(args, kwargs, n, 0, PROBE_ROWS)


def _untraced():
    """Inspection runs on values, never recorded: outside any capture in progress (an objective
    prepared lazily inside :class:`pyrovae.runtime.compile.Compiled`'s first call)."""
    from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

    return disable_proxy_modes_tracing()


def check_pair(
    model: Callable, guide: Callable, args: tuple, kwargs: dict | None = None, whole: bool | None = None
) -> None:
    """Run the guide and the model once on example rows of ``args`` (:func:`example_rows`) with
    Pyro's argument checks on, and raise ModelError, in one line naming both sides, when that
    fails or when the guide does not match the model: every latent site of the model sampled
    by the guide and nothing else (a site the model enumerates itself excepted), the guide's
    support inside the model's, the guide's value of a shape the model's site scores without
    broadcasting, and the ``"data"`` plate on the same axis of the value on both sides
    (``whole``: the pair's :func:`whole_data`, when already known)."""
    with _untraced():
        _check_pair(model, guide, args, kwargs, whole)


def _check_pair(model, guide, args, kwargs, whole) -> None:
    rows, kwargs = example_rows(model, guide, args, kwargs, whole)
    guide_tr, model_tr = _run(model, guide, rows, kwargs, validate=False)
    in_model, in_guide = _latent(model_tr), _latent(guide_tr)
    # a discrete site the model enumerates itself is summed out there, not sampled by the guide
    enumerated = {
        n for n, s in in_model.items() if n not in in_guide and s["infer"].get("enumerate") == "parallel"
    }
    names_m, names_g = set(in_model) - enumerated, set(in_guide)
    if names_m != names_g:
        parts = []
        if names_m - names_g:
            parts.append(f"the guide does not sample {sorted(names_m - names_g)}")
        if names_g - names_m:
            parts.append(f"the model has no site {sorted(names_g - names_m)}")
        raise ModelError(
            f"model and guide do not match: {'; '.join(parts)} (model latent sites {sorted(names_m)}, "
            f"guide sites {sorted(names_g)}); give the guide one sample site per latent site of the "
            "model, with the same names"
        )
    for name in sorted(names_g):
        why = site_mismatch(in_guide[name], in_model[name])
        if why:
            raise ModelError(f"model and guide do not match at site {name!r}: {why}")
    _run(model, guide, rows, kwargs, validate=True)  # Pyro's argument checks, this once


def _run(model, guide, rows, kwargs, validate: bool):
    try:
        return weights.inspection_traces(model, guide, rows, kwargs, validate=validate)
    except (ValueError, RuntimeError, TypeError, IndexError, NotImplementedError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelError(
            f"running the guide and the model on {data_size(rows, kwargs)} datapoints failed "
            f"({type(e).__name__}: {first}); check their options and code against the data"
        ) from e


#: lower and upper bound, and whether integer-valued, of the scalar supports that order by inclusion
_BOUNDED = {
    "_Real": lambda c: (-math.inf, math.inf, False),
    "_GreaterThan": lambda c: (c.lower_bound, math.inf, False),
    "_GreaterThanEq": lambda c: (c.lower_bound, math.inf, False),
    "_LessThan": lambda c: (-math.inf, c.upper_bound, False),
    "_Interval": lambda c: (c.lower_bound, c.upper_bound, False),
    "_HalfOpenInterval": lambda c: (c.lower_bound, c.upper_bound, False),
    "_OpenInterval": lambda c: (c.lower_bound, c.upper_bound, False),
    "_UnitInterval": lambda c: (0.0, 1.0, False),
    "_Boolean": lambda c: (0, 1, True),
    "_IntegerInterval": lambda c: (c.lower_bound, c.upper_bound, True),
    "_IntegerGreaterThan": lambda c: (c.lower_bound, math.inf, True),
}


def _base(c):
    while hasattr(c, "base_constraint"):  # independent(...) reinterprets dims, not values
        c = c.base_constraint
    return c


def _kind(c) -> str:
    """The constraint's class name, or that of the first base class this module knows."""
    known = {*_BOUNDED, *_STRUCTURED}
    return next((k.__name__ for k in type(c).__mro__ if k.__name__ in known), type(c).__name__)


def _scalar(bound) -> float | None:
    if isinstance(bound, torch.Tensor):
        return float(bound) if bound.numel() == 1 else None
    return float(bound)


def support_inside(inner, outer) -> bool:
    """Whether the support ``inner`` lies inside ``outer``: by bounds for scalar supports, by
    kind for structured ones (a simplex, a Cholesky factor); True where it cannot be told (a
    constraint of the user's own, bounds that vary by element)."""
    a, b = _base(inner), _base(outer)
    ka, kb = _kind(a), _kind(b)
    if ka in _BOUNDED and kb in _BOUNDED:
        lo_a, hi_a, int_a = _BOUNDED[ka](a)
        lo_b, hi_b, int_b = _BOUNDED[kb](b)
        if int_a != int_b and not (int_a and kb == "_Real"):
            return False
        bounds = [_scalar(v) for v in (lo_a, hi_a, lo_b, hi_b)]
        return None in bounds or (bounds[0] >= bounds[2] - 1e-12 and bounds[1] <= bounds[3] + 1e-12)
    if ka == kb:
        return True
    if kb == "_Real":  # a structured value is real-valued too
        return ka not in ("_Boolean", "_IntegerInterval", "_IntegerGreaterThan")
    return not ({ka, kb} <= {*_BOUNDED, *_STRUCTURED})


_STRUCTURED = {
    "_Simplex",
    "_PositiveDefinite",
    "_LowerCholesky",
    "_CorrCholesky",
    "_Sphere",
    "_OrderedVector",
}


def _family(fn) -> str:
    """The distribution's name under ``Independent`` and masking wrappers."""
    while isinstance(fn, torch.distributions.Independent) or type(fn).__name__ == "MaskedDistribution":
        fn = fn.base_dist
    return type(fn).__name__


def _data_axis(site, value: bool = True) -> int | None:
    """The axis of the ``"data"`` plate in the site's value (or, ``value=False``, in its
    distribution's batch and event shape); None outside the plate."""
    frame = next((f for f in site["cond_indep_stack"] if f.name == DATA_PLATE), None)
    if frame is None:
        return None
    fn = site["fn"]
    dims = site["value"].dim() if value else len(fn.batch_shape) + len(fn.event_shape)
    return dims + frame.dim - fn.event_dim


def site_mismatch(g: dict, m: dict) -> str | None:
    """Why the guide's site ``g`` cannot stand for the model's site ``m`` (None when it can)."""
    gf, mf = g["fn"], m["fn"]
    if weights.is_point_mass(gf):  # a point mass lies wherever its value is
        inside = bool(torch.all(mf.support.check(g["value"])))
    else:
        inside = support_inside(gf.support, mf.support)
    if not inside:
        return (
            f"the guide draws it from {_family(gf)} on {_base(gf.support)}, outside the model's "
            f"{_family(mf)} on {_base(mf.support)}; give the guide a distribution on the model's "
            "support"
        )
    value, shape = tuple(m["value"].shape), tuple(mf.batch_shape + mf.event_shape)
    try:
        fits = tuple(torch.broadcast_shapes(value, shape)) == shape
    except RuntimeError:
        fits = False
    if not fits:
        return (
            f"the guide's value has shape {value}, the model's {_family(mf)} scores shape {shape}; "
            "give the guide's site the model's batch and event shape"
        )
    axes = _data_axis(g, value=False), _data_axis(m, value=False)
    if axes[0] != axes[1]:
        where = lambda a: f"on axis {a} of the value" if a is not None else "outside it"
        return (
            f"the {DATA_PLATE!r} plate is {where(axes[0])} in the guide and {where(axes[1])} in the model; "
            f"sample it inside the same pyro.plate({DATA_PLATE!r}, N) on both sides"
        )
    return None


def _torch_layer(module: nn.Module) -> bool:
    """A layer of torch.nn (Linear, a convolution, a norm, an embedding): weights, not tables."""
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)
    return not isinstance(module, containers) and any(
        c.__module__.startswith("torch.nn.modules") and c is not nn.Module for c in type(module).__mro__
    )


def tables(model: Callable, guide: Callable, n: int, traces=()) -> list[str]:
    """Parameters and buffers with one row per datapoint (leading dim ``n``): of the modules
    behind model and guide (torch.nn layers left out) and the ``pyro.param`` sites of ``traces``."""
    found, layers = [], set()
    for owner in hooks.owner_modules(model, guide):
        for prefix, module in owner.named_modules():
            named = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            for name, t in named:
                full = f"{prefix}.{name}" if prefix else name
                if _torch_layer(module):
                    layers.add(full)
                elif t is not None and t.dim() > 0 and t.shape[0] == n:
                    found.append(full)
    for tr in traces:
        for name, site in tr.nodes.items():
            v = site.get("value")
            if site["type"] == "param" and name not in layers and name not in found:
                if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
                    found.append(name)
    return found


def per_datapoint_state(
    model: Callable,
    guide: Callable,
    args,
    kwargs=None,
    *,
    rows: Callable | None = None,
    size: int | None = None,
) -> str | None:
    """Why the pair must run on all ``N`` datapoints at once (None when slices of the data score
    as the whole does): :func:`tables` of N rows; a run on the first rows that fails or gives a
    ``"data"`` plate of another size; or datapoints from several positions (first, middle, last
    rows) scored differently when their order is reversed (a table read by position,
    ``loc[:x.shape[0]]``). Probed in eval mode, on a forked random stream. Without ``args``,
    ``rows(index)`` gives the arguments (args, kwargs) of the datapoints ``index`` of ``size``
    (the training loop builds only the rows the probe reads)."""
    if rows is None:
        kwargs = kwargs or {}
        size = data_size(args, kwargs)
        rows = lambda index: take_args(args, kwargs, size, index)  # noqa: E731
    with _untraced():
        return _per_datapoint_state(model, guide, rows, size)


def _per_datapoint_state(model: Callable, guide: Callable, rows: Callable, n: int) -> str | None:
    declared = hooks.per_datapoint(model, guide)
    if declared is not None or n <= PROBE_ROWS:
        return "model or guide declares per_datapoint = True" if declared else None
    named = tables(model, guide, n)
    if named:
        return f"{named[0]!r} has one row per datapoint ({n})"
    with hooks.eval_mode(model, guide), pyro.validation_enabled(False):
        try:
            first = weights.inspection_traces(model, guide, *rows(torch.arange(PROBE_ROWS)))
        except Exception as e:  # noqa: BLE001 - Pyro's shape mismatch, or the program's own error
            return f"it does not run on {PROBE_ROWS} of the {n} datapoints ({type(e).__name__})"
        named = tables(model, guide, n, first)
        if named:
            return f"{named[0]!r} has one row per datapoint ({n})"
        for site in _sample_sites(first):
            axis = _data_axis(site)
            if (
                axis is not None
                and 0 <= axis < site["value"].dim()
                and site["value"].shape[axis] not in (1, PROBE_ROWS)
            ):
                size = site["value"].shape[axis]
                return (
                    f"on {PROBE_ROWS} datapoints, site {site['name']!r} has a {DATA_PLATE!r} plate of {size}"
                )
        return _reordered(model, guide, rows, n)


def _reordered(model, guide, rows: Callable, n: int) -> str | None:
    """Whether datapoints 0, 1, 2, N/2, N-2, N-1 score alike in a batch in that order and reversed."""
    picked = torch.tensor(sorted({0, 1, 2, n // 2, n - 2, n - 1}))
    back = torch.arange(len(picked) - 1, -1, -1)
    try:
        a, k = rows(picked)
        ahead = weights.inspection_traces(model, guide, a, k)
        values = {s["name"]: _flip(s, back) for s in _sample_sites(ahead[:1]) if not s["is_observed"]}
        same = {s["name"]: s["value"] for s in _sample_sites(ahead[:1]) if not s["is_observed"]}
        with torch.random.fork_rng(devices=weights.cuda_devices(a, k)):
            torch.rand(1)  # other noise: a program that draws more than its sample sites shows it
            again = weights.inspection_traces(model, weights.at_values(guide, same), a, k)
        a, k = rows(picked.flip(0))
        behind = weights.inspection_traces(model, weights.at_values(guide, values), a, k)
        nesting = weights.plate_nesting(model, guide, a, k, traces=ahead)
        before, after = _per_row(ahead, nesting), _per_row(behind, nesting)
    except Exception as e:  # noqa: BLE001
        return f"it does not run on datapoints taken from across the data ({type(e).__name__})"
    if _differs(before, _per_row(again, nesting), torch.arange(len(picked))):
        return None  # its scores move with noise of its own: the value cannot tell (its structure did)
    moved = _differs(before, after, back)
    return (
        None
        if moved is None
        else f"the {moved[0]}'s site {moved[1]!r} scores a datapoint differently elsewhere in a batch"
    )


def _differs(before: dict, after: dict, order: torch.Tensor) -> tuple[str, str] | None:
    """The first (side, site) whose per-datapoint scores ``before``, reordered by ``order``,
    differ from ``after`` (None when none does)."""
    for (side, name), lp in before.items():
        other = after.get((side, name))
        if other is None or other.shape != lp.shape:
            return side, name
        if not torch.allclose(lp[order], other, rtol=1e-4, atol=1e-4, equal_nan=True):
            return side, name
    return None


def _per_row(trs, nesting: int) -> dict[tuple[str, str], torch.Tensor]:
    """Each sample site's log-density per datapoint, by (side, name), for sites in the ``"data"``
    plate; for a point mass, whose density at a replayed value is 0 or -inf by rounding, the sum
    of its location per datapoint instead."""
    out = {}
    for side, tr in zip(("guide", "model"), trs):
        for s in _sample_sites([tr]):
            if _data_axis(s) is None:
                continue
            if weights.is_point_mass(s["fn"]):
                where = s["fn"].mean.expand(s["value"].shape)
                out[side, s["name"]] = weights.per_datapoint(where, s, -nesting - 1, 1, s["fn"].event_dim)[
                    0
                ].sum(-1)
            else:
                out[side, s["name"]] = weights.site_log_prob(s, -nesting - 1, 1)[0]
    return out


def _flip(site: dict, order: torch.Tensor) -> torch.Tensor:
    axis = _data_axis(site)
    value = site["value"]
    if axis is None or not 0 <= axis < value.dim() or value.shape[axis] != len(order):
        return value
    return value.index_select(axis, order.to(value.device))


def whole_data(model: Callable, guide: Callable, args, kwargs=None) -> bool:
    """Whether the pair must run on all its datapoints at once (:func:`per_datapoint_state`)."""
    return per_datapoint_state(model, guide, args, kwargs) is not None
