"""Training losses, each ``loss(model, guide, *args, beta=1.0) -> Tensor`` summed over datapoints,
and KL-weight (beta) schedules.

- ``elbo``: the Monte Carlo ELBO with reparameterized samples (Kingma & Welling 2013, eq. 6),
  computed from the per-datapoint log-weights (no host synchronization); Pyro's ``Trace_ELBO``
  (score-function terms) when some guide site cannot be reparameterized;
- ``enum``: the same ELBO with every discrete site marked ``infer={"enumerate": "parallel"}``
  summed out exactly (Kingma et al. 2014, eq. 7; :mod:`pyrovae.inference.enumeration`), Pyro's
  ``TraceEnum_ELBO`` when a discrete site is left unmarked;
- ``meanfield``: Pyro's ``TraceMeanField_ELBO``, analytic KL where known (ibid., eq. 7);
- ``iwae``: the k-sample importance-weighted bound (Burda et al. 2015, eq. 8);
- ``dreg``: the same bound with doubly reparameterized gradients for the guide
  (Tucker et al. 2018, eq. 8).
"""

from __future__ import annotations

import abc
import contextlib
import math
import warnings
from typing import Callable

import pyro.infer
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyrovae.errors import ConfigError, PyrovaeError, unknown_name
from pyrovae.inference import estimators, plates, weights
from pyrovae.inference.pairs import check_pair
from pyrovae.inference.particles import decide

KL_SCHEDULES = ("constant", "linear", "cyclical")  #: how beta moves (train.kl_schedule)
_PYRO_ELBOS = {"elbo": pyro.infer.Trace_ELBO, "meanfield": pyro.infer.TraceMeanField_ELBO}


def make_elbo(objective: str, num_particles: int = 1) -> pyro.infer.ELBO:
    """Pyro's ELBO for ``objective`` ("elbo" or "meanfield") with ``num_particles`` vectorized particles."""
    if objective not in _PYRO_ELBOS:
        raise unknown_name("Pyro ELBO", objective, _PYRO_ELBOS)
    if num_particles < 1:
        raise ConfigError(f"num_particles must be positive, got {num_particles}")
    return _PYRO_ELBOS[objective](num_particles=num_particles, vectorize_particles=num_particles > 1)


