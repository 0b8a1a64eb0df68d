"""How K particles per datapoint are drawn for a pair: the one decision, made once per pair.

pyrovae draws K particles by running model and guide once under a plate of size K left of
every plate of theirs (Pyro's ``vectorize_particles``): fast, but it asks the code to
broadcast over that leading dim. Code written as Pyro's own examples write it often does
not (``torch.cat([h, z], -1)`` of an encoder feature (N, H) and a draw (K, N, D)); Pyro's
``Trace_ELBO`` trains it because it draws one particle at a time. For such a pair pyrovae
runs the code on its data repeated K times along the ``"data"`` plate instead (the
replication of Burda et al. 2015's implementation): the same numbers, one pass, with the
per-datapoint work (the encoder) done K times rather than once. At one particle there is no
particle dim at all (:func:`pyrovae.inference.weights.traces`).

:func:`decide` probes a pair once (K = 3 particles of two datapoints, each particle's
log-densities compared with a run of the code alone at the same values), says once when it
falls back, and records the decision that :func:`pyrovae.inference.weights.traces` reads
on every path (training objectives, estimators, diagnostics, refinement).
"""

from __future__ import annotations

import warnings
from typing import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyrovae.errors import ModelError
from pyrovae.hooks import eval_mode
from pyrovae.inference import plates, weights

PROBE_PARTICLES = 3  #: particles of the probe (not 2, the probe's number of datapoints)

#: what a pair that does not broadcast over particles is told to change
HOW_TO_BROADCAST = (
    "to draw all particles in one pass, write it to broadcast over leading dims, e.g. "
    "torch.cat([h.expand(*z.shape[:-1], -1), z], -1) (docs/guide/own_model.md, the particle dimension)"
)


class _LastSite(Messenger):
    """Remembers the name of the last sample site run (to name where a program failed)."""

    def __init__(self):
        super().__init__()
        self.name: str | None = None

    def _pyro_sample(self, msg):
        self.name = msg["name"]


def _sites(trace) -> dict:
    return {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}


def broadcast_failure(
    model: Callable, guide: Callable, args, kwargs, nesting: int | None = None
) -> str | None:
    """None when the pair broadcasts over a leading particle dim; else where and how it fails.
    Probed in eval mode (dropout would tell the particles apart), the modes restored after."""
    with eval_mode(model, guide):
        return _probe(model, guide, args, kwargs, nesting)


def _probe(model: Callable, guide: Callable, args, kwargs, nesting: int | None) -> str | None:
    a, k = plates.slice_args(args, kwargs, plates.data_size(args, kwargs), 0, 2)
    try:
        weights.inspection_traces(model, guide, a, k)
    except Exception:  # noqa: BLE001 - a guide sized for all N datapoints: probe on all of them
        a, k = args, kwargs
    nesting = weights.plate_nesting(model, guide, a, k) if nesting is None else nesting
    pdim, last = -nesting - 1, _LastSite()
    with torch.random.fork_rng(devices=weights.cuda_devices(a, k)), torch.no_grad(), poutine.block():
        try:
            with pyro.validation_enabled(False):
                g, m = (plates.vectorize(p, PROBE_PARTICLES, pdim) for p in (guide, model))
                guide_tr = poutine.trace(last(g)).get_trace(*a, **k)
                model_tr = poutine.trace(last(poutine.replay(m, trace=guide_tr))).get_trace(*a, **k)
        except Exception as e:  # noqa: BLE001 - the user's code, under a plate it did not ask for
            where = f"after site {last.name!r}" if last.name else "before its first sample site"
            first = (str(e).strip().splitlines() or [""])[0]
            return f"it fails {where} under a particle plate ({type(e).__name__}: {first})"
        return _mixed_site(model, guide, a, k, guide_tr, model_tr, pdim)


def _mixed_site(model, guide, a, k, guide_tr, model_tr, pdim: int) -> str | None:
    """Whether particle 1 of the vectorized run scores as the code run alone at its values."""
    values = {}
    for name, site in {**_sites(guide_tr), **_sites(model_tr)}.items():
        if site["is_observed"]:
            continue
        at = site["value"].dim() + pdim - site["fn"].event_dim
        if at < 0 or site["value"].shape[at] != PROBE_PARTICLES:
            return f"site {name!r} has no particle dim of size {PROBE_PARTICLES}"
        values[name] = site["value"].select(at, 1)
    try:
        with pyro.validation_enabled(False):
            alone_g = poutine.trace(weights.at_values(guide, values)).get_trace(*a, **k)
            alone_m = poutine.trace(poutine.replay(model, trace=weights.given_trace(values))).get_trace(
                *a, **k
            )
    except Exception as e:  # noqa: BLE001
        return f"it does not run alone at one particle's values ({type(e).__name__})"
    for vec, alone in ((guide_tr, alone_g), (model_tr, alone_m)):
        ones = _sites(alone)
        for name, site in _sites(vec).items():
            lp = weights.site_log_prob(site, pdim, PROBE_PARTICLES)[1]
            one = weights.site_log_prob(ones[name], pdim, 1)[0] if name in ones else None
            if one is None or not torch.allclose(lp, one, rtol=1e-4, atol=1e-4):
                return f"site {name!r} scores particles together (its particle 1 differs from a run alone)"
    return None


def decide(model: Callable, guide: Callable, args, kwargs=None, nesting: int | None = None) -> bool:
    """Whether the pair must run on repeated data (True) rather than under a particle plate;
    probed once per pair (:func:`broadcast_failure`), said once, recorded for
    :func:`pyrovae.inference.weights.traces`."""
    known = plates.decided(model, guide)
    if known is not None:
        return known
    why = broadcast_failure(model, guide, args, kwargs or {}, nesting)
    tiled = why is not None
    if tiled:
        warnings.warn(
            f"the model and guide do not broadcast over a leading particle dim: {why}. pyrovae runs "
            "them on each datapoint repeated K times instead (the same numbers; the per-datapoint "
            f"work, such as the encoder, is done K times); {HOW_TO_BROADCAST}",
            RuntimeWarning,
            stacklevel=3,
        )
    plates.remember(model, guide, tiled)
    return tiled


def refuse_tiled(model: Callable, guide: Callable, args, kwargs, what: str) -> None:
    """A ModelError for ``what`` (AIS), which moves particles under a plate itself, when the pair
    does not broadcast over particles."""
    if decide(model, guide, args, kwargs):
        why = broadcast_failure(model, guide, args, kwargs)
        raise ModelError(
            f"{what} needs a pair that broadcasts over a leading dim of chains: {why}; {HOW_TO_BROADCAST}"
        )
