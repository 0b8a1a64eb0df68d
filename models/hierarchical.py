"""The two-stochastic-layer VAE of Burda et al. (2015), sec. 5."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch

from pyrovae.blocks.base import ImageModel
from pyrovae.blocks.likelihoods import Likelihood
from pyrovae.blocks.nn import gaussian_head, mlp
from pyrovae.blocks.priors import Prior, VampPrior, make_prior
from pyrovae.errors import ConfigError
from pyrovae.registry import register_model
from pyrovae.sites import DATA_PLATE, OBSERVED


@register_model("vae2")
class TwoLayerVAE(ImageModel):
    """Two stochastic layers: z2 ~ N(0, I), z1 ~ N(mu(z2), diag sigma(z2)^2), x ~ p(x | f(z1))
    (Burda et al. 2015, sec. 5: latents 100 and 50, deterministic layers 100-100 between z2
    and z1 and 200-200 between z1 and x, tanh). ``prior`` replaces p(z2) by a ``"mog"`` or
    ``"flow"`` prior (see :mod:`pyrovae.blocks.priors`).
    """

    latent_sites = ("z1", "z2")

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: Sequence[int] = (100, 50),
        *,
        hidden: Sequence[int] = (200, 200),
        hidden_top: Sequence[int] = (100, 100),
        activation: str = "tanh",
        likelihood: str = "bernoulli",
        sigma: float | str = 0.1,
        components: int = 5,
        min_scale: float = 1e-4,
        prior: str | Prior = "standard",
        prior_options: Mapping[str, Any] | None = None,
    ):
        super().__init__(x_shape, latent_dim)
        d1, d2 = self.latent_dim
        if prior == "vamp" or isinstance(prior, VampPrior):
            raise ConfigError(
                "vae2 takes the standard, mog or flow prior over z2; a VampPrior over z2 needs "
                "q(z2 | u) in closed form, which the two-layer guide does not give"
            )
        self.prior = make_prior(prior, d2, self.x_shape, prior_options)  # p(z2)
        self.min_scale = min_scale
        self.likelihood = Likelihood(likelihood, self.x_shape, sigma, components=components)
        self.top = mlp([d2, *hidden_top, 2 * d1], activation)
        self.net = torch.nn.Sequential(
            mlp([d1, *hidden, math.prod(self.likelihood.param_shape)], activation),
            torch.nn.Unflatten(-1, self.likelihood.param_shape),
        )

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z2 = pyro.sample("z2", self.prior(x.shape[0]))
            z1 = pyro.sample(
                "z1",
                dist.Normal(*gaussian_head(self.top(z2), self.latent_dim[0], self.min_scale)).to_event(1),
            )
            pyro.sample(OBSERVED, self.likelihood(self.net(z1)), obs=x)

    def decode(self, z2: torch.Tensor) -> torch.Tensor:
        """E[x | z1 = E[z1 | z2]]."""
        loc, _ = gaussian_head(self.top(z2), self.latent_dim[0], self.min_scale)
        return self.likelihood.mean(self.net(loc))

    def sample_prior(self, num: int) -> torch.Tensor:
        return self.prior.sample(num)
