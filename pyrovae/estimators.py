"""Per-datapoint log importance weights and the estimates read off them.

The one core is

    log w[k, n] = log p(x_n, z_nk) - log q(z_nk | x_n),   z_nk ~ q(. | x_n),

computed by tracing the guide and replaying the model under a vectorized particle
plate, with each site's log-density summed over every dim except the particle and
``"data"`` plate dims. The ELBO of datapoint n is the mean over k (Kingma & Welling
2013, eq. 3); everything else is a consumer of the same tensors.
"""

from __future__ import annotations

import math
import os
from typing import Callable, NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .errors import PyrovaeError
from .sites import DATA_PLATE

PARTICLE_PLATE = "_pyrovae_particles"


class LogProbTerms(NamedTuple):
    """Per-datapoint log-densities of one set of K particles, each of shape (K, N)."""

    log_lik: torch.Tensor  #: sum over observed sites of log p(x | z)
    log_prior: torch.Tensor  #: sum over latent sites of log p(z)
    log_q: torch.Tensor  #: sum over guide sites of log q(z | x)

    @property
    def log_weights(self) -> torch.Tensor:
        return self.log_lik + self.log_prior - self.log_q


def _cuda_devices(args, kwargs) -> list[int]:
    return sorted(
        {
            a.device.index or 0
            for a in (*args, *kwargs.values())
            if isinstance(a, torch.Tensor) and a.device.type == "cuda"
        }
    )


def inspection_traces(model: Callable, guide: Callable, args, kwargs):
    """(guide trace, model trace replayed on it) of one unvectorized, gradient-free, blocked run,
    on a forked random stream (inspecting a program leaves the caller's draws unchanged)."""
    with torch.random.fork_rng(devices=_cuda_devices(args, kwargs)), poutine.block(), torch.no_grad():
        guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    return guide_tr, model_tr


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
    return t.reshape(t.shape[0], t.shape[1], -1).expand(num_particles, data.size, -1)


def site_log_prob(site: dict, particle_dim: int, num_particles: int) -> torch.Tensor:
    """A site's log-density, masked but not scaled, summed to shape (K, N)."""
    lp = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        lp = lp * site["mask"]  # masked-out entries contribute nothing, as in Pyro's ELBOs
    return per_datapoint(lp, site, particle_dim, num_particles).sum(-1)


def vectorize(fn: Callable, num_samples: int, particle_dim: int) -> Callable:
    """``fn`` run inside a plate of ``num_samples`` particles at ``particle_dim``."""

    def wrapped(*a, **k):
        with pyro.plate(PARTICLE_PLATE, num_samples, dim=particle_dim):
            return fn(*a, **k)

    return wrapped


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


def traces(model: Callable, guide: Callable, args, kwargs, num_samples: int, max_plate_nesting: int):
    """Guide trace and model trace replayed on it, both under a plate of ``num_samples`` particles."""
    particle_dim = -max_plate_nesting - 1
    guide_tr = poutine.trace(vectorize(guide, num_samples, particle_dim)).get_trace(*args, **kwargs)
    model_tr = poutine.trace(
        poutine.replay(vectorize(model, num_samples, particle_dim), trace=guide_tr)
    ).get_trace(*args, **kwargs)
    return guide_tr, model_tr, particle_dim


def log_prob_terms(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1,
    max_plate_nesting: int | None = None,
    **kwargs,
) -> LogProbTerms:
    """log p(x|z), log p(z) and log q(z|x) per particle and datapoint, each (K, N).

    One vectorized pass with K = ``num_samples`` particles, differentiable; no chunking
    (see :func:`map_terms` for the chunked core).
    """
    if max_plate_nesting is None:
        max_plate_nesting = plate_nesting(model, guide, args, kwargs)
    guide_tr, model_tr, particle_dim = traces(model, guide, args, kwargs, num_samples, max_plate_nesting)
    log_lik, log_prior = sum_sites(model_tr, particle_dim, num_samples)
    _, log_q = sum_sites(guide_tr, particle_dim, num_samples)
    if log_lik is None:
        raise PyrovaeError("the model has no observed sample site; pass the data as `obs=`")
    zeros = torch.zeros_like(log_lik)
    return LogProbTerms(log_lik, zeros if log_prior is None else log_prior, zeros if log_q is None else log_q)


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield start, min(size, total - start)


