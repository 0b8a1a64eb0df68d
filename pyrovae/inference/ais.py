"""Annealed importance sampling of log p(x), per datapoint (Neal 2001), as Wu et al. (2017,
"On the quantitative analysis of decoder-based generative models", sec. 3-4) run it for VAEs.

S chains per datapoint move through T + 1 distributions on a geometric path from an initial
density f_0 (the guide q(z | x), or the prior p(z)) to p(x, z):

    log f_t(z) = (1 - beta_t) log f_0(z) + beta_t log p(x, z),   0 = beta_0 < ... < beta_T = 1,

each by one Hamiltonian Monte Carlo transition leaving f_t invariant, and accumulate

    log w = sum_t (beta_t - beta_{t-1}) [log p(x, z_{t-1}) - log f_0(z_{t-1})]   (Neal 2001, eq. 3)

so that E[w] = p(x): log (1/S) sum_s w_s is a stochastic lower bound. Run backwards from an
exact posterior sample, the same weights estimate 1/p(x), an upper bound (Grosse et al. 2015,
sec. 4): :mod:`pyrovae.inference.bidirectional`.

log p(x, z) and log q(z | x) are those of the importance-sampling core
(:func:`pyrovae.inference.weights.traces`, :func:`pyrovae.inference.weights.sum_sites`), evaluated at the
chains' values by replaying the guide (or, from the prior, the model alone) on them. Pyro's leapfrog
integrator (:func:`pyro.ops.integrator.velocity_verlet`) moves every chain at once: it sums the potential
over chains and datapoints, which gives each chain its own gradient since the chains are independent; the
per-chain energies the Metropolis test needs are kept from its last potential call. Pyro's HMC kernel and
its step-size adaptation hold one step size for one chain, so the per-datapoint step sizes are adapted
here, towards an acceptance rate of 0.65 (Wu et al.) at every temperature (:mod:`pyrovae.inference.stepsize`:
a few transitions at beta_t, warm-started from the step of beta_(t-1)), in a first pass with its own
random stream, and frozen: the measured pass moves through a fixed sequence
of kernels, under which the weights are unbiased for p(x) (Neal 2001, sec. 3; Huang et al. 2020,
"Evaluating lossy compression rates of deep generative models", adapt and then measure)."""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager, nullcontext
from typing import Callable, NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.ops.integrator import velocity_verlet

from pyrovae.errors import PyrovaeError
from pyrovae.hooks import owner_modules
from pyrovae.inference.chunks import chunk_sizes, spans
from pyrovae.inference.pairs import check_pair, whole_data
from pyrovae.inference.particles import refuse_tiled
from pyrovae.inference.paths import Ends, Layout, path_ends
from pyrovae.inference.plates import data_size, slice_args, vectorize
from pyrovae.inference.stepsize import bands, frozen_steps, warn_far
from pyrovae.inference.weights import plate_nesting
from pyrovae.runtime.compile import Compiled
from pyrovae.runtime.progress import bar
from pyrovae.runtime.threads import Tuner

INITIAL = ("guide", "prior")
#: the annealing options and their defaults (:func:`ais_log_likelihood`,
#: :func:`pyrovae.inference.bidirectional.sandwich`)
ANNEALING = dict(
    num_steps=1000,
    num_chains=16,
    initial="guide",
    leapfrog_steps=10,
    step_size=0.05,
    target_accept=0.65,
    adapt_chains=4,
    adapt_rounds=3,
    compile="auto",
)


def sigmoid_schedule(num_steps: int, delta: float = 4.0) -> torch.Tensor:
    """beta_0 = 0, ..., beta_T = 1 spaced as a sigmoid, dense at both ends (Grosse et al. 2015,
    sec. 6; Wu et al. 2017, sec. 4): (s(delta (2t/T - 1)) - s(-delta)) / (s(delta) - s(-delta))."""
    if num_steps < 1:
        raise PyrovaeError(f"AIS needs num_steps >= 1 intermediate distributions, got {num_steps}")
    s = torch.sigmoid(delta * (2 * torch.arange(num_steps + 1, dtype=torch.float64) / num_steps - 1))
    return (s - s[0]) / (s[-1] - s[0])


