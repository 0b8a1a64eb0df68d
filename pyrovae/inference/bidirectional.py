"""Bidirectional Monte Carlo (Grosse et al. 2015, "Sandwiching the marginal likelihood using
bidirectional Monte Carlo", sec. 4; Wu et al. 2017, sec. 3.2): on data simulated from the
model, z* ~ p(z), x ~ p(x | z*), z* is an exact sample of p(z | x). Forward AIS
(:func:`pyrovae.inference.ais.ais_log_likelihood`) is a stochastic lower bound on log p(x); AIS run
backwards, from z* through the same distributions to f_0, has weights w with E[w] = 1/p(x),
so -log (1/S) sum_s w_s is a stochastic upper bound. The gap between them bounds the error of
either, and of any other estimate on the same data.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from pyrovae.errors import PyrovaeError
from pyrovae.inference.ais import (
    ANNEALING,
    Chains,
    anneal,
    annealing,
    check_annealing,
    sigmoid_schedule,
    summarize,
)
from pyrovae.inference.estimators import log_likelihood
from pyrovae.inference.pairs import check_pair
from pyrovae.inference.stepsize import frozen_steps, warn_far
from pyrovae.inference.weights import guide_point_masses
from pyrovae.runtime.progress import bar


class Simulated(NamedTuple):
    """Data drawn from the model, and the latent values that made it (an exact posterior sample)."""

    x: torch.Tensor
    latents: dict


@torch.no_grad()
def simulate(model: Callable, x: torch.Tensor, *args, **kwargs) -> Simulated:
    """z ~ p(z), x ~ p(x | z) for as many datapoints as ``x`` has (``x`` gives the shape, and
    ``args`` any conditions, as the model takes them). The model's one observed site is drawn
    instead of observed (``poutine.uncondition``) and laid out as ``x``."""
    observed = [
        n
        for n, s in poutine.trace(model).get_trace(x, *args, **kwargs).nodes.items()
        if s["type"] == "sample" and s["is_observed"]
    ]
    if len(observed) != 1:
        raise PyrovaeError(f"simulating data needs a model with one observed site, this one has {observed}")
    tr = poutine.trace(poutine.uncondition(model)).get_trace(x, *args, **kwargs)
    value = tr.nodes[observed[0]]["value"]
    if value.numel() != x.numel():
        raise PyrovaeError(
            f"the observed site {observed[0]!r} holds {value.numel()} values for {x.numel()} in x; "
            "BDMC needs a model that observes x itself (reshaped at most)"
        )
    latents = {
        n: s["value"]
        for n, s in tr.nodes.items()
        if s["type"] == "sample" and n != observed[0] and not site_is_subsample(s)
    }
    return Simulated(value.reshape(x.shape).to(x.dtype), latents)


class Sandwich(NamedTuple):
    """Per simulated datapoint (n,): forward-AIS lower and reverse-AIS upper bounds on log p(x),
    their gap, and each pass's mean acceptance rate."""

    lower: torch.Tensor
    upper: torch.Tensor
    gap: torch.Tensor
    acceptance_forward: torch.Tensor
    acceptance_reverse: torch.Tensor


def sandwich(
    model: Callable, guide: Callable, data: Simulated, *args, progress: str | bool | None = None, **options
) -> Sandwich:
    """Forward and reverse AIS with the same schedule and transitions on simulated ``data``:
    ``num_steps``, ``num_chains``, ``initial``, ``leapfrog_steps``, ``step_size``,
    ``target_accept``, ``adapt_chains`` and ``compile`` as
    :func:`pyrovae.inference.ais.ais_log_likelihood` takes them (other keywords go to the model and
    guide); ``progress`` (a label) shows a bar over the passes. The step sizes are adapted once,
    by a forward pass from f_0 that never sees the exact samples, and frozen for both measured
    passes (the reverse pass runs them in reverse order). The pair is checked first
    (:func:`pyrovae.inference.pairs.check_pair`)."""
    o = {**ANNEALING, **{k: options.pop(k) for k in list(options) if k in ANNEALING}}
    check_annealing(o["num_chains"], o["adapt_chains"], o["adapt_rounds"])
    leapfrog, kwargs, n = o["leapfrog_steps"], options, data.x.shape[0]
    check_pair(model, guide, (data.x, *args), kwargs)
    betas = sigmoid_schedule(o["num_steps"])
    make = lambda s: Chains(model, guide, (data.x, *args), kwargs, s, o["initial"], compile=o["compile"])
    chains, adapting = make(o["num_chains"]), make(o["adapt_chains"]) if o["adapt_chains"] else None
    label = progress if isinstance(progress, str) else "BDMC"
    show = None if progress is None else bool(progress)
    total = (2 + (adapting is not None)) * o["num_steps"]
    with annealing(model, guide) as tuner, bar(label, total, unit="step", show=show) as b:
        moves = (leapfrog, o["target_accept"], b, tuner, o["adapt_rounds"])
        steps = frozen_steps(adapting, n, betas, o["step_size"], *moves)
        start = chains.start()
        forward = summarize(*anneal(chains, start, betas, steps, leapfrog, b, tuner))
        template = chains.layout.unpack(start)[0]  # the sites' shapes, for z* laid out as the chains
        missing = set(template) - set(data.latents)
        if missing:
            raise PyrovaeError(f"the guide's sites {sorted(missing)} are not latent sites of the model")
        exact = chains.layout.pack({n: data.latents[n].expand_as(v) for n, v in template.items()})
        log_w, rate, _ = anneal(chains, exact, betas.flip(0), steps.flip(0), leapfrog, b, tuner)
    reverse = summarize(log_w, rate, steps)
    for name, measured in (("BDMC's forward pass", forward), ("BDMC's reverse pass", reverse)):
        warn_far(measured, o["target_accept"], name)
    upper = -reverse.log_likelihood
    gap = upper - forward.log_likelihood
    return Sandwich(forward.log_likelihood, upper, gap, forward.acceptance, reverse.acceptance)


class BDMC(NamedTuple):
    """:class:`Sandwich` on simulated data, with the importance-sampled estimate on the same data."""

    data: Simulated
    sandwich: Sandwich
    #: log p(x) by importance sampling from the guide, (n,); None for a point-mass guide
    importance: torch.Tensor | None


def bdmc(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    num_datapoints: int | None = None,
    importance_samples: int = 5000,
    **options,
) -> BDMC:
    """Simulate ``num_datapoints`` datapoints from the model (shaped as ``x``, conditions from
    ``args``), sandwich their log p(x) between forward and reverse AIS (options of
    :func:`sandwich`), and estimate it by importance sampling with ``importance_samples``
    samples from the guide, to see where that estimate falls for this model (not for a guide
    with point-mass sites, which has no density to sample from: anneal from the prior)."""
    n = x.shape[0] if num_datapoints is None else num_datapoints
    if not 1 <= n <= x.shape[0]:
        raise PyrovaeError(f"num_datapoints must be in [1, {x.shape[0]}] (the rows of x), got {n}")
    cut = tuple(a[:n] if isinstance(a, torch.Tensor) and a.shape[:1] == x.shape[:1] else a for a in args)
    check_pair(model, guide, (x[:n], *cut))
    data = simulate(model, x[:n], *cut)
    bounds = sandwich(model, guide, data, *cut, **options)
    if guide_point_masses(model, guide, (data.x, *cut)):
        return BDMC(data, bounds, None)
    return BDMC(data, bounds, log_likelihood(model, guide, data.x, *cut, num_samples=importance_samples))