class Objective(abc.ABC):
    """A training loss: ``objective(model, guide, *args, beta=1.0)`` is the negative of a bound
    on log p(x), summed over the datapoints of ``args``, with the KL part weighted by ``beta``.
    ``prepare`` inspects the pair once before training (on a forked random stream);
    ``capturable`` says whether a step may be captured as one graph (no host reads)."""

    capturable: bool = True
    #: what ``train.compile`` says when a step of this objective runs eagerly
    eager_reason: str = "this objective reads values back to the host (Pyro's ELBO) and is not captured"

    def prepare(self, model: Callable, guide: Callable, *args, **kwargs) -> None:
        """Inspect the pair once before training; by default nothing."""

    @abc.abstractmethod
    def __call__(self, model: Callable, guide: Callable, *args, beta=1.0, **kwargs) -> torch.Tensor: ...

    def synchronize(self, group) -> None:
        """Called once before training: make parameters of the objective's own equal on every
        rank (the model's and guide's are DDP's); by default nothing."""

    def after_step(self, group) -> None:
        """Called after each optimizer step (an objective with parameters of its own steps them
        here); by default nothing."""

    def metrics(self) -> dict:
        """Figures of the objective's own for the next metrics row (a codebook's perplexity);
        by default none."""
        return {}

    def state_dict(self) -> dict | None:
        """The objective's own state for the checkpoint (None: it has none)."""
        return None

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s state on resume."""


class ScaleLatents(Messenger):
    """Multiply the log-density of every latent (unobserved) sample site by ``beta``.

    Applied to both model and guide it turns the ELBO into
    E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)), the beta-VAE objective (Higgins et al. 2017, eq. 4);
    Pyro's analytic-KL ELBO reads the same scale from the guide's sites.
    """

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.beta * msg["scale"]


def marked(trace) -> list[str]:
    """The latent sample sites of a trace marked for parallel enumeration."""
    return [
        n
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and s["infer"].get("enumerate") == "parallel"
    ]


def _inspect(
    model: Callable,
    guide: Callable,
    args,
    kwargs,
    enumerated: bool = False,
    name: str | None = None,
    particles: int = 1,
):
    """(plate nesting, why the pair needs Pyro's general ELBO or None, the sites marked for
    enumeration): the log-weight objectives need reparameterized guide sites (or, with
    ``enumerated``, sites marked for enumeration) and unscaled log-densities. An objective
    ``name`` that needs q's density refuses a point-mass guide here, once, by that name. With
    several ``particles``, how they are drawn is decided here (:mod:`pyrovae.inference.particles`).
    The pair is checked first (:func:`pyrovae.inference.pairs.check_pair`)."""
    check_pair(model, guide, args, kwargs)
    guide_tr, model_tr = weights.inspection_traces(model, guide, args, kwargs)
    if name is not None:
        weights.refuse_point_masses(guide_tr, f"the objective {name!r}", weights.DENSITY_FREE)
    nesting = weights.plate_nesting(model, guide, args, kwargs, traces=(guide_tr, model_tr))
    if particles > 1:
        decide(model, guide, args, kwargs, nesting)
    enum = marked(guide_tr) + [n for n in marked(model_tr) if n not in guide_tr.nodes]
    for tr in (guide_tr, model_tr):
        for site in tr.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            summed = enumerated and site["name"] in enum
            if tr is guide_tr and not site["is_observed"] and not site["fn"].has_rsample and not summed:
                return nesting, f"guide site {site['name']!r} cannot be reparameterized", enum
            if not (isinstance(site["scale"], (int, float)) and site["scale"] == 1.0):
                return nesting, f"site {site['name']!r} is scaled (subsampling or poutine.scale)", enum
    return nesting, None, enum


class ELBOObjective(Objective):
    """-sum_n (1/S) sum_s [log p(x_n | z_ns) + beta (log p(z_ns) - log q(z_ns | x_n))] with
    z_ns ~ q(z | x_n) reparameterized: the SGVB estimator of Kingma & Welling (2013), eq. 6,
    with S = ``num_particles`` vectorized particles. Value and gradient equal Pyro's
    ``Trace_ELBO`` on the same draws; it only skips Pyro's per-site ``.item()`` calls, so a
    step issues no host synchronization and can be captured as one graph. A pair with a
    non-reparameterizable or scaled site is handed to ``Trace_ELBO`` (score-function terms).
    With ``enumerated`` (objective ``"enum"``) the sites marked for parallel enumeration are
    summed out exactly (Kingma et al. 2014, eq. 7), each term weighted by q(c | x); a discrete
    guide site left unmarked hands the pair to Pyro's ``TraceEnum_ELBO``.
    """

    def __init__(self, num_particles: int = 1, enumerated: bool = False):
        if num_particles < 1:
            raise ConfigError(f"num_particles must be positive, got {num_particles}")
        self.num_particles, self._nesting, self._fallback = num_particles, None, None
        self.enumerate = enumerated

    @property
    def capturable(self) -> bool:
        return self._fallback is None

    def prepare(self, model: Callable, guide: Callable, *args, **kwargs) -> None:
        """Inspect the pair once (on a forked random stream); called by the first loss otherwise."""
        name = "enum" if self.enumerate else "elbo"
        self._nesting, reason, enum = _inspect(
            model, guide, args, kwargs, self.enumerate, name, self.num_particles
        )
        if enum and not self.enumerate:
            warnings.warn(
                f'objective "elbo" samples the site(s) {enum} marked for enumeration (score-function '
                'gradients, high variance); objective "enum" sums them out exactly',
                RuntimeWarning,
                stacklevel=3,
            )
        if self.enumerate and not enum:
            warnings.warn(
                'objective "enum": no site is marked infer={"enumerate": "parallel"}, so it is the '
                "plain ELBO; mark discrete sites (or wrap the guide in pyro.infer.config_enumerate)",
                RuntimeWarning,
                stacklevel=3,
            )
        if reason is not None and self.enumerate:
            elbo = pyro.infer.TraceEnum_ELBO(
                max_plate_nesting=self._nesting,
                num_particles=self.num_particles,
                vectorize_particles=self.num_particles > 1,
            )
            self._fallback = PyroObjective(elbo)
        elif reason is not None:
            self._fallback = PyroObjective(make_elbo("elbo", self.num_particles))

    def __call__(self, model: Callable, guide: Callable, *args, beta=1.0, **kwargs) -> torch.Tensor:
        if self._nesting is None:
            self.prepare(model, guide, *args, **kwargs)
        if self._fallback is not None:
            return self._fallback(model, guide, *args, beta=beta, **kwargs)
        t = weights.log_prob_terms(
            model,
            guide,
            *args,
            num_samples=self.num_particles,
            max_plate_nesting=self._nesting,
            enumerated=self.enumerate,
            **kwargs,
        )
        return -(t.log_lik + beta * (t.log_prior - t.log_q)).mean(0).sum()


class PyroObjective(Objective):
    """A Pyro ELBO as a loss: -ELBO summed over datapoints, with latent sites scaled by beta.
    Pyro's ELBOs read values back to the host (``.item()``), so they are not captured."""

    capturable = False

    def __init__(self, elbo: pyro.infer.ELBO, name: str = "pyro"):
        self.elbo, self.name, self._prepared = elbo, name, False

    def prepare(self, model: Callable, guide: Callable, *args, **kwargs) -> None:
        """Refuse a point-mass guide (no density, so no ELBO); for the analytic-KL ELBO, warn
        about each latent site whose KL has no closed form (a learned prior): Pyro estimates
        that site's KL by Monte Carlo, log q - log p."""
        self._prepared = True
        check_pair(model, guide, args, kwargs)
        guide_tr, model_tr = weights.inspection_traces(model, guide, args, kwargs)
        weights.refuse_point_masses(guide_tr, f"the objective {self.name!r}", weights.DENSITY_FREE)
        if not isinstance(self.elbo, pyro.infer.TraceMeanField_ELBO):
            return
        for name, site in guide_tr.nodes.items():
            if (
                site["type"] != "sample"
                or site["is_observed"]
                or site_is_subsample(site)
                or name not in model_tr.nodes
            ):
                continue
            try:
                torch.distributions.kl_divergence(site["fn"], model_tr.nodes[name]["fn"])
            except NotImplementedError:
                warnings.warn(
                    f'objective "meanfield": KL(q || p) at site {name!r} has no closed form '
                    f"(guide {type(site['fn']).__name__}, prior {type(model_tr.nodes[name]['fn']).__name__}"
                    "); it is estimated by Monte Carlo (log q - log p) for that site, as objective "
                    '"elbo" does',
                    RuntimeWarning,
                    stacklevel=3,
                )

    def __call__(self, model: Callable, guide: Callable, *args, beta: float = 1.0, **kwargs) -> torch.Tensor:
        if not self._prepared:
            self.prepare(model, guide, *args, **kwargs)
        with ScaleLatents(beta) if beta != 1.0 else contextlib.nullcontext():
            return self.elbo.differentiable_loss(model, guide, *args, **kwargs)


