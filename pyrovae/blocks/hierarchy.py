"""The pieces of a top-down hierarchical VAE shared by its model and guide
(``models/ladder.py``, ``guides/ladder.py``): convolutions over grids with leading particle
dims, Gaussian heads on grids, and one stochastic layer of the top-down path (VDVAE's block,
Child 2021, fig. 3)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pyrovae.blocks.nn import ResBlock
from pyrovae.errors import ConfigError, unknown_name

NORMS = ("none", "weight")  #: the ladder's normalisation of its convolutions (model/guide.norm)


def layer_channels(latent_dim, layers: int) -> int:
    """The channels of every layer's latent grid from ``latent_dim``: one integer, or one per
    layer, all equal (a model's ``latent_dim`` as the guide receives it)."""
    dims = [latent_dim] if isinstance(latent_dim, int) else list(latent_dim)
    if not (isinstance(layers, int) and layers >= 1):
        raise ConfigError(f"a top-down hierarchy needs layers >= 1 stochastic layers, got {layers!r}")
    if len(set(dims)) != 1 or len(dims) not in (1, layers) or not isinstance(dims[0], int) or dims[0] < 1:
        raise ConfigError(
            f"latent_dim must be one positive integer for all {layers} layers, got {latent_dim!r}"
        )
    return dims[0]


def on_grids(fn, t: torch.Tensor) -> torch.Tensor:
    """``fn`` (a convolution over (B, C, H, W)) applied to ``t`` of shape (..., C, H, W)."""
    out = fn(t.reshape(-1, *t.shape[-3:]))
    return out.reshape(*t.shape[:-3], *out.shape[1:])


def gaussian_grid(params: torch.Tensor, min_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc, scale) from 2c channels (dim -3): scale = softplus(raw + b) + ``min_scale`` with b
    = softplus^-1(1 - ``min_scale``), so that a zero output is exactly N(0, 1)."""
    loc, raw = params.chunk(2, dim=-3)
    return loc, F.softplus(raw + math.log(math.expm1(1.0 - min_scale))) + min_scale


def zero_conv(c_in: int, c_out: int, kernel: int = 3) -> nn.Conv2d:
    """A convolution whose weights and bias start at zero (a head that starts at N(0, 1), a cell
    that starts as the identity)."""
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class TopDownLayer(nn.Module):
    """One stochastic layer of the top-down path: the prior p(z_l | h) from the state h, and the
    residual cell h <- ResBlock(h + W z_l) that passes z_l down (VDVAE's block, Child 2021, fig. 3)."""

    def __init__(self, width: int, latent: int, act: str = "relu"):
        super().__init__()
        self.prior = zero_conv(width, 2 * latent)
        self.project = nn.Conv2d(latent, width, 1)
        self.cell = ResBlock(width, act)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return on_grids(self.cell, h + on_grids(self.project, z))


def normalised(module: nn.Module, norm: str) -> nn.Module:
    """``module`` with every convolution weight-normalised if ``norm`` is ``"weight"``: w = g v /
    ||v||, one g per output channel (Salimans & Kingma 2016, eq. 2; NVAE, Vahdat & Kautz 2020,
    sec. 3.2). The function is unchanged: g starts at ||v||, and a weight that starts at zero
    (:func:`zero_conv`, a residual block's last convolution) gets a random direction v and g =
    0, so that it still starts at exactly zero."""
    if norm not in NORMS:
        raise unknown_name("normalisation (model.norm / guide.norm)", norm, NORMS)
    if norm == "none":
        return module
    for conv in [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]:
        zero = not conv.weight.detach().any()
        if zero:
            nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5))  # nn.Conv2d's own initialisation
        dim = 1 if isinstance(conv, nn.ConvTranspose2d) else 0  # the output channels
        nn.utils.parametrizations.weight_norm(conv, dim=dim)
        if zero:
            with torch.no_grad():
                conv.parametrizations.weight.original0.zero_()
    return module
