"""Objectives beyond the ELBO: regularised autoencoder losses, each summed over datapoints and
read off the same traces as the ELBO (:func:`pyrovae.inference.weights.traces`).

- ``free_bits`` (Kingma et al. 2016, eq. 15): E[log p(x|z)] - sum_j max(lambda, E_x KL_j), the
  KL of each group j (a latent site, or one dimension of it) averaged over the batch and
  clamped below lambda, analytic (torch's closed form) or by Monte Carlo (log q - log p);
- ``tcvae`` (Chen et al. 2018, eq. 4): the KL split into index-code mutual information, total
  correlation and dimension-wise KL, the total correlation weighted by ``tc_weight``; the
  aggregate posterior q(z) estimated on the batch by minibatch-weighted or minibatch-
  stratified sampling (``tc_sampling``), which need the dataset size;
- ``infovae`` (Zhao et al. 2017, eq. 6): E[log p(x|z)] - (1 - alpha) KL - (alpha + lambda - 1)
  MMD(q(z), p(z)); ``wae`` (Tolstikhin et al. 2018, Algorithm 2): E[log p(x|z)] - lambda
  MMD(q(z), p(z)); the MMD by the unbiased U-statistic (Gretton et al. 2012, eq. 3) with an
  RBF or inverse multiquadric kernel.

The loop's KL weight ``beta`` multiplies the KL part (free bits, the three KL terms of
``tcvae``, InfoVAE's KL), so that KL schedules apply to these objectives too.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from pyro.poutine.util import site_is_subsample
from torch.distributions import Normal, kl_divergence

from pyrovae.errors import ConfigError, ModelError, unknown_name
from pyrovae.inference import weights
from pyrovae.training.objectives import Objective, _inspect

KERNELS = ("rbf", "imq")  #: MMD kernels (train.mmd_kernel)
TC_SAMPLING = ("mws", "mss")  #: estimators of the aggregate posterior (train.tc_sampling)
GROUPS = ("site", "dim")  #: what free bits clamp (train.free_bits_per)
KL_KINDS = ("mc", "analytic")  #: how free bits compute the KL (train.free_bits_kl)


def _latent_sites(guide_tr) -> list[dict]:
    return [
        s
        for s in guide_tr.nodes.values()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    ]


class _Traced(Objective):
    """An objective computed from one set of guide and model traces with K particles."""

    def __init__(self, num_particles: int = 1):
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ConfigError(f"num_particles must be a positive integer, got {num_particles!r}")
        self.num_particles, self._nesting = num_particles, None

    #: whether the objective needs no density of q (a deterministic encoder may train with it)
    density_free = False

    def prepare(self, model: Callable, guide: Callable, *args, **kwargs) -> None:
        name = None if self.density_free else self.name
        self._nesting, reason, enum = _inspect(
            model, guide, args, kwargs, name=name, particles=self.num_particles
        )
        if reason is not None or enum:
            raise ModelError(
                f"objective {self.name!r} needs reparameterized, unscaled continuous guide sites: "
                f"{reason or f'sites {enum} are marked for enumeration'}"
            )

    def _traces(self, model, guide, args, kwargs):
        if self._nesting is None:
            self.prepare(model, guide, *args, **kwargs)
        return weights.traces(model, guide, args, kwargs, self.num_particles, self._nesting)

    def _log_lik(self, model_tr, pdim) -> torch.Tensor:
        log_lik, _ = weights.sum_sites(model_tr, pdim, self.num_particles)
        return log_lik

    def _per_unit(self, t: torch.Tensor, site: dict, pdim: int) -> torch.Tensor:
        return weights.per_datapoint(t, site, pdim, self.num_particles, site["fn"].event_dim)


class FreeBitsObjective(_Traced):
    """-sum_n E_q[log p(x_n | z)] + beta N sum_j max(lambda, (1/N) sum_n KL_j(x_n)) (Kingma et
    al. 2016, eq. 15) over a batch of N: groups j are latent sites (``per = "site"``) or their
    dimensions (``"dim"``, for guides and priors that factorize over units), the KL analytic
    (``kl = "analytic"``, torch's closed form) or by Monte Carlo (``"mc"``). Below lambda a
    group's KL gets no gradient; above it, the plain KL's."""

    name = "free_bits"

    def __init__(self, free_bits: float, per: str = "site", kl: str = "mc", num_particles: int = 1):
        super().__init__(num_particles)
        if not (isinstance(free_bits, (int, float)) and math.isfinite(free_bits) and free_bits >= 0):
            raise ConfigError(f"train.free_bits must be a number >= 0 (nats per group), got {free_bits!r}")
        if per not in GROUPS:
            raise unknown_name("free-bits group (train.free_bits_per)", per, GROUPS)
        if kl not in KL_KINDS:
            raise unknown_name("free-bits KL (train.free_bits_kl)", kl, KL_KINDS)
        self.free_bits, self.per, self.kl = float(free_bits), per, kl

    def group_kls(self, guide_tr, model_tr, pdim) -> torch.Tensor:
        """KL per group and datapoint, averaged over particles: (groups, N)."""
        out, k = [], self.num_particles
        for site in _latent_sites(guide_tr):
            q, p, z = site["fn"], model_tr.nodes[site["name"]]["fn"], site["value"]
            if self.per == "dim":
                names = f"{type(q).__name__} and {type(p).__name__}"
                q, p = weights.elementwise(q), weights.elementwise(p)
                if q is None or p is None:
                    raise ModelError(
                        f"free bits per dimension need q and p at {site['name']!r} to factorize over "
                        f'units (got {names}); use free_bits_per = "site"'
                    )
            if self.kl == "mc":
                kl = q.log_prob(z) - p.log_prob(z)
            else:
                try:
                    kl = kl_divergence(q, p)
                except NotImplementedError:
                    raise ModelError(
                        f"KL({type(q).__name__} || {type(p).__name__}) at {site['name']!r} has no closed "
                        'form; use free_bits_kl = "mc"'
                    ) from None
            if self.per == "dim":  # (K, N, units) -> (units, N)
                ev = site["fn"].event_dim
                out.append(weights.per_datapoint(kl.expand(z.shape), site, pdim, k, ev).mean(0).T)
            else:  # (K, N) -> (1, N)
                batch = z.shape[: z.dim() - site["fn"].event_dim]
                out.append(
                    weights.per_datapoint(kl.expand(batch), site, pdim, k).sum(-1).mean(0, keepdim=True)
                )
        return torch.cat(out, 0)

    def __call__(self, model, guide, *args, beta=1.0, **kwargs) -> torch.Tensor:
        guide_tr, model_tr, pdim = self._traces(model, guide, args, kwargs)
        log_lik = self._log_lik(model_tr, pdim).mean(0)
        kls = self.group_kls(guide_tr, model_tr, pdim)
        n = log_lik.shape[0]
        return -log_lik.sum() + beta * n * kls.mean(1).clamp(min=self.free_bits).sum()


def _gaussian_units(site: dict, model_tr, pdim: int, k: int) -> tuple:
    """(z, loc, scale, log p(z)) of a diagonal-Gaussian guide site, each (K, N, D) but log p (K, N)."""
    q = weights.elementwise(site["fn"])
    if not isinstance(q, Normal):
        raise ModelError(
            f'the aggregate posterior of objective "tcvae" needs a diagonal Gaussian q at {site["name"]!r}; '
            f"got {type(site['fn']).__name__} (a flow, or another family)"
        )
    z, ev = site["value"], site["fn"].event_dim
    lay = lambda t: weights.per_datapoint(t.expand(z.shape), site, pdim, k, ev)  # noqa: E731
    log_p = weights.site_log_prob(model_tr.nodes[site["name"]], pdim, k)
    return lay(z), lay(q.loc), lay(q.scale), log_p


def log_aggregate(pairs: torch.Tensor, dataset_size: int, sampling: str) -> torch.Tensor:
    """log q(z_i) from ``pairs`` [..., i, j] = log q(z_i | x_j) over a batch of M datapoints of a
    dataset of N: minibatch-weighted sampling, logsumexp_j - log(N M) (Chen et al. 2018,
    sec. 4.1), or stratified, the datapoint's own term weighted 1/N and each of the M - 1 others
    (N - 1) / (N (M - 1)): unbiased for q(z_i) = (1/N) sum_n q(z_i | x_n) when the others are a
    uniform draw from the rest of the data (Chen et al. 2018, appendix C.2, the same strata)."""
    m, n = pairs.shape[-1], float(dataset_size)
    if sampling == "mws":
        return torch.logsumexp(pairs, -1) - math.log(n * m)
    if m < 2:
        return pairs[..., 0, 0] - math.log(n)
    own = torch.eye(m, dtype=torch.bool, device=pairs.device)
    log_w = torch.where(own, -math.log(n), math.log(n - 1) - math.log(n * (m - 1)))
    return torch.logsumexp(pairs + log_w.to(pairs.dtype), -1)


class TCVAEObjective(_Traced):
    """beta-TCVAE (Chen et al. 2018, eq. 4): -sum_n E[log p(x_n | z) - beta (alpha MI + tc_weight
    TC + gamma DWKL)], with MI = log q(z|x) - log q(z) (the index-code mutual information),
    TC = log q(z) - sum_d log q(z_d) (the total correlation), DWKL = sum_d log q(z_d) - log p(z)
    (the dimension-wise KL; the three sum to the KL term, log q(z|x) - log p(z)), q(z) and
    q(z_d) by :func:`log_aggregate` over the batch; beta the KL weight of the schedule (1 after
    warm-up); for one diagonal-Gaussian latent site. Chen et al.'s beta-TCVAE is alpha = gamma = 1."""

    name = "tcvae"

    def __init__(
        self,
        tc_weight: float = 6.0,
        dataset_size: int | None = None,
        sampling: str = "mws",
        num_particles: int = 1,
        alpha: float = 1.0,
        gamma: float = 1.0,
    ):
        super().__init__(num_particles)
        if sampling not in TC_SAMPLING:
            raise unknown_name("tc_sampling", sampling, TC_SAMPLING)
        for key, value in (("tc_weight", tc_weight), ("tc_alpha", alpha), ("tc_gamma", gamma)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"train.{key} must be a number >= 0, got {value!r}")
        if dataset_size is not None and (not isinstance(dataset_size, int) or dataset_size < 1):
            raise ConfigError(f"dataset_size must be a positive integer, got {dataset_size!r}")
        self.tc_weight, self.dataset_size, self.sampling = float(tc_weight), dataset_size, sampling
        self.alpha, self.gamma = float(alpha), float(gamma)

    def terms(self, model, guide, *args, **kwargs) -> dict[str, torch.Tensor]:
        """log p(x|z), MI, TC and DWKL per particle and datapoint, each (K, N)."""
        if self.dataset_size is None:
            raise ConfigError(
                'objective "tcvae" needs the dataset size for q(z): fit passes it; in Python, '
                'make_objective("tcvae", dataset_size=N)'
            )
        guide_tr, model_tr, pdim = self._traces(model, guide, args, kwargs)
        sites = _latent_sites(guide_tr)
        if len(sites) != 1:
            raise ModelError(
                f'objective "tcvae" needs one latent site; the guide samples {[s["name"] for s in sites]}'
            )
        z, loc, scale, log_p = _gaussian_units(sites[0], model_tr, pdim, self.num_particles)
        # log q(z_id | x_j) for every particle k, datapoint i, batch member j, unit d: (K, N, N, D)
        pairs = Normal(loc.unsqueeze(1), scale.unsqueeze(1)).log_prob(z.unsqueeze(2))
        log_qzx = pairs.sum(-1).diagonal(dim1=1, dim2=2)
        log_qz = log_aggregate(pairs.sum(-1), self.dataset_size, self.sampling)
        log_prod = log_aggregate(pairs.movedim(-1, 1), self.dataset_size, self.sampling).sum(1)
        return {
            "log_lik": self._log_lik(model_tr, pdim),
            "mi": log_qzx - log_qz,
            "tc": log_qz - log_prod,
            "dwkl": log_prod - log_p,
        }

    def __call__(self, model, guide, *args, beta=1.0, **kwargs) -> torch.Tensor:
        t = self.terms(model, guide, *args, **kwargs)
        kl = self.alpha * t["mi"] + self.tc_weight * t["tc"] + self.gamma * t["dwkl"]
        return -(t["log_lik"] - beta * kl).mean(0).sum()


def mmd(x: torch.Tensor, y: torch.Tensor, kernel: str = "imq", scale: float | None = None) -> torch.Tensor:
    """The unbiased U-statistic of MMD^2 between samples ``x`` (n, D) and ``y`` (m, D) (Gretton
    et al. 2012, eq. 3): mean k(x, x') + mean k(y, y') over distinct pairs - 2 mean k(x, y);
    kernel ``"imq"``, ``C / (C + |a - b|^2)``, or ``"rbf"``, ``exp(-|a - b|^2 / C)``, with C = ``scale``,
    by default 2 D (Tolstikhin et al. 2018, sec. 4: 2 D sigma^2 for a unit-variance prior)."""
    if kernel not in KERNELS:
        raise unknown_name("MMD kernel (train.mmd_kernel)", kernel, KERNELS)
    c = 2.0 * x.shape[-1] if scale is None else float(scale)

    def k(a, b):
        d2 = torch.cdist(a, b).pow(2)
        return c / (c + d2) if kernel == "imq" else torch.exp(-d2 / c)

    def within(a):
        n = a.shape[0]
        return (k(a, a).sum() - k(a, a).diagonal().sum()) / (n * (n - 1))

    return within(x) + within(y) - 2 * k(x, y).mean()


class MMDObjective(_Traced):
    """InfoVAE (Zhao et al. 2017, eq. 6): -sum_n [E log p(x_n|z) - (1 - alpha) beta KL_n] + N
    (alpha + lambda - 1) MMD(q(z), p(z)) over a batch of N, the aggregate q(z) represented by the
    batch's draws and p(z) by as many draws from the model's prior at the same sites; ``wae``
    (Tolstikhin et al. 2018, Algorithm 2) is alpha = 1: no KL, lambda MMD."""

    def __init__(
        self,
        alpha: float = 0.0,
        lam: float = 100.0,
        kernel: str = "imq",
        scale: float | None = None,
        num_particles: int = 1,
        name: str = "infovae",
    ):
        super().__init__(num_particles)
        for key, value in (("mmd_alpha", alpha), ("mmd_lambda", lam)):
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ConfigError(f"train.{key} must be a finite number, got {value!r}")
        if kernel not in KERNELS:
            raise unknown_name("MMD kernel (train.mmd_kernel)", kernel, KERNELS)
        self.alpha, self.lam, self.kernel, self.scale, self.name = (
            float(alpha),
            float(lam),
            kernel,
            scale,
            name,
        )
        self.density_free = self.alpha == 1.0  # no KL term: a point-mass q(z|x) is allowed

    def __call__(self, model, guide, *args, beta=1.0, **kwargs) -> torch.Tensor:
        guide_tr, model_tr, pdim = self._traces(model, guide, args, kwargs)
        k = self.num_particles
        log_lik = self._log_lik(model_tr, pdim)
        n = log_lik.shape[1]
        loss = -log_lik.mean(0).sum()
        if self.alpha != 1.0:
            kl = sum(
                weights.site_log_prob(s, pdim, k) - weights.site_log_prob(model_tr.nodes[s["name"]], pdim, k)
                for s in _latent_sites(guide_tr)
            )
            loss = loss + (1.0 - self.alpha) * beta * kl.mean(0).sum()
        q_draws, p_draws = [], []
        for s in _latent_sites(guide_tr):
            prior = model_tr.nodes[s["name"]]["fn"]
            draw = prior.rsample() if prior.has_rsample else prior.sample()
            ev = s["fn"].event_dim
            q_draws.append(weights.per_datapoint(s["value"], s, pdim, k, ev).reshape(k * n, -1))
            p_draws.append(
                weights.per_datapoint(draw.expand(s["value"].shape), s, pdim, k, ev).reshape(k * n, -1)
            )
        gap = mmd(torch.cat(q_draws, -1), torch.cat(p_draws, -1), self.kernel, self.scale)
        return loss + n * (self.alpha + self.lam - 1.0) * gap