class _DetachParams(Messenger):
    """Stop gradients into every ``pyro.param`` value."""

    def _pyro_post_param(self, msg):
        msg["value"] = msg["value"].detach()


def _stopped(guide: Callable) -> Callable:
    """``guide`` with all its parameters detached: sampled values keep their gradient paths only."""
    if isinstance(guide, torch.nn.Module):
        detached = {name: p.detach() for name, p in guide.named_parameters()}

        def call(*args, **kwargs):
            with _DetachParams():
                return torch.func.functional_call(guide, detached, args, kwargs)

        return call
    return _DetachParams()(guide)


class IWAEObjective(Objective):
    """-sum_n log (1/k) sum_i w_ni, the negative k-sample IWAE bound (Burda et al. 2015, eq. 8), with
    annealed weights log w = log p(x|z) + beta (log p(z) - log q(z|x)).

    With ``dreg=True`` the guide's gradient is the doubly reparameterized estimator of
    Tucker et al. (2018), eq. 8: sum_i wt_i^2 d log w_i / dz_i dz_i / dphi with log q's
    parameters stopped (wt the normalized weights); the model's gradient stays
    sum_i wt_i grad_theta log w_i. Both need reparameterizable guide sites; the plain bound sums
    a site marked for enumeration inside each importance sample (:mod:`pyrovae.inference.enumeration`),
    DReG refuses one.
    """

    def __init__(self, k: int = 5, dreg: bool = False):
        if k < 1:
            raise ConfigError(f"the IWAE bound needs k >= 1 samples, got {k}")
        self.k, self.dreg, self._nesting = k, dreg, None

    capturable = True

    def prepare(self, model: Callable, guide: Callable, *args, **kwargs) -> None:
        """Learn the plate nesting once (on a forked random stream); called by the first loss otherwise."""
        name = "dreg" if self.dreg else "iwae"
        self._nesting, _, enum = _inspect(model, guide, args, kwargs, True, name, self.k)
        if enum and self.dreg:
            raise ConfigError(
                f'objective "dreg" needs reparameterizable sites; {enum} are discrete and marked for '
                'enumeration: use objective "iwae" (which sums them inside each sample) or "enum"'
            )
        if enum:
            warnings.warn(
                f'objective "iwae" sums {enum} inside each importance sample: the bound '
                "log sum_c p(x, c, z) / q(z | x, c) does not depend on q(c | x), which learns only "
                'from an auxiliary loss (objective "enum" trains it)',
                RuntimeWarning,
                stacklevel=3,
            )

    def __call__(self, model: Callable, guide: Callable, *args, beta: float = 1.0, **kwargs) -> torch.Tensor:
        if self._nesting is None:
            self.prepare(model, guide, *args, **kwargs)
        if not self.dreg:
            t = weights.log_prob_terms(
                model,
                guide,
                *args,
                num_samples=self.k,
                max_plate_nesting=self._nesting,
                enumerated=True,
                **kwargs,
            )
            return -estimators.iwae_from_log_weights(t.annealed(beta)).sum()
        return -self._dreg_surrogate(model, guide, args, kwargs, beta)

    def _dreg_surrogate(self, model, guide, args, kwargs, beta):
        k = self.k
        guide_tr, model_tr, pdim = weights.traces(model, guide, args, kwargs, k, self._nesting)
        for site in guide_tr.nodes.values():
            if (
                site["type"] == "sample"
                and not site["is_observed"]
                and not site_is_subsample(site)
                and not site["fn"].has_rsample
            ):
                raise PyrovaeError(
                    f"DReG needs a reparameterizable guide; site {site['name']!r} has none. "
                    'Use objective = "iwae"'
                )
        log_lik, log_prior = weights.sum_sites(model_tr, pdim, k)
        stop_tr = plates.replayed(_stopped(guide), guide_tr, args, kwargs, k, pdim)
        _, log_q_stop = weights.sum_sites(stop_tr, pdim, k)
        lw = log_lik + beta * (log_prior - log_q_stop)
        w = torch.softmax(lw.detach(), 0)
        # the model's terms at detached z: their gradient reaches theta only
        detached = guide_tr.copy()
        for name, site in guide_tr.nodes.items():
            if site["type"] == "sample":
                detached.nodes[name] = {**site, "value": site["value"].detach()}
        det_tr = plates.replayed(model, detached, args, kwargs, k, pdim)
        d_lik, d_prior = weights.sum_sites(det_tr, pdim, k)
        lw_theta = d_lik + beta * d_prior
        # theta: w^2 + (w - w^2) = w, as in IWAE; phi: w^2 through z only (log q's parameters stopped)
        surrogate = (w**2 * lw).sum(0) + ((w - w**2) * lw_theta).sum(0)
        # add the bound's value with zero gradient so that the loss reads as -IWAE
        bound = estimators.iwae_from_log_weights(lw.detach())
        return (surrogate - surrogate.detach() + bound).sum()