class Chains:
    """S HMC chains for each of n datapoints on the path of one (model, guide, data).

    The path's ends at the chains' values run through one captured graph per shape
    (:class:`pyrovae.runtime.compile.Compiled`, ``compile`` mode; checked against the eager call once),
    which removes Pyro's per-call Python from each of the T x leapfrog gradient evaluations;
    a model with non-tensor arguments or keywords runs eagerly."""

    def __init__(
        self, model, guide, args, kwargs, chains: int, initial: str, nesting=None, compile: str = "auto"
    ):
        if initial not in INITIAL:
            raise PyrovaeError(f"AIS initial distribution {initial!r} is not one of {INITIAL}")
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs
        self.chains, self.initial, self.compile = chains, initial, compile
        self.nesting = plate_nesting(model, guide, args, kwargs) if nesting is None else nesting
        if initial == "guide":  # its chains start from the guide, under a plate of their own
            refuse_tiled(model, guide, args, kwargs, "AIS from the guide")
        self.layout, self._ends = None, None

    def on(self, args, kwargs) -> "Chains":
        """The same chains on other data (another chunk): layout and captured graphs are kept."""
        other = copy.copy(self)
        other.args, other.kwargs = args, kwargs
        return other

    def start(self) -> torch.Tensor:
        """Unconstrained (S, n, D) draws from f_0; sets the chains' layout."""
        pdim = -self.nesting - 1
        program = self.model if self.initial == "prior" else self.guide  # the model alone draws from p(z)
        with torch.no_grad():
            source = poutine.trace(vectorize(program, self.chains, pdim)).get_trace(*self.args, **self.kwargs)
        self.layout = self.layout or Layout(source, pdim)
        return self.layout.pack({n: source.nodes[n]["value"].detach() for n in self.layout.names})

    def _path(self, u, *args) -> torch.Tensor:
        values, log_det = self.layout.unpack(u)
        ends = path_ends(
            self.model, self.guide, args, self.kwargs, values, self.chains, self.nesting, self.initial
        )
        return torch.stack([ends.log_init, ends.log_joint, log_det])

    def ends(self, u: torch.Tensor) -> Ends:
        """The path's end densities at u, with log |det dz/du|."""
        tensors = not self.kwargs and all(isinstance(t, torch.Tensor) for t in self.args)
        if self.compile == "none" or not tensors:  # keywords would be baked into a graph
            return Ends(*self._path(u, *self.args).unbind(0))
        if self._ends is None:
            self._ends = Compiled(self._path, owner_modules(self.model, self.guide), self.compile)
        # a copy: CUDA-graph modes hand back buffers that their next replay overwrites
        return Ends(*self._ends(u, *self.args).clone().unbind(0))

    def transition(self, u, beta: float, step: torch.Tensor, leapfrog: int, current: Ends):
        """One HMC transition leaving f_beta invariant for every chain: (u, ends at u, accepted)."""
        kept = {}

        def potential(z):
            ends = self.ends(z["u"])
            kept["ends"] = Ends(*(e.detach() for e in ends))
            return -ends.log_f(beta).sum()

        p = torch.randn_like(u)
        # a step size drawn afresh around ``step`` (+-20%) keeps trajectories from
        # returning to their start on near-Gaussian targets (Neal 2011, sec. 5.4.2.2)
        eps = step * (0.8 + 0.4 * torch.rand_like(step))
        new, p_new, _, _ = velocity_verlet({"u": u}, {"u": p}, potential, lambda r: r, eps, leapfrog)
        log_ratio = (
            kept["ends"].log_f(beta)
            - 0.5 * p_new["u"].pow(2).sum(-1)
            - (current.log_f(beta) - 0.5 * p.pow(2).sum(-1))
        )
        accept = torch.log(torch.rand_like(log_ratio)) < log_ratio  # NaN (a diverged chain) rejects
        u = torch.where(accept.unsqueeze(-1), new["u"].detach(), u)
        current = Ends(*(torch.where(accept, a, b) for a, b in zip(kept["ends"], current)))
        return u, current, accept


