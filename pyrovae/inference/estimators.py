"""Estimates read off the per-datapoint log importance weights of :mod:`pyrovae.inference.weights`.

The ELBO of datapoint n is the mean over k of log w[k, n] (Kingma & Welling 2013, eq. 3),
the IWAE bound and the log-likelihood estimate its log-mean-exp (Burda et al. 2015, eq. 8),
the importance ESS (sum w)^2 / sum w^2 (Kong 1992): all consumers of one core, evaluated in
chunks (:mod:`pyrovae.inference.chunks`) in memory bounded by the chunk.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from pyrovae.inference import weights
from pyrovae.inference.chunks import fold_terms, map_terms
from pyrovae.inference.weights import (
    LogProbTerms,
)


@torch.no_grad()
def log_weights(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1,
    particle_chunk: int | None = None,
    data_chunk: int | None = None,
    **kwargs,
) -> torch.Tensor:
    """log w[k, n] = log p(x_n, z_nk) - log q(z_nk | x_n), shape (K, N), chunked over K and N."""
    return map_terms(
        model,
        guide,
        *args,
        num_samples=num_samples,
        particle_chunk=particle_chunk,
        data_chunk=data_chunk,
        reduce=lambda t: t.log_weights,
        **kwargs,
    )


def iwae_from_log_weights(lw: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k w_k over dim 0: the importance-weighted bound of Burda et al. (2015), eq. 8."""
    return torch.logsumexp(lw, 0) - math.log(lw.shape[0])


def ess_from_log_weights(lw: torch.Tensor) -> torch.Tensor:
    """Importance effective sample size (sum_k w_k)^2 / sum_k w_k^2 over dim 0 (Kong 1992), in [1, K]."""
    return torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))


def _stats(t: LogProbTerms) -> torch.Tensor:
    """Per-datapoint summaries of k particles, (5, n): sums of log p(x|z), of log q - log p(z)
    and of the ELBO, and the log-sum-exps of log w and of 2 log w (with enumerated sites the
    ELBO is their exact expectation and log w sums them inside, :mod:`pyrovae.inference.enumeration`)."""
    lw = t.log_weights
    sums = torch.stack([t.log_lik.sum(0), (t.log_q - t.log_prior).sum(0), t.elbo.sum(0)])
    return torch.cat([sums, torch.stack([lw.logsumexp(0), (2 * lw).logsumexp(0)])])


def _combine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cat([a[:3] + b[:3], torch.logaddexp(a[3:], b[3:])])


@torch.no_grad()
def evaluate_terms(
    model: Callable, guide: Callable, *args, num_samples: int = 5000, **kwargs
) -> dict[str, torch.Tensor]:
    """Everything a report needs from one pass of K particles, each per datapoint (N,):
    ``elbo`` (mean of log w; with enumerated sites, of its exact expectation over them),
    ``reconstruction`` E_q[log p(x|z)], ``kl`` E_q[log q(z|x) - log p(z)]
    (Kingma & Welling 2013, eq. 7), ``log_likelihood`` (the K-sample importance estimate,
    Burda et al. 2015, eq. 8; enumerated sites summed inside each weight) and ``ess`` (Kong
    1992). Sites marked for parallel enumeration are summed out exactly unless
    ``enumerated=False`` (then sampled). Each chunk of particles is reduced to
    these sums and log-sum-exps as it is computed (:func:`pyrovae.inference.chunks.fold_terms`), so
    memory stays O(N) whatever K. Options of :func:`map_terms` (chunks, ``compile``,
    ``progress``) pass through."""
    s = fold_terms(model, guide, *args, num_samples=num_samples, stats=_stats, combine=_combine, **kwargs)
    k = float(num_samples)
    return {
        "elbo": s[2] / k,
        "reconstruction": s[0] / k,
        "kl": s[1] / k,
        "log_likelihood": s[3] - math.log(k),
        "ess": torch.exp(2 * s[3] - s[4]),
    }


