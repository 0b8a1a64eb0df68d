"""Training losses built on Pyro's ELBOs, and KL-weight (beta) schedules."""
from __future__ import annotations

import math

import pyro.infer
from pyro.poutine.messenger import Messenger

from .errors import ConfigError, unknown_name

OBJECTIVES = {
    "elbo": pyro.infer.Trace_ELBO,               # Monte Carlo KL (Kingma & Welling 2013, eq. 6)
    "meanfield": pyro.infer.TraceMeanField_ELBO,  # analytic KL where known (ibid., eq. 7)
}
KL_SCHEDULES = ("constant", "linear", "cyclical")


def make_elbo(objective: str, num_particles: int = 1) -> pyro.infer.ELBO:
    """Pyro's ELBO for ``objective`` with ``num_particles`` vectorized particles."""
    if objective not in OBJECTIVES:
        raise unknown_name("objective", objective, OBJECTIVES)
    if num_particles < 1:
        raise ConfigError(f"num_particles must be positive, got {num_particles}")
    return OBJECTIVES[objective](num_particles=num_particles, vectorize_particles=num_particles > 1)


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


def kl_weight(step: int, *, schedule: str = "constant", beta: float = 1.0, warmup_steps: int = 0,
              total_steps: int = 1, cycles: int = 4, cycle_ratio: float = 0.5) -> float:
    """The KL weight at training step ``step`` (0-based).

    - ``constant``: beta.
    - ``linear``: beta * min(1, (step + 1) / warmup_steps), the warm-up of Bowman et al. (2016)
      and Sonderby et al. (2016).
    - ``cyclical``: Fu et al. (2019), eq. 4: ``cycles`` cycles over ``total_steps``; in each,
      tau in [0, 1) rises linearly and the weight is beta * min(1, tau / cycle_ratio).
    """
    if schedule == "constant":
        return beta
    if schedule == "linear":
        return beta if warmup_steps <= 0 else beta * min(1.0, (step + 1) / warmup_steps)
    if schedule == "cyclical":
        if cycles < 1 or not 0 < cycle_ratio <= 1:
            raise ConfigError("cyclical KL schedule needs cycles >= 1 and 0 < cycle_ratio <= 1")
        period = max(1.0, total_steps / cycles)
        tau = (step % math.ceil(period)) / period
        return beta * min(1.0, tau / cycle_ratio)
    raise unknown_name("KL schedule", schedule, KL_SCHEDULES)