class AIS(NamedTuple):
    """Per datapoint (n,): the estimate log (1/S) sum_s w_s, its standard error (delta method,
    std(w) / (sqrt(S) mean(w))), the mean acceptance rate and the step size of the last
    transition; the log-weights (S, n); the frozen step sizes (T + 1, n), one per temperature
    (those at beta_0 and beta_T, where no transition runs, repeat their neighbours); and the
    acceptance rate in each of :data:`BANDS` equal bands of the transitions, first to last,
    (BANDS, n)."""

    log_likelihood: torch.Tensor
    stderr: torch.Tensor
    acceptance: torch.Tensor
    step_size: torch.Tensor
    log_weights: torch.Tensor
    steps: torch.Tensor | None = None
    acceptance_bands: torch.Tensor | None = None


def summarize(log_w: torch.Tensor, rates: torch.Tensor, steps) -> AIS:
    s = log_w.shape[0]
    shift = log_w.max(0).values
    w = torch.exp(log_w - shift)
    stderr = w.std(0, unbiased=s > 1) / (math.sqrt(s) * w.mean(0)) if s > 1 else torch.zeros_like(shift)
    mean = rates.mean(0) if rates.shape[0] else torch.zeros_like(shift)
    return AIS(torch.logsumexp(log_w, 0) - math.log(s), stderr, mean, steps[-2], log_w, steps, bands(rates))


def anneal(chains: Chains, u, betas, steps, leapfrog: int, progress=None, tuner=None):
    """Move the chains at u through the distributions ``betas`` (increasing: forward AIS from
    f_0; decreasing: reverse AIS from p(z | x)) with the step sizes ``steps`` (len(betas), n), the
    transition at betas[t] using steps[t]; (log-weights (S, n), acceptance rate of each
    transition (T - 1, n), steps). The weight increment at each beta uses the state left by the
    previous transition, and no transition follows the last beta (Neal 2001, sec. 2). A
    ``tuner`` times the transitions."""
    with torch.no_grad():
        ends = chains.ends(u)
    log_w, rates = torch.zeros_like(ends.log_init), []
    steps = steps.to(u)
    for t in range(1, len(betas)):
        log_w = log_w + (betas[t] - betas[t - 1]).item() * (ends.log_joint - ends.log_init)
        if t < len(betas) - 1:
            with tuner.unit() if tuner is not None else nullcontext():
                u, ends, accept = chains.transition(
                    u, betas[t].item(), steps[t].reshape(1, -1, 1), leapfrog, ends
                )
            rates.append(accept.to(u.dtype).mean(0))
        if progress is not None:
            progress.update(1)
    rates = torch.stack(rates) if rates else log_w.new_zeros(0, log_w.shape[1])
    return log_w, rates, steps


