"""The gap log p(x) - ELBO split into approximation and amortization gaps (Cremer et al. 2018)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyro
import torch

from pyrovae.diagnostics.importance import KHAT_BAD, psis_khat
from pyrovae.diagnostics.refine import refine
from pyrovae.inference import estimators
from pyrovae.inference.checks import check_inputs
from pyrovae.runtime.seeds import keeps_streams


@keeps_streams
def amortization_gap(model, guide, x: torch.Tensor, *condition: torch.Tensor, steps: int = 1000,
                     lr: float = 0.02, num_particles: int = 16, num_samples: int = 5000,
                     index: Sequence[int] | None = None, images: torch.Tensor | None = None,
                     seed: int = 0):  # fmt: skip
    """Split log p(x) - ELBO(x) of each datapoint into the approximation gap
    log p(x) - ELBO(q*_n) and the amortization gap ELBO(q*_n) - ELBO(q(.|x)) (Cremer et al.
    2018, eq. 4), with q*_n the best member of the guide's family for datapoint n alone: the
    refined proposal of :func:`pyrovae.diagnostics.refine.refine` (the guide's own head on free
    per-datapoint inputs, a flow included; else a local diagonal Gaussian) started at the
    amortized q and fitted by ``steps`` Adam steps on the ``num_particles``-sample ELBO (learning
    rate ``lr`` decaying geometrically to lr / 100), the model and guide held fixed.

    Both ELBOs and log p(x) use ``num_samples`` draws; log p(x) is the importance estimate
    from q or q*_n, whichever is reliable (k-hat <= 0.7, :func:`psis_khat`) with the larger
    ESS (taking the larger estimate instead would favour heavy-tailed overshoots), and
    ``log_px_k_hat`` says how far to trust it.
    Returns a DataFrame: ``datapoint``, ``log_px``, ``log_px_k_hat``, ``elbo_amortized``, ``elbo_local``,
    ``approximation_gap``, ``amortization_gap``, ``total_gap``. The datapoints are fitted
    together, so choose tens, not thousands.
    """
    import pandas as pd

    args = check_inputs(
        model, guide, x, *condition, images=images, num_samples=num_samples, name="the amortization gap"
    )
    n = x.shape[0]
    pyro.set_rng_seed(seed)
    local = refine(model, guide, *args, steps=steps, lr=lr, num_particles=num_particles)
    with pyro.validation_enabled(
        False
    ):  # the local guide is sized for these n datapoints: chunked over particles
        lw_q = estimators.log_weights(model, guide, *args, num_samples=num_samples)
        lw_local = estimators.log_weights(model, local, *args, num_samples=num_samples)
    lw_q, lw_local = lw_q.double().cpu(), lw_local.double().cpu()
    k_q, k_local = psis_khat(lw_q), psis_khat(lw_local)
    ess_q, ess_local = estimators.ess_from_log_weights(lw_q), estimators.ess_from_log_weights(lw_local)
    ok_q, ok_local = k_q <= KHAT_BAD, k_local <= KHAT_BAD
    # a reliable proposal (k-hat <= 0.7) over an unreliable one, then the larger ESS
    use_local = torch.where(ok_q == ok_local, ess_local >= ess_q, ok_local)
    log_px = torch.where(
        use_local, estimators.iwae_from_log_weights(lw_local), estimators.iwae_from_log_weights(lw_q)
    )
    k_used = torch.where(use_local, k_local, k_q)
    elbo_q, elbo_local = lw_q.mean(0), lw_local.mean(0)
    table = pd.DataFrame(
        {
            "datapoint": np.arange(n) if index is None else np.asarray(index),
            "log_px": log_px.numpy(),
            "log_px_k_hat": k_used.numpy(),
            "elbo_amortized": elbo_q.cpu().numpy(),
            "elbo_local": elbo_local.cpu().numpy(),
            "approximation_gap": (log_px - elbo_local).cpu().numpy(),
            "amortization_gap": (elbo_local - elbo_q).cpu().numpy(),
            "total_gap": (log_px - elbo_q).cpu().numpy(),
        }
    )
    table.attrs.update(steps=steps, num_particles=num_particles, num_samples=num_samples)
    return table