def kl_weight(
    step: int,
    *,
    schedule: str = "constant",
    beta: float = 1.0,
    warmup_steps: int = 0,
    beta_start: float = 0.0,
    total_steps: int = 1,
    cycles: int = 4,
    cycle_ratio: float = 0.5,
) -> float:
    """The KL weight at training step ``step`` (0-based).

    - ``constant``: beta.
    - ``linear``: from ``beta_start`` up to beta over ``warmup_steps``, b0 + (beta - b0) * min(1,
      (step + 1) / warmup_steps), the warm-up of Bowman et al. (2016) and Sonderby et al. (2016)
      (b0 = 0; Krishnan et al. 2017 and Pyro's DMM example start at 0.2).
    - ``cyclical``: Fu et al. (2019), eq. 4: ``cycles`` cycles over ``total_steps``; in each,
      tau in [0, 1) rises linearly and the weight is beta * min(1, tau / cycle_ratio).
    """
    if schedule == "constant":
        return beta
    if schedule == "linear":
        rise = 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)
        return beta_start + (beta - beta_start) * rise
    if schedule == "cyclical":
        if cycles < 1 or not 0 < cycle_ratio <= 1:
            raise ConfigError("cyclical KL schedule needs cycles >= 1 and 0 < cycle_ratio <= 1")
        period = max(1.0, total_steps / cycles)
        tau = (step % math.ceil(period)) / period
        return beta * min(1.0, tau / cycle_ratio)
    raise unknown_name("KL schedule", schedule, KL_SCHEDULES)
