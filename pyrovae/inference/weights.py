"""The one core: per-datapoint log importance weights of a model and guide.

    log w[k, n] = log p(x_n, z_nk) - log q(z_nk | x_n),   z_nk ~ q(. | x_n),

computed by tracing the guide and replaying the model under a vectorized particle
plate, with each site's log-density summed over every dim except the particle and
``"data"`` plate dims (Burda et al. 2015, eq. 8 reads its bound off these weights).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from pyrovae.errors import ModelError, PyrovaeError
from pyrovae.inference.enumeration import Enumerated, enumerated_terms, masked_log_prob
from pyrovae.inference.plates import TILED, decided, is_tiled, mark_tiled, tile, vectorize
from pyrovae.sites import DATA_PLATE


class LogProbTerms(NamedTuple):
    """Per-datapoint log-densities of one set of K particles, each of shape (K, N). With
    enumerated discrete sites each is its expectation under the guide's q(c | x), so that
    log_lik + log_prior - log_q is the ELBO of the particle, and ``enumerated`` holds the
    terms per value (:mod:`pyrovae.inference.enumeration`)."""

    log_lik: torch.Tensor  #: sum over observed sites of log p(x | z)
    log_prior: torch.Tensor  #: sum over latent sites of log p(z)
    log_q: torch.Tensor  #: sum over guide sites of log q(z | x)
    enumerated: Enumerated | None = None

    @property
    def log_weights(self) -> torch.Tensor:
        """log w = log p(x, z) - log q(z | x), with enumerated sites summed inside each weight."""
        return self.annealed(1.0)

    @property
    def elbo(self) -> torch.Tensor:
        """The ELBO of each particle (equal to log w unless a site was enumerated)."""
        return self.log_lik + self.log_prior - self.log_q

    def annealed(self, beta=1.0) -> torch.Tensor:
        """log p(x | z) + beta (log p(z) - log q(z | x)), enumerated sites summed inside."""
        if self.enumerated is not None:
            return self.enumerated.log_weights(beta)
        return self.log_lik + beta * (self.log_prior - self.log_q)


def cuda_devices(args, kwargs) -> list[int]:
    return sorted(
        {
            a.device.index or 0
            for a in (*args, *kwargs.values())
            if isinstance(a, torch.Tensor) and a.device.type == "cuda"
        }
    )


def inspection_traces(model: Callable, guide: Callable, args, kwargs, validate: bool = False):
    """(guide trace, model trace replayed on it) of one unvectorized, gradient-free, blocked run,
    on a forked random stream (inspecting a program leaves the caller's draws unchanged), with
    Pyro's argument checks off unless ``validate``
    (:func:`pyrovae.inference.pairs.check_pair` runs them once)."""
    with (
        torch.random.fork_rng(devices=cuda_devices(args, kwargs)),
        poutine.block(),
        torch.no_grad(),
        pyro.validation_enabled(validate),
    ):
        guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    return guide_tr, model_tr


def elementwise(fn):
    """The per-element (univariate) distribution under ``Independent`` wrappers, or None."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn if fn.event_shape == torch.Size() else None


def is_point_mass(fn) -> bool:
    """Whether the distribution ``fn`` is a point mass (a ``Delta`` under any wrappers)."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return isinstance(fn, pyro.distributions.Delta)


def point_masses(trace) -> list[str]:
    """The latent sample sites of ``trace`` whose distribution is a point mass over a continuous
    value (a deterministic encoder, a MAP guide): q has no density there. A point mass over
    discrete values (integer-valued: nearest codes, a fixed label) has probability one, so its
    log q = 0 is exact and it is not listed."""
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and is_point_mass(site["fn"])
        and torch.is_floating_point(site["value"])
    ]


def guide_point_masses(model: Callable, guide: Callable, args: tuple, kwargs: dict | None = None) -> list:
    """:func:`point_masses` of the guide, from one inspection run on the first two datapoints
    (on all of them for a guide that only runs on all, one sized for N datapoints)."""
    rows = tuple(a[:2] if isinstance(a, torch.Tensor) and a.dim() > 0 else a for a in args)
    try:
        return point_masses(inspection_traces(model, guide, rows, kwargs or {})[0])
    except (ValueError, RuntimeError, IndexError):
        return point_masses(inspection_traces(model, guide, args, kwargs or {})[0])


def only_point_masses(model: Callable, guide: Callable, args: tuple, kwargs: dict | None = None) -> bool:
    """Whether every latent site of the guide is a point mass (over any values; on the first two
    datapoints): importance sampling from such a guide returns its ELBO, log p(x, z*), for every
    number of samples, a lower bound on log p(x) and no estimate of it."""
    rows = tuple(a[:2] if isinstance(a, torch.Tensor) and a.dim() > 0 else a for a in args)
    guide_tr = inspection_traces(model, guide, rows, kwargs or {})[0]
    latent = [
        s for s in guide_tr.nodes.values()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    ]  # fmt: skip
    return bool(latent) and all(is_point_mass(s["fn"]) for s in latent)


def refuse_point_masses(trace, what: str, instead: str) -> None:
    """A :class:`~pyrovae.errors.ModelError` naming ``what`` cannot be computed when a latent
    site of the guide's ``trace`` is a point mass, and what to do ``instead``."""
    names = point_masses(trace)
    if names:
        raise ModelError(
            f"{what} needs the density of q(z|x), and the guide's site(s) {names} are point masses "
            f"(a deterministic encoder): {instead}"
        )


#: what the density-based estimators say instead, for a point-mass guide
DENSITY_FREE = (
    "estimate log p(x) by AIS from the prior (pyrovae evaluate RUN --method ais), train with "
    "train.objective = 'wae', or use a stochastic guide (guide.deterministic = false)"
)


def given_trace(values: dict) -> poutine.Trace:
    """A trace holding latent ``values`` by site name, to replay a program on."""
    given = poutine.Trace()
    for name, value in values.items():
        given.add_node(name, type="sample", value=value, is_observed=False, infer={})
    return given


def at_values(guide: Callable, values: dict) -> Callable:
    """``guide`` with its sample sites set to ``values`` (replayed, so they stay latent sites
    scored by the guide, which the model is then replayed on)."""
    return poutine.replay(guide, trace=given_trace(values))


def plate_nesting(model: Callable, guide: Callable, args, kwargs, traces=None) -> int:
    """The number of vectorized plate dims the model and guide use (Pyro counts them the same way)."""
    traces = traces or inspection_traces(model, guide, args, kwargs)
    dims = [
        -f.dim
        for tr in traces
        for site in tr.nodes.values()
        if site["type"] == "sample" and not site_is_subsample(site)
        for f in site["cond_indep_stack"]
        if f.vectorized
    ]
    return max(dims, default=0)


def data_frame(site: dict):
    """The ``"data"`` plate frame of a sample site; PyrovaeError when the site is outside it."""
    for f in site["cond_indep_stack"]:
        if f.name == DATA_PLATE:
            return f
    raise PyrovaeError(
        f"sample site {site['name']!r} is outside the {DATA_PLATE!r} plate; "
        f"per-datapoint weights need every sample site inside `pyro.plate({DATA_PLATE!r}, N)`"
    )


def per_datapoint(
    t: torch.Tensor, site: dict, particle_dim: int, num_particles: int, event_dim: int = 0
) -> torch.Tensor:
    """A tensor laid out like ``site`` (batch dims, then ``event_dim`` event dims) as
    (K, N, rest): particle dim first, data dim second, every other dim flattened."""
    data = data_frame(site)
    pdim, ddim = particle_dim - event_dim, data.dim - event_dim
    while t.dim() < -pdim:
        t = t.unsqueeze(0)
    t = t.movedim((pdim, ddim), (0, 1))
    t = t.reshape(t.shape[0], t.shape[1], -1)
    tiled = site["infer"].get(TILED)
    if tiled:  # the "data" plate holds K copies of the data, particle k at rows k n .. (k + 1) n - 1
        t = t.expand(1, data.size, -1).reshape(tiled, data.size // tiled, -1)
        return t.expand(num_particles, -1, -1)
    return t.expand(num_particles, data.size, -1)


def site_log_prob(site: dict, particle_dim: int, num_particles: int) -> torch.Tensor:
    """A site's log-density, masked but not scaled, summed to shape (K, N)."""
    return per_datapoint(masked_log_prob(site), site, particle_dim, num_particles).sum(-1)


def sum_sites(trace, particle_dim: int, num_samples: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(sum of observed sites' log-densities, sum of latent sites' log-densities), each (K, N) or None."""
    observed = latent = None
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        lp = site_log_prob(site, particle_dim, num_samples)
        if site["is_observed"]:
            observed = lp if observed is None else observed + lp
        else:
            latent = lp if latent is None else latent + lp
    return observed, latent


def traces(
    model: Callable,
    guide: Callable,
    args,
    kwargs,
    num_samples: int,
    max_plate_nesting: int,
    enumerated: bool = False,
):
    """Guide trace and model trace replayed on it, both under a plate of ``num_samples`` particles;
    with ``enumerated``, sites marked for parallel enumeration take all their values along dims
    left of the particle plate (the guide's first, then the model's own, as in Pyro's
    ``TraceEnum_ELBO``)."""
    particle_dim = -max_plate_nesting - 1
    tiled = num_samples > 1 and is_tiled(model, guide)
    if tiled:
        args, kwargs = tile(args, kwargs, num_samples)
    elif num_samples > 1:  # one particle: no particle dim at all, as in Pyro's Trace_ELBO
        guide, model = (
            vectorize(guide, num_samples, particle_dim),
            vectorize(model, num_samples, particle_dim),
        )
    if enumerated:
        guide = poutine.enum(guide, first_available_dim=particle_dim - 1)
        model = poutine.enum(model)  # continues allocating dims after the guide's
    try:
        guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    except (RuntimeError, ValueError, IndexError) as e:
        if num_samples == 1 or tiled or decided(model, guide) is not None:
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        raise ModelError(
            f"the pair fails under a plate of {num_samples} particles ({type(e).__name__}: {first}); "
            "if its code does not broadcast over a leading dim, call "
            "pyrovae.inference.particles.decide(model, guide, args) once first (the estimators and "
            "fit do), and it runs on repeated data"
        ) from e
    if tiled:
        mark_tiled(num_samples, guide_tr, model_tr)
    return guide_tr, model_tr, particle_dim


def log_prob_terms(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1,
    max_plate_nesting: int | None = None,
    enumerated: bool = False,
    **kwargs,
) -> LogProbTerms:
    """log p(x|z), log p(z) and log q(z|x) per particle and datapoint, each (K, N).

    One vectorized pass with K = ``num_samples`` particles, differentiable; no chunking
    (see :func:`map_terms` for the chunked core). With ``enumerated``, sites marked
    ``infer={"enumerate": "parallel"}`` are summed out exactly (:mod:`pyrovae.inference.enumeration`);
    otherwise they are sampled.
    """
    if max_plate_nesting is None:
        max_plate_nesting = plate_nesting(model, guide, args, kwargs)
    guide_tr, model_tr, particle_dim = traces(
        model, guide, args, kwargs, num_samples, max_plate_nesting, enumerated
    )
    refuse_point_masses(guide_tr, "the ELBO, the IWAE bound or importance-sampled log p(x)", DENSITY_FREE)
    if enumerated:
        terms = enumerated_terms(guide_tr, model_tr, particle_dim, num_samples)
        if terms is not None:
            return LogProbTerms(*terms)
    log_lik, log_prior = sum_sites(model_tr, particle_dim, num_samples)
    _, log_q = sum_sites(guide_tr, particle_dim, num_samples)
    if log_lik is None:
        raise PyrovaeError("the model has no observed sample site; pass the data as `obs=`")
    zeros = torch.zeros_like(log_lik)
    return LogProbTerms(log_lik, zeros if log_prior is None else log_prior, zeros if log_q is None else log_q)
