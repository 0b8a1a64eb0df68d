"""Amortized diagonal-Gaussian guides q(z|x) = N(mu(x), diag sigma(x)^2) (Kingma & Welling 2013, eq. 9)."""

from __future__ import annotations

import math
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.blocks.base import ImageModule
from pyrovae.blocks.nn import ConvEncoder, ResNetEncoder, gaussian_head, mlp
from pyrovae.registry import register_guide
from pyrovae.sites import DATA_PLATE, LATENT


class DiagonalGaussianGuide(ImageModule):
    """q(z|x) = N(mu(x), diag sigma(x)^2) with ``encoder`` mapping x to 2 * latent_dim numbers.

    sigma = softplus(.) + ``min_scale`` keeps the scale positive and away from zero.
    """

    def __init__(self, x_shape: Sequence[int], latent_dim: int, encoder: nn.Module, min_scale: float = 1e-4):
        super().__init__(x_shape, latent_dim)
        self.encoder = encoder
        self.min_scale = min_scale

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of q(z|x), each of shape (N, latent_dim)."""
        return gaussian_head(self.encoder(x), self.latent_dim, self.min_scale)

    def forward(self, x: torch.Tensor) -> None:
        loc, scale = self.params(x)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(LATENT, dist.Normal(loc, scale).to_event(1))


@register_guide("mlp")
class MLPGuide(DiagonalGaussianGuide):
    """Diagonal-Gaussian encoder: flatten x, MLP with layers ``hidden``."""

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int,
        *,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
        min_scale: float = 1e-4,
    ):
        net = nn.Sequential(nn.Flatten(), mlp([math.prod(x_shape), *hidden, 2 * latent_dim], activation))
        super().__init__(x_shape, latent_dim, net, min_scale)


@register_guide("conv")
class ConvGuide(DiagonalGaussianGuide):
    """Diagonal-Gaussian encoder: stride-2 convolutions ``channels``, then MLP ``hidden``."""

    def __init__(self, x_shape: Sequence[int], latent_dim: int, *, channels: Sequence[int] = (32, 64),
                 hidden: Sequence[int] = (256,), activation: str = "relu",
                 min_scale: float = 1e-4):  # fmt: skip
        net = ConvEncoder(x_shape, 2 * latent_dim, channels, hidden, activation)
        super().__init__(x_shape, latent_dim, net, min_scale)


@register_guide("resnet")
class ResNetGuide(DiagonalGaussianGuide):
    """Diagonal-Gaussian encoder for colour images: per scale ``blocks`` residual blocks and a
    stride-2 convolution (``channels`` from the finest scale), then a linear head."""

    def __init__(self, x_shape: Sequence[int], latent_dim: int, *, channels: Sequence[int] = (64, 128),
                 blocks: int = 2, activation: str = "relu", min_scale: float = 1e-4):  # fmt: skip
        net = ResNetEncoder(x_shape, 2 * latent_dim, channels, blocks, activation)
        super().__init__(x_shape, latent_dim, net, min_scale)
