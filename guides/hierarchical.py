"""The two-stochastic-layer guide of Burda et al. (2015), sec. 5."""

from __future__ import annotations

import math
from typing import Sequence

import pyro
import pyro.distributions as dist
from torch import nn

from pyrovae.blocks.base import ImageModule
from pyrovae.blocks.nn import gaussian_head, mlp
from pyrovae.registry import register_guide
from pyrovae.sites import DATA_PLATE


@register_guide("mlp2")
class TwoLayerGuide(ImageModule):
    """q(z1, z2 | x) = N(z1; mu(x), diag sigma(x)^2) N(z2; mu(z1), diag sigma(z1)^2)
    (Burda et al. 2015, sec. 5), for the model ``vae2``."""

    latent_sites = ("z1", "z2")

    def __init__(self, x_shape: Sequence[int], latent_dim: Sequence[int] = (100, 50), *,
                 hidden: Sequence[int] = (200, 200), hidden_top: Sequence[int] = (100, 100),
                 activation: str = "tanh", min_scale: float = 1e-4):  # fmt: skip
        super().__init__(x_shape, latent_dim)
        d1, d2 = self.latent_dim
        self.min_scale = min_scale
        self.bottom = nn.Sequential(nn.Flatten(), mlp([math.prod(x_shape), *hidden, 2 * d1], activation))
        self.top = mlp([d1, *hidden_top, 2 * d2], activation)

    def forward(self, x):
        d1, d2 = self.latent_dim
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z1 = pyro.sample(
                "z1", dist.Normal(*gaussian_head(self.bottom(x), d1, self.min_scale)).to_event(1)
            )
            pyro.sample("z2", dist.Normal(*gaussian_head(self.top(z1), d2, self.min_scale)).to_event(1))
