"""A mixture of factor analysers: discrete and continuous latents with a closed-form log p(x)."""

from __future__ import annotations

import math
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.blocks.base import ImageModel
from pyrovae.inference.enumeration import ENUMERATE
from pyrovae.registry import register_model
from pyrovae.sites import CLUSTER, DATA_PLATE, LATENT, OBSERVED


@register_model("mfa")
class MixtureOfFactorAnalysers(ImageModel):
    """c ~ Cat(pi), z ~ N(0, I_d), x | c, z ~ N(W_c z + b_c, s^2 I) (Ghahramani & Hinton 1996).

    Given c the model is probabilistic PCA, so x | c ~ N(b_c, W_c W_c^T + s^2 I) and
    log p(x) = log sum_c pi_c N(x; b_c, W_c W_c^T + s^2 I) (ibid., eq. 4); the posterior is
    p(c | x) proportional to pi_c N(x; b_c, .) and z | x, c ~ N(M_c^{-1} W_c^T (x - b_c), s^2 M_c^{-1})
    with M_c = W_c^T W_c + s^2 I (Tipping & Bishop 1999, eq. 7): every estimator, sampled or
    enumerated, can be checked against the exact values. With ``enumerated`` the model marks c
    for enumeration itself, for a guide q(z | x) without c (c is then summed inside log p(x, z)).
    """

    latent_sites = (CLUSTER, LATENT)  #: latent_dim = (K components, d factors)

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: Sequence[int] = (3, 2),
        *,
        sigma: float = 0.5,
        init_scale: float = 1.0,
        enumerated: bool = False,
    ):
        super().__init__(x_shape, latent_dim)  # (components K, factors d): c is one of K
        (k, self.z_dim), d = self.latent_dim, math.prod(self.x_shape)
        self.dim, self.components = d, k
        self.infer = ENUMERATE if enumerated else {}  # c summed out in the model (a guide without c)
        self.logits = nn.Parameter(torch.zeros(k))
        self.weight = nn.Parameter(init_scale * torch.randn(k, d, self.z_dim))
        self.bias = nn.Parameter(2 * init_scale * torch.randn(k, d))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))

    def forward(self, x: torch.Tensor) -> None:
        n = x.shape[0]
        with pyro.plate(DATA_PLATE, n):
            c = pyro.sample(
                CLUSTER, dist.Categorical(logits=self.logits.expand(n, -1)), infer=dict(self.infer)
            )
            z = pyro.sample(LATENT, dist.Normal(x.new_zeros(n, self.z_dim), 1.0).to_event(1))
            mean = ((self.weight[c] @ z.unsqueeze(-1)).squeeze(-1) + self.bias[c]).unflatten(-1, self.x_shape)
            pyro.sample(OBSERVED, dist.Normal(mean, self.log_sigma.exp()).to_event(len(self.x_shape)), obs=x)

    def _marginals(self) -> dist.MultivariateNormal:
        """x | c for every c, batch shape (K,)."""
        eye = torch.eye(self.dim, dtype=self.weight.dtype, device=self.weight.device)
        cov = self.weight @ self.weight.transpose(-1, -2) + self.log_sigma.exp() ** 2 * eye
        return dist.MultivariateNormal(self.bias, covariance_matrix=cov)

    def log_joint_c(self, x: torch.Tensor) -> torch.Tensor:
        """log pi_c + log N(x; b_c, W_c W_c^T + s^2 I), shape (N, K)."""
        flat = x.reshape(x.shape[0], 1, -1)
        return torch.log_softmax(self.logits, -1) + self._marginals().log_prob(flat)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) per datapoint, shape (N,)."""
        return torch.logsumexp(self.log_joint_c(x), -1)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The exact posterior: logits of p(c | x) (N, K), and per c the mean (N, K, d) and the
        Cholesky factor (K, d, d) of p(z | x, c)."""
        s2 = self.log_sigma.exp() ** 2
        eye = torch.eye(self.z_dim, dtype=x.dtype, device=x.device)
        m_inv = torch.linalg.inv(self.weight.transpose(-1, -2) @ self.weight + s2 * eye)  # (K, d, d)
        resid = x.reshape(x.shape[0], 1, -1) - self.bias  # (N, K, D)
        loc = torch.einsum("kij,kdj,nkd->nki", m_inv, self.weight, resid)
        return self.log_joint_c(x), loc, torch.linalg.cholesky(s2 * m_inv)

    def exact_guide(
        self, enumerated: bool = True, shift: float = 0.0, stretch: float = 1.0, temper: float = 1.0
    ):
        """q(c | x) q(z | x, c) = p(c | x) p(z | x, c), c marked for enumeration when
        ``enumerated``; for a rough guide ``shift`` moves each mean, ``stretch`` scales each
        covariance's factor and ``temper`` divides the logits of q(c | x) (flatter above 1)."""

        def guide(x: torch.Tensor) -> None:
            logits, loc, tril = self.posterior(x)
            rows = torch.arange(x.shape[0], device=x.device)
            with pyro.plate(DATA_PLATE, x.shape[0]):
                infer = ENUMERATE if enumerated else {}
                c = pyro.sample(CLUSTER, dist.Categorical(logits=logits / temper), infer=infer)
                q_z = dist.MultivariateNormal(loc[rows, c] + shift, scale_tril=stretch * tril[c])
                pyro.sample(LATENT, q_z)

        return guide
