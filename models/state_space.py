"""The linear-Gaussian state-space model, written as a deep Markov model is written, with its
exact log p(x) from a Kalman filter and its exact posterior as a guide."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.blocks.sequence import SequenceModel
from pyrovae.registry import register_model
from pyrovae.sites import DATA_PLATE, step_site


@register_model("linear_gaussian_ssm")
class LinearGaussianSSM(SequenceModel):
    """z_0 = 0, z_t ~ N(A z_{t-1}, diag q^2), x_t ~ N(C z_t + c, diag r^2) for t = 1..T
    (Kalman 1960; Bishop 2006, PRML sec. 13.3), a DMM-shaped Pyro program over sequences
    ``x`` of shape (N, T, D) with a prefix ``mask`` (N, T) of the steps each sequence has:
    both the step's sites are masked after its end, so log p(x) is that of the observed steps.
    :meth:`log_marginal` is exact (the Kalman filter's one-step predictive densities),
    and :meth:`exact_guide` samples the exact posterior, so every estimator can be checked.
    ``x_shape`` (T, D), given by configs from the data, sets ``obs_dim`` = D."""

    binary = False  # Gaussian steps

    def __init__(
        self,
        latent_dim: int = 2,
        obs_dim: int = 3,
        *,
        init_scale: float = 0.5,
        x_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        obs_dim = obs_dim if x_shape is None else x_shape[-1]
        self.x_dim = obs_dim
        self.latent_dim, self.obs_dim = latent_dim, obs_dim
        self.transition = nn.Parameter(0.8 * torch.eye(latent_dim))
        self.emission = nn.Parameter(init_scale * torch.randn(obs_dim, latent_dim))
        self.bias = nn.Parameter(torch.zeros(obs_dim))
        self.log_q = nn.Parameter(torch.full((latent_dim,), -0.5))
        self.log_r = nn.Parameter(torch.full((obs_dim,), -0.5))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        q, r = self.log_q.exp(), self.log_r.exp()
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = x.new_zeros(x.shape[0], self.latent_dim)
            for t in pyro.markov(range(x.shape[1])):
                step = mask[:, t]
                z = pyro.sample(
                    step_site("z", t + 1), dist.Normal(z @ self.transition.T, q).to_event(1).mask(step)
                )
                mean = z @ self.emission.T + self.bias
                pyro.sample(step_site("x", t + 1), dist.Normal(mean, r).to_event(1).mask(step), obs=x[:, t])

    def log_marginal(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) per sequence, shape (N,): the sum over observed steps of the Kalman
        filter's predictive densities N(x_t; C m_t|t-1 + c, C P_t|t-1 C^T + R) (Bishop 2006, PRML
        sec. 13.3.1, the normalisers c_t), the covariance updated in Joseph form."""
        a, c = self.transition, self.emission
        eye = torch.eye(self.latent_dim, dtype=x.dtype, device=x.device)
        big_q, big_r = torch.diag(self.log_q.exp() ** 2), torch.diag(self.log_r.exp() ** 2)
        m = x.new_zeros(x.shape[0], self.latent_dim)
        p = x.new_zeros(x.shape[0], self.latent_dim, self.latent_dim)
        total = x.new_zeros(x.shape[0])
        for t in range(x.shape[1]):
            m, p = m @ a.T, a @ p @ a.T + big_q
            s = c @ p @ c.T + big_r
            resid = x[:, t] - (m @ c.T + self.bias)
            step = mask[:, t]
            total = total + torch.where(
                step, dist.MultivariateNormal(torch.zeros_like(resid), s).log_prob(resid), 0.0
            )
            gain = p @ c.T @ torch.linalg.inv(s)
            keep = eye - gain @ c
            m_new = m + (gain @ resid.unsqueeze(-1)).squeeze(-1)
            p_new = keep @ p @ keep.transpose(-1, -2) + gain @ big_r @ gain.transpose(-1, -2)
            m = torch.where(step[:, None], m_new, m)
            p = torch.where(step[:, None, None], p_new, p)
        return total

    def joint_prior(self, steps: int) -> torch.Tensor:
        """Cov z of the stacked z_{1:T} = M w, w ~ N(0, I_T (x) diag q^2), (T Z, T Z), block (t, s)
        of M being A^{t-s} for s <= t."""
        zdim, a = self.latent_dim, self.transition
        blocks = [torch.eye(zdim, dtype=a.dtype, device=a.device)]
        for _ in range(steps - 1):
            blocks.append(a @ blocks[-1])
        zero = torch.zeros_like(a)
        rows = [torch.cat([blocks[t - s] if s <= t else zero for s in range(steps)], 1) for t in range(steps)]
        lift = torch.cat(rows, 0)
        noise = torch.diag((self.log_q.exp() ** 2).repeat(steps))
        return lift @ noise @ lift.T

    def posterior(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact posterior of the stacked z_{1:T} given the observed steps: (mean (N, T Z),
        lower Cholesky factor (N, T Z, T Z)), by Gaussian conditioning in information form
        (PRML eqs. 2.116-2.117); a masked step's x is unobserved, its z drawn from the prior."""
        n, steps, _ = x.shape
        cov = self.joint_prior(steps)
        r_inv = (self.log_r.exp() ** -2).repeat(steps)
        emit = torch.block_diag(*[self.emission] * steps)  # (T D, T Z)
        seen = mask.repeat_interleave(self.obs_dim, 1).to(x.dtype) * r_inv  # (N, T D)
        precision = torch.linalg.inv(cov) + emit.T @ (seen.unsqueeze(-1) * emit)
        post_cov = torch.linalg.inv(precision)
        resid = (x - self.bias).reshape(n, -1) * seen
        mean = (post_cov @ (emit.T @ resid.unsqueeze(-1))).squeeze(-1)
        return mean, torch.linalg.cholesky(post_cov)

    def exact_guide(self):
        """A guide q(z | x) = p(z | x): z_t drawn from its exact conditional given z_{<t} (the
        posterior's Cholesky rows), so every importance weight equals log p(x)."""

        def guide(x: torch.Tensor, mask: torch.Tensor) -> None:
            zdim = self.latent_dim
            mean, tril = self.posterior(x, mask)
            eps = []
            with pyro.plate(DATA_PLATE, x.shape[0]):
                for t in pyro.markov(range(x.shape[1])):
                    rows = slice(t * zdim, (t + 1) * zdim)
                    loc = mean[:, rows]
                    if eps:
                        past = torch.cat(eps, -1).unsqueeze(-1)  # (..., N, t Z, 1)
                        loc = loc + (tril[:, rows, : t * zdim] @ past).squeeze(-1)
                    block = tril[:, rows, rows]
                    z = pyro.sample(
                        step_site("z", t + 1),
                        dist.MultivariateNormal(loc, scale_tril=block).mask(mask[:, t]),
                    )
                    eps.append(
                        torch.linalg.solve_triangular(block, (z - loc).unsqueeze(-1), upper=False).squeeze(-1)
                    )

        return guide
