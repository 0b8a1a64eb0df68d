"""Probabilistic PCA, the linear-Gaussian VAE with a closed-form log p(x) and posterior."""

from __future__ import annotations

import math
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.blocks.base import ImageModel
from pyrovae.registry import register_model
from pyrovae.sites import DATA_PLATE, LATENT, OBSERVED


@register_model("linear_gaussian")
class LinearGaussian(ImageModel):
    """Probabilistic PCA: z ~ N(0, I_d), x ~ N(W z + b, s^2 I) (Tipping & Bishop 1999).

    The marginal is x ~ N(b, W W^T + s^2 I) (ibid., eq. 6) and the posterior is
    z | x ~ N(M^{-1} W^T (x - b), s^2 M^{-1}) with M = W^T W + s^2 I (ibid., eq. 7),
    so every estimator can be checked against the exact log p(x).
    """

    def __init__(
        self, x_shape: Sequence[int], latent_dim: int = 2, *, sigma: float = 1.0, init_scale: float = 0.3
    ):
        super().__init__(x_shape, latent_dim)
        self.dim = math.prod(self.x_shape)
        self.weight = nn.Parameter(init_scale * torch.randn(self.dim, latent_dim))
        self.bias = nn.Parameter(torch.zeros(self.dim))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = pyro.sample(LATENT, self.prior(x.shape[0]))
            pyro.sample(OBSERVED, self._likelihood(z), obs=x)

    def prior(self, num: int) -> dist.Distribution:
        loc = self.bias.new_zeros(num, self.latent_dim)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def _likelihood(self, z: torch.Tensor) -> dist.Distribution:
        mean = (z @ self.weight.T + self.bias).reshape(*z.shape[:-1], *self.x_shape)
        return dist.Normal(mean, self.log_sigma.exp()).to_event(len(self.x_shape))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.weight.T + self.bias).reshape(*z.shape[:-1], *self.x_shape)

    def sample_prior(self, num: int) -> torch.Tensor:
        return self.prior(num).sample()

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) per datapoint, shape (N,)."""
        s2 = self.log_sigma.exp() ** 2
        cov = self.weight @ self.weight.T + s2 * torch.eye(self.dim, dtype=x.dtype, device=x.device)
        return dist.MultivariateNormal(self.bias, covariance_matrix=cov).log_prob(x.reshape(x.shape[0], -1))

    def posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        """The exact posterior p(z | x), batch shape (N,)."""
        s2 = self.log_sigma.exp() ** 2
        m = self.weight.T @ self.weight + s2 * torch.eye(self.latent_dim, dtype=x.dtype, device=x.device)
        m_inv = torch.linalg.inv(m)
        loc = (x.reshape(x.shape[0], -1) - self.bias) @ self.weight @ m_inv.T
        return dist.MultivariateNormal(loc, covariance_matrix=s2 * m_inv)

    def exact_guide(self):
        """A guide q(z|x) = p(z|x): a plain callable, so the ELBO equals log p(x) exactly."""

        def guide(x: torch.Tensor) -> None:
            with pyro.plate(DATA_PLATE, x.shape[0]):
                pyro.sample(LATENT, self.posterior(x))

        return guide
