"""The gap log p(x) - ELBO split into approximation and amortization gaps (Cremer et al. 2018)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.diagnostics.draws import _sites, sample_posterior
from pyrovae.diagnostics.importance import KHAT_BAD, psis_khat
from pyrovae.errors import ModelError
from pyrovae.inference import estimators, weights
from pyrovae.inference.checks import check_inputs
from pyrovae.sites import DATA_PLATE


class LocalGaussian(nn.Module):
    """q_n(z) = N(m_n, diag s_n^2): free parameters per datapoint and latent site, the local
    fully factorized Gaussian of Cremer et al. (2018, sec. 3). It ignores its arguments."""

    def __init__(
        self, init: dict[str, tuple[torch.Tensor, torch.Tensor]], event_shapes: dict[str, torch.Size]
    ):
        super().__init__()
        self.names = list(init)
        self.event_shapes = dict(event_shapes)
        self.loc = nn.ParameterList([nn.Parameter(init[n][0].clone()) for n in self.names])
        self.log_scale = nn.ParameterList(
            [nn.Parameter(init[n][1].clamp_min(1e-6).log()) for n in self.names]
        )

    def forward(self, *args, **kwargs) -> None:
        n = self.loc[0].shape[0]
        with pyro.plate(DATA_PLATE, n):
            for name, loc, log_scale in zip(self.names, self.loc, self.log_scale):
                shape = (n, *self.event_shapes[name])
                pyro.sample(
                    name,
                    dist.Normal(loc.reshape(shape), log_scale.exp().reshape(shape)).to_event(
                        len(self.event_shapes[name])
                    ),
                )


def amortization_gap(model, guide, x: torch.Tensor, *condition: torch.Tensor, steps: int = 1000,
                     lr: float = 0.02, num_particles: int = 16, num_samples: int = 5000,
                     index: Sequence[int] | None = None, images: torch.Tensor | None = None,
                     seed: int = 0):  # fmt: skip
    """Split log p(x) - ELBO(x) of each datapoint into the approximation gap
    log p(x) - ELBO(q*_n) and the amortization gap ELBO(q*_n) - ELBO(q(.|x)) (Cremer et al.
    2018, eq. 4), with q*_n the best diagonal Gaussian for datapoint n alone: a
    :class:`LocalGaussian` started at the amortized q's moments and fitted by ``steps``
    Adam steps on the ``num_particles``-sample ELBO (learning rate ``lr`` decaying
    geometrically to lr / 100), the model and guide held fixed.

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
    latent, _, _, pdim = _sites(model, guide, args)
    shapes = {}
    for name, site in latent.items():
        if tuple(site["value"].shape) != (n, *site["fn"].event_shape):
            raise ModelError(
                f"latent site {name!r} has value shape {tuple(site['value'].shape)}; the local "
                f"Gaussian needs one event of shape {tuple(site['fn'].event_shape)} per datapoint, "
                f"batch shape (N,) = ({n},)"
            )
        shapes[name] = site["fn"].event_shape
    draws = sample_posterior(model, guide, *args, num_samples=256, predictive_draws=0)
    local = LocalGaussian({nm: (v.mean(0), v.std(0)) for nm, v in draws.latents.items()}, shapes).to(x.device)
    fit_local(model, local, args, steps=steps, lr=lr, num_particles=num_particles, frozen=(model, guide))
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


def fit_local(
    model, local: nn.Module, args: tuple, *, steps: int, lr: float, num_particles: int, frozen: Sequence = ()
) -> None:
    """Fit the local guide's parameters by ``steps`` Adam steps on the ``num_particles``-sample
    ELBO, the learning rate decaying geometrically to lr / 100, with the modules of
    ``frozen`` held fixed."""
    held = [p for m in frozen if isinstance(m, nn.Module) for p in m.parameters() if p.requires_grad]
    for p in held:
        p.requires_grad_(False)
    try:
        optim = torch.optim.Adam(local.parameters(), lr=lr)
        decay = torch.optim.lr_scheduler.ExponentialLR(optim, 0.01 ** (1 / max(steps, 1)))  # to lr / 100
        nesting = weights.plate_nesting(model, local, args, {})
        with pyro.validation_enabled(False):
            for _ in range(steps):
                optim.zero_grad()
                terms = weights.log_prob_terms(
                    model, local, *args, num_samples=num_particles, max_plate_nesting=nesting
                )
                (-terms.log_weights.mean(0).sum()).backward()
                optim.step()
                decay.step()
    finally:
        for p in held:
            p.requires_grad_(True)