@contextmanager
def annealing(model, guide):
    """Pyro's argument checks off (they read values back at every step: check the data
    beforehand) and the modules' parameters held fixed, so that gradients are taken with
    respect to the chains' latents alone. Yields a :class:`pyrovae.runtime.threads.Tuner` for the
    transitions (on CPU: threads chosen by timing them, torch's setting restored after)."""
    params = [p for m in owner_modules(model, guide) for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    cpu = all(p.device.type == "cpu" for p in params)
    try:
        with pyro.validation_enabled(False), Tuner(enabled=cpu) as tuner:
            yield tuner
    finally:
        for p in params:
            p.requires_grad_(True)


def data_chunk_for(model, guide, args, kwargs, chains: int) -> int:
    """Datapoints per AIS chunk: every chain of a datapoint runs together, and a gradient pass
    takes about four times the rows' forward memory (:func:`pyrovae.inference.chunks.chunk_sizes`)."""
    _, rows = chunk_sizes(model, guide, args, kwargs, chains, particle_chunk=chains, enumerated=False)
    return max(1, rows // 4)


def ais_log_likelihood(
    model: Callable,
    guide: Callable,
    *args,
    num_steps: int = 1000,
    num_chains: int = 16,
    initial: str = "guide",
    leapfrog_steps: int = 10,
    step_size: float = 0.05,
    target_accept: float = 0.65,
    adapt_chains: int = 4,
    adapt_rounds: int = 3,
    schedule: torch.Tensor | None = None,
    data_chunk: int | None = None,
    compile: str = "auto",
    progress: str | bool | None = None,
    **kwargs,
) -> AIS:
    """Forward AIS of log p(x) for every datapoint: ``num_chains`` chains from ``initial``
    ("guide": q(z | x); "prior": p(z)) through ``num_steps`` intermediate distributions
    (``schedule``, beta_0 = 0 to beta_T = 1; default :func:`sigmoid_schedule`), each HMC
    transition ``leapfrog_steps`` leapfrog steps of a per-datapoint, per-temperature step size
    frozen beforehand by an adaptation pass of ``adapt_chains`` chains, ``adapt_rounds``
    transitions at each temperature (:func:`frozen_steps`; 0 chains: ``step_size`` throughout,
    no adaptation). A stochastic lower bound in expectation (Jensen); see the module docstring.
    The result holds the acceptance by band of temperatures; a band far from ``target_accept``
    is warned about (:func:`warn_far`). ``compile``: how the path's densities run
    (:class:`Chains`; ``"none"``: Pyro eagerly)."""

    n = data_size(args, kwargs)
    betas = (
        sigmoid_schedule(num_steps) if schedule is None else torch.as_tensor(schedule, dtype=torch.float64)
    )
    if not (betas[0] == 0 and betas[-1] == 1 and (betas.diff() >= 0).all()):
        raise PyrovaeError("an AIS schedule must rise from 0 to 1 (beta_0 = 0, beta_T = 1)")
    check_annealing(num_chains, adapt_chains, adapt_rounds)
    whole = whole_data(model, guide, args, kwargs)
    check_pair(model, guide, args, kwargs, whole=whole)
    size = n if whole else data_chunk
    size = size or data_chunk_for(model, guide, args, kwargs, num_chains)
    parts, chains, adapting = [], None, None
    label = progress if isinstance(progress, str) else "AIS"
    show = None if progress is None else bool(progress)
    passes = 2 if adapt_chains else 1
    with (
        bar(label, math.ceil(n / size) * (len(betas) - 1) * passes, unit="step", show=show) as b,
        annealing(model, guide) as tuner,
    ):
        for start, rows in spans(n, size):
            a, k = slice_args(args, kwargs, n, start, start + rows)
            if chains is None:
                chains = Chains(model, guide, a, k, num_chains, initial, compile=compile)
                if adapt_chains:
                    adapting = Chains(model, guide, a, k, adapt_chains, initial, compile=compile)
            else:
                chains, adapting = chains.on(a, k), adapting and adapting.on(a, k)
            moves = (leapfrog_steps, target_accept, b, tuner, adapt_rounds)
            steps = frozen_steps(adapting, rows, betas, step_size, *moves)
            parts.append(anneal(chains, chains.start(), betas, steps, leapfrog_steps, b, tuner))
    out = summarize(*(torch.cat(p, dim=1) for p in zip(*parts)))
    warn_far(out, target_accept)
    return out


def check_annealing(num_chains, adapt_chains, adapt_rounds=1) -> None:
    """One-line errors for chain and round counts that are not positive integers (0 adaptation
    chains: none)."""
    checks = (
        ("num_chains", num_chains, 1),
        ("adapt_chains", adapt_chains, 0),
        ("adapt_rounds", adapt_rounds, 1),
    )
    for name, value, least in checks:
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise PyrovaeError(f"AIS {name} must be an integer >= {least}, got {value!r}")
