"""The two-stochastic-layer guide of Burda et al. (2015), sec. 5."""

from __future__ import annotations

import math
from typing import Sequence

import pyro
from torch import nn

from pyrovae.blocks.base import ImageModule
from pyrovae.blocks.flows import PosteriorFlow
from pyrovae.blocks.nn import mlp
from pyrovae.registry import register_guide
from pyrovae.sites import DATA_PLATE


@register_guide("mlp2")
class TwoLayerGuide(ImageModule):
    """q(z1, z2 | x) = N(z1; mu(x), diag sigma(x)^2) N(z2; mu(z1), diag sigma(z1)^2)
    (Burda et al. 2015, sec. 5), for the model ``vae2``; ``flow`` "iaf" or "householder" moves
    each layer's Gaussian by a flow conditioned on that layer's input (options ``flow_depth``,
    ``flow_hidden``, ``flow_context``, ``flow_gated``, ``flow_order``:
    :class:`pyrovae.blocks.flows.PosteriorFlow`)."""

    latent_sites = ("z1", "z2")

    def __init__(self, x_shape: Sequence[int], latent_dim: Sequence[int] = (100, 50), *,
                 hidden: Sequence[int] = (200, 200), hidden_top: Sequence[int] = (100, 100),
                 activation: str = "tanh", min_scale: float = 1e-4, flow: str = "none", flow_depth: int = 2,
                 flow_hidden: Sequence[int] = (320, 320), flow_context: int = 32, flow_gated: bool = False,
                 flow_order: str = "random"):  # fmt: skip
        super().__init__(x_shape, latent_dim)
        d1, d2 = self.latent_dim
        self.min_scale = min_scale
        self.heads = nn.ModuleList(
            PosteriorFlow(
                d, flow, flow_depth, flow_hidden, flow_context, min_scale, gated=flow_gated, order=flow_order
            )
            for d in (d1, d2)
        )
        features = [h.features for h in self.heads]
        self.bottom = nn.Sequential(nn.Flatten(), mlp([math.prod(x_shape), *hidden, features[0]], activation))
        self.top = mlp([d1, *hidden_top, features[1]], activation)

    def forward(self, x):
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z1 = pyro.sample("z1", self.heads[0](self.bottom(x)))
            pyro.sample("z2", self.heads[1](self.top(z1)))