@torch.no_grad()
def elbo(model: Callable, guide: Callable, *args, num_samples: int = 1, **kwargs) -> torch.Tensor:
    """Per-datapoint ELBO estimate, mean over K particles of log w (Kingma & Welling 2013,
    eq. 3); shape (N,)."""
    return evaluate_terms(model, guide, *args, num_samples=num_samples, **kwargs)["elbo"]


@torch.no_grad()
def iwae_bound(model: Callable, guide: Callable, *args, num_samples: int = 5, **kwargs) -> torch.Tensor:
    """Per-datapoint IWAE bound with K samples, log (1/K) sum_k w_k (Burda et al. 2015, eq. 8); shape (N,).

    E[bound] rises with K towards log p(x) (ibid., theorem 1)."""
    return evaluate_terms(model, guide, *args, num_samples=num_samples, **kwargs)["log_likelihood"]


@torch.no_grad()
def log_likelihood(
    model: Callable, guide: Callable, *args, num_samples: int = 5000, **kwargs
) -> torch.Tensor:
    """Importance-sampled log p(x) per datapoint with q(z|x) as proposal and K = 5000 samples by
    default, the estimator of Burda et al. (2015), sec. 5: the IWAE bound at large K (a lower
    bound in expectation); shape (N,)."""
    return iwae_bound(model, guide, *args, num_samples=num_samples, **kwargs)


@torch.no_grad()
def importance_ess(
    model: Callable, guide: Callable, *args, num_samples: int = 5000, **kwargs
) -> torch.Tensor:
    """Per-datapoint importance ESS of K samples from q(z|x); shape (N,)."""
    return evaluate_terms(model, guide, *args, num_samples=num_samples, **kwargs)["ess"]


@torch.no_grad()
def elbo_terms(
    model: Callable, guide: Callable, *args, num_samples: int = 1, **kwargs
) -> dict[str, torch.Tensor]:
    """Per-datapoint ELBO and its split into reconstruction and KL terms, Monte Carlo over K; shape (N,)."""
    terms = evaluate_terms(model, guide, *args, num_samples=num_samples, **kwargs)
    return {k: terms[k] for k in ("elbo", "reconstruction", "kl")}


@torch.no_grad()
def point_reconstruction(model: Callable, guide: Callable, *args, data_chunk: int = 2000, **kwargs):
    """log p(x | z) at the guide's draw, per datapoint (N,): for a guide with point-mass sites
    (a deterministic encoder), z = mu(x) and this is the whole of what the pair says about x
    without a density of q (the reconstruction term of a WAE, Tolstikhin et al. 2018, eq. 4)."""
    log_lik = lambda guide_tr, model_tr, pdim, k: weights.sum_sites(model_tr, pdim, k)[0]
    options = dict(reduce_traces=log_lik, data_chunk=data_chunk, enumerated=False)
    return map_terms(model, guide, *args, num_samples=1, **options, **kwargs)[0]


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """Mean over datapoints and its standard error s / sqrt(N)."""
    values = values.double()
    n = values.numel()
    se = values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return values.mean().item(), se


def per_step_and_stderr(values: torch.Tensor, lengths: torch.Tensor) -> tuple[float, float]:
    """A per-sequence total read per time step, R = sum_i v_i / sum_i L_i (how sequence models
    report log-likelihood: every step weighs the same, whatever its sequence's length), and the
    ratio estimator's large-sample standard error sqrt(sum_i (v_i - R L_i)^2 / (N (N - 1))) / mean L
    (Cochran 1977, Sampling Techniques, sec. 6.4)."""
    values, lengths = values.double(), lengths.to(values.device).double()
    n = values.numel()
    ratio = values.sum() / lengths.sum()
    if n < 2:
        return ratio.item(), float("nan")
    spread = ((values - ratio * lengths) ** 2).sum() / (n * (n - 1))
    return ratio.item(), (spread.sqrt() / lengths.mean()).item()
