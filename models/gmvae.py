"""The Gaussian-mixture VAE: a discrete cluster above the continuous code."""

from __future__ import annotations

import math
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.blocks.base import ImageModel
from pyrovae.blocks.likelihoods import Likelihood
from pyrovae.blocks.nn import mlp
from pyrovae.registry import register_model
from pyrovae.sites import CLUSTER, DATA_PLATE, LATENT, OBSERVED


@register_model("gmvae")
class GaussianMixtureVAE(ImageModel):
    """c ~ Cat(1/K), z | c ~ N(mu_c, diag sigma_c^2), x ~ p(x | decoder(z)), with mu_c and
    sigma_c learned: the generative process of VaDE (Jiang et al. 2017, sec. 3.1).

    ``latent_dim`` is (K clusters, d); ``spread`` sets the scale of the initial cluster means
    (drawn N(0, spread^2 I), so the clusters start apart); decoder an MLP (``hidden``) and
    ``likelihood`` as for :class:`pyrovae.models.VAE`. The guide ``mixture`` enumerates c.
    """

    latent_sites = (CLUSTER, LATENT)  #: latent_dim = (K clusters, d)

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: Sequence[int] = (10, 10),
        *,
        hidden: Sequence[int] = (500, 500),
        activation: str = "relu",
        likelihood: str = "bernoulli",
        sigma: float | str = 0.1,
        components: int = 5,
        spread: float = 1.0,
    ):
        super().__init__(x_shape, latent_dim)
        self.clusters, self.z_dim = self.latent_dim
        self.means = nn.Parameter(spread * torch.randn(self.clusters, self.z_dim))
        self.log_scales = nn.Parameter(torch.zeros(self.clusters, self.z_dim))
        self.register_buffer("logits", torch.zeros(self.clusters))
        self.likelihood = Likelihood(likelihood, self.x_shape, sigma, components=components)
        self.net = nn.Sequential(
            mlp([self.z_dim, *hidden, math.prod(self.likelihood.param_shape)], activation),
            nn.Unflatten(-1, self.likelihood.param_shape),
        )

    def forward(self, x: torch.Tensor) -> None:
        n = x.shape[0]
        with pyro.plate(DATA_PLATE, n):
            c = pyro.sample(CLUSTER, dist.Categorical(logits=self.logits.expand(n, -1)))
            z = pyro.sample(LATENT, dist.Normal(self.means[c], self.log_scales[c].exp()).to_event(1))
            pyro.sample(OBSERVED, self.likelihood(self.net(z)), obs=x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.net(z))

    def sample_prior(self, num: int, cluster: int | None = None) -> torch.Tensor:
        """``num`` codes z ~ p(z) (or z ~ p(z | c = ``cluster``))."""
        c = (
            torch.randint(self.clusters, (num,), device=self.means.device)
            if cluster is None
            else torch.full((num,), int(cluster), device=self.means.device)
        )
        return dist.Normal(self.means[c], self.log_scales[c].exp()).sample()