def _slice_args(args, kwargs, n: int, start: int, stop: int):
    """Slice every tensor argument whose leading dim is the data size ``n``."""
    cut = lambda a: a[start:stop] if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == n else a
    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def _data_size(args, kwargs) -> int:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            return a.shape[0]
    raise PyrovaeError("no tensor argument to read the number of datapoints from")


MEMORY_FRACTION = 0.25  #: share of the free memory one chunk may use
CPU_ROWS = 4096  #: on CPU, chunks of this many pairs stay in cache and run fastest (benchmarks/eval_speed.py)
MAX_ROWS = 1 << 22  #: no chunk is larger, whatever the free memory


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: ``cudaMemGetInfo`` on CUDA, MemAvailable on Linux, else free pages."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class _CountBytes(TorchDispatchMode):
    """Sum of the bytes of every tensor the ops produce: an upper bound on the memory they need."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.total += sum(
            t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor)
        )
        return out


def bytes_per_row(model: Callable, guide: Callable, args, kwargs, probe: int = 16) -> float:
    """Memory one particle-datapoint pair needs, measured on a probe of ``probe`` particles of
    one datapoint (every intermediate counted as if kept: a bound, not an average). A program
    that only runs on all its datapoints at once is probed on them with one particle."""
    n = _data_size(args, kwargs)
    with torch.random.fork_rng(devices=_cuda_devices(args, kwargs)), torch.no_grad():
        try:
            a, k = _slice_args(args, kwargs, n, 0, 1)
            nesting = plate_nesting(model, guide, a, k)
        except Exception:  # noqa: BLE001 - e.g. a non-amortized guide sized for all N datapoints
            a, k, probe = args, kwargs, 1
            nesting = plate_nesting(model, guide, a, k)
        rows = probe * _data_size(a, k)
        with _CountBytes() as count:
            log_prob_terms(model, guide, *a, num_samples=probe, max_plate_nesting=nesting, **k)
    return count.total / rows


def chunk_rows(device: torch.device, row_bytes: float, fraction: float = MEMORY_FRACTION) -> int:
    """Particle-datapoint pairs per chunk: as many as ``fraction`` of the free memory holds,
    at most :data:`MAX_ROWS`, and on CPU at most :data:`CPU_ROWS` (cache-sized chunks are faster)."""
    rows = int(free_memory(device) * fraction / max(row_bytes, 1.0))
    if device.type == "cpu":
        rows = min(rows, CPU_ROWS)
    return max(1, min(rows, MAX_ROWS))


def map_terms(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1,
    particle_chunk: int | None = None,
    data_chunk: int | None = None,
    reduce: Callable[[LogProbTerms], torch.Tensor] | None = None,
    reduce_traces: Callable | None = None,
    max_rows: int | None = None,
    compile: str = "none",
    **kwargs,
) -> torch.Tensor:
    """Apply ``reduce`` to the :class:`LogProbTerms` of chunks of particles and datapoints.

    ``reduce`` maps terms of shape (k, n) to a tensor of shape (k, n, ...); the pieces are
    concatenated over particle chunks, then data chunks, into (K, N, ...). Without explicit
    chunk sizes, at most ``max_rows`` particle-datapoint pairs are evaluated at once; by
    default that is :func:`chunk_rows` of the measured :func:`bytes_per_row`, so K = 5000
    on 10,000 images runs in memory bounded by the chunk. ``compile`` runs each chunk shape
    through :class:`pyrovae.compile.Compiled` (positional tensor arguments only; else eager).
    ``reduce_traces(guide_trace, model_trace, particle_dim, k)`` replaces ``reduce`` for
    consumers of the site values themselves (:mod:`pyrovae.diagnostics`); it runs eagerly.
    """
    n = _data_size(args, kwargs)
    if max_rows is None and not (particle_chunk and data_chunk):
        device = next(t.device for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor))
        max_rows = chunk_rows(device, bytes_per_row(model, guide, args, kwargs))
    if not particle_chunk:  # equal particle chunks: 5000 in 2 x 2500, not 4096 + 904
        particle_chunk = math.ceil(num_samples / math.ceil(num_samples / max_rows))
    data_chunk = data_chunk or max(1, max_rows // particle_chunk)
    nesting = None
    compiled: dict[int, Callable] = {}

    def chunk_fn(kk: int) -> Callable:
        def fn(*a, **k):
            if reduce_traces is not None:
                return reduce_traces(*traces(model, guide, a, k, kk, nesting), kk)
            return reduce(log_prob_terms(model, guide, *a, num_samples=kk, max_plate_nesting=nesting, **k))

        if (
            compile == "none"
            or reduce_traces is not None
            or kwargs
            or not all(isinstance(t, torch.Tensor) for t in args)
        ):
            return fn
        if kk not in compiled:
            from .compile import Compiled

            compiled[kk] = Compiled(
                fn, [m for m in (model, guide) if isinstance(m, torch.nn.Module)], compile, grad=False
            )
        return compiled[kk]

    # one preallocated result: many small kept pieces between large short-lived chunk
    # temporaries fragment the CPU heap, and its resident size then grows with N
    out = None
    for start, size in _chunks(n, data_chunk):
        a, k = _slice_args(args, kwargs, n, start, start + size)
        if nesting is None:
            nesting = plate_nesting(model, guide, a, k)
        for p_start, kk in _chunks(num_samples, particle_chunk):
            piece = chunk_fn(kk)(*a, **k)
            if out is None:
                out = piece.new_empty((num_samples, n, *piece.shape[2:]))
            out[p_start : p_start + kk, start : start + size] = piece
    return out


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


@torch.no_grad()
def elbo(model: Callable, guide: Callable, *args, num_samples: int = 1, **kwargs) -> torch.Tensor:
    """Per-datapoint ELBO estimate, mean over K particles of log w (Kingma & Welling 2013, eq. 3); shape (N,)."""
    return log_weights(model, guide, *args, num_samples=num_samples, **kwargs).mean(0)


@torch.no_grad()
def iwae_bound(model: Callable, guide: Callable, *args, num_samples: int = 5, **kwargs) -> torch.Tensor:
    """Per-datapoint IWAE bound with K samples, log (1/K) sum_k w_k (Burda et al. 2015, eq. 8); shape (N,).

    E[bound] rises with K towards log p(x) (ibid., theorem 1)."""
    return iwae_from_log_weights(log_weights(model, guide, *args, num_samples=num_samples, **kwargs))


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
    return ess_from_log_weights(log_weights(model, guide, *args, num_samples=num_samples, **kwargs))


@torch.no_grad()
def evaluate_terms(
    model: Callable, guide: Callable, *args, num_samples: int = 5000, **kwargs
) -> dict[str, torch.Tensor]:
    """Everything a report needs from one pass of K particles, each per datapoint (N,):
    ``elbo`` (mean of log w), ``reconstruction`` E_q[log p(x|z)], ``kl`` E_q[log q(z|x) - log p(z)]
    (Kingma & Welling 2013, eq. 7), ``log_likelihood`` (the K-sample importance estimate,
    Burda et al. 2015, eq. 8) and ``ess``. Keyword options of :func:`map_terms` (chunks,
    ``compile``) pass through."""
    stacked = map_terms(
        model,
        guide,
        *args,
        num_samples=num_samples,
        reduce=lambda t: torch.stack([t.log_lik, t.log_q - t.log_prior, t.log_weights], -1),
        **kwargs,
    )
    recon, kl = stacked[..., 0].mean(0), stacked[..., 1].mean(0)
    lw = stacked[..., 2]
    return {
        "elbo": lw.mean(0),
        "reconstruction": recon,
        "kl": kl,
        "log_likelihood": iwae_from_log_weights(lw),
        "ess": ess_from_log_weights(lw),
    }


@torch.no_grad()
def elbo_terms(
    model: Callable, guide: Callable, *args, num_samples: int = 1, **kwargs
) -> dict[str, torch.Tensor]:
    """Per-datapoint ELBO and its split into reconstruction and KL terms, Monte Carlo over K; shape (N,)."""
    terms = evaluate_terms(model, guide, *args, num_samples=num_samples, **kwargs)
    return {k: terms[k] for k in ("elbo", "reconstruction", "kl")}


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """Mean over datapoints and its standard error s / sqrt(N)."""
    values = values.double()
    n = values.numel()
    se = values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return values.mean().item(), se
