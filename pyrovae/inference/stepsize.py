"""Step sizes for AIS's HMC transitions, adapted before the measured pass and frozen (Neal 2001,
sec. 3: the weights are unbiased under a fixed sequence of kernels), and the measured pass's
acceptance by band of temperatures, warned about when far from its target.

Per datapoint and per temperature, the step is found by stochastic approximation on its log
(Robbins & Monro 1951): after each of a few transitions at that temperature, log step moves by
a gain times (acceptance - target), the gain that of the first step of Hoffman & Gelman's (2014,
eq. 6) dual averaging, and the step found carries over to the next temperature. Wu et al.
(2017)'s rule, x1.02 or x0.98 per transition, moves a step at most 7-fold over T = 100
temperatures and left too small a step accepting 0.95. Dual averaging's averaged iterate, tried
here at each temperature, settles too slowly for a few transitions: on a 2-latent linear-Gaussian
model at T = 100 it left acceptance at 0.75 to 0.87 where these updates give 0.59 to 0.71
(tests/test_ais.py).
"""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext

import torch

from pyrovae.inference.weights import cuda_devices

BANDS = 5  #: acceptance is reported over this many equal bands of the transitions, first to last
FAR = 0.15  #: a band's acceptance further than this from the target is warned about


def bands(rates: torch.Tensor) -> torch.Tensor:
    """Mean acceptance of each of :data:`BANDS` equal bands of the transitions' rates (M, n)."""
    if rates.shape[0] == 0:
        return rates.new_zeros(BANDS, rates.shape[1])
    edges = torch.linspace(0, rates.shape[0], BANDS + 1).round().long().tolist()
    return torch.stack([rates[a : max(b, a + 1)].mean(0) for a, b in zip(edges[:-1], edges[1:])])


def warn_far(result, target: float, what: str = "AIS") -> None:
    """Warn when a band of an AIS ``result``'s measured pass accepts, averaged over datapoints,
    further than :data:`FAR` from ``target`` (a path of fewer transitions than bands: no bands)."""
    if result.steps.shape[0] - 2 < BANDS:
        return
    means = result.acceptance_bands.mean(-1)
    far = [(i, float(m)) for i, m in enumerate(means) if abs(float(m) - target) > FAR]
    if far:
        said = ", ".join(f"band {i + 1}/{BANDS}: {m:.2f}" for i, m in far)
        warnings.warn(
            f"{what}'s acceptance is far from its target {target:.2f} ({said}): the chains move too "
            "little (too high) or are rejected (too low), and the bound is looser than its compute "
            "could give; raise adapt_rounds or adapt_chains, or set step_size nearer the right scale",
            RuntimeWarning,
            stacklevel=3,
        )


#: the gain of each update of log step: 1 / (gamma (1 + t0)) with Hoffman & Gelman's (2014,
#: sec. 3.2.1) gamma = 0.05 and t0 = 10, the size of dual averaging's first step
GAIN = 1.0 / (0.05 * 11.0)


def adapt(
    chains, u, betas, step_size, leapfrog: int, target: float, rounds: int, progress=None, tuner=None
) -> torch.Tensor:
    """Step sizes (len(betas), n) that reach acceptance ``target`` at every temperature: at each
    beta_t, ``rounds`` transitions, each followed by ``log step += GAIN (rate - target)`` for
    every datapoint, its rate over its chains (Robbins & Monro 1951), starting from the step
    found at beta_(t-1); the chains move on at each beta as AIS moves them."""
    with torch.no_grad():
        ends = chains.ends(u)
    n = ends.log_init.shape[1]
    log_step = torch.full((n,), math.log(step_size), dtype=u.dtype, device=u.device)
    steps = torch.empty(len(betas), n, dtype=u.dtype, device=u.device)
    for t in range(1, len(betas) - 1):
        for _ in range(rounds):
            with tuner.unit() if tuner is not None else nullcontext():
                u, ends, accept = chains.transition(
                    u, betas[t].item(), log_step.exp().reshape(1, -1, 1), leapfrog, ends
                )
            log_step = log_step + GAIN * (accept.to(u.dtype).mean(0) - target)
        steps[t] = log_step.exp()
        if progress is not None:
            progress.update(1)
    steps[0], steps[-1] = steps[1], steps[-2]
    if progress is not None:
        progress.update(1)
    return steps


def frozen_steps(
    adapting,
    n: int,
    betas,
    step_size: float,
    leapfrog: int,
    target: float,
    progress=None,
    tuner=None,
    rounds: int = 3,
):
    """Per-temperature, per-datapoint step sizes (len(betas), n) for a measured pass: adapted by
    :func:`adapt` (``rounds`` transitions per temperature) on the ``adapting`` chains (their
    own, fewer chains) from ``step_size``, on a random stream of their own (seeded by one draw
    of the caller's), so that the measured pass's draws are independent of the kernels it runs;
    ``adapting`` None: ``step_size`` throughout."""
    steps = torch.full((len(betas), n), float(step_size), dtype=torch.float64)
    if adapting is None:
        return steps
    seed = int(torch.randint(0, 2**62, ()))
    with torch.random.fork_rng(devices=cuda_devices(adapting.args, adapting.kwargs)):
        torch.manual_seed(seed)
        return adapt(adapting, adapting.start(), betas, step_size, leapfrog, target, rounds, progress, tuner)
