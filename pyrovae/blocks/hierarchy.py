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


def convolutions(module: nn.Module) -> list[nn.Module]:
    """Every convolution (plain or transposed) in ``module``, itself included."""
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


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
    for conv in convolutions(module):
        zero = not conv.weight.detach().any()
        if zero:
            nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5))  # nn.Conv2d's own initialisation
        dim = 1 if isinstance(conv, nn.ConvTranspose2d) else 0  # the output channels
        nn.utils.parametrizations.weight_norm(conv, dim=dim)
        if zero:
            with torch.no_grad():
                conv.parametrizations.weight.original0.zero_()
    return module


class SpectralPenalty(nn.Module):
    """``weight`` times the sum, over the convolutions of ``module``, of the largest singular
    value of each weight as a matrix (first dim by the rest): NVAE's spectral regularisation,
    L_SR = lambda sum_i s^(i) (Vahdat & Kautz 2020, sec. 3.2). Each s is u^T W v with (u, v)
    from power iteration (Miyato et al. 2018, Algorithm 1): ``start`` steps at construction,
    then one per :meth:`iterate` (its owner's ``after_step``, once per optimizer step, so that
    the loss only reads u and v and capture can record it). u and v are buffers, so a
    checkpoint carries them and a resumed run goes on bitwise; the convolutions are read, not
    owned. A zero weight keeps the previous (u, v) instead of collapsing them to zero."""

    def __init__(self, module: nn.Module, weight: float, start: int = 20):
        super().__init__()
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
            raise ConfigError(f"the spectral regularisation weight must be a number >= 0, got {weight!r}")
        self.weight = float(weight)
        self._convs = convolutions(module)
        for i, conv in enumerate(self._convs):
            rows, cols = conv.weight.flatten(1).shape
            self.register_buffer(f"u{i}", F.normalize(torch.randn(rows), dim=0))
            self.register_buffer(f"v{i}", F.normalize(torch.randn(cols), dim=0))
        self.iterate(start)

    def vectors(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"u{i}"), getattr(self, f"v{i}")

    @torch.no_grad()
    def iterate(self, steps: int = 1) -> None:
        """``steps`` of power iteration on every weight: v <- W^T u / |W^T u|, u <- W v / |W v|."""
        step = lambda old, new: old.copy_(torch.where(new.norm() > 0, F.normalize(new, dim=0), old))
        for i, conv in enumerate(self._convs):
            w, (u, v) = conv.weight.flatten(1), self.vectors(i)
            for _ in range(steps):
                step(v, w.t() @ u)
                step(u, w @ v)

    def forward(self) -> torch.Tensor:
        """lambda sum_i u_i^T W_i v_i, differentiable in the weights (u, v held fixed)."""
        values = []
        for i, conv in enumerate(self._convs):
            u, v = self.vectors(i)
            values.append(u @ conv.weight.flatten(1) @ v)
        return self.weight * torch.stack(values).sum()


class Spectral:
    """The hooks of a module whose ``spectral`` attribute is a :class:`SpectralPenalty` or None:
    the penalty in the training loss, and its power-iteration step after each optimizer step."""

    spectral: SpectralPenalty | None

    def auxiliary_loss(self, x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor | None:
        """The penalty for the batch ``x``, summed over it as the training loss is (so lambda
        sum_i s^(i) per datapoint)."""
        return None if self.spectral is None else self.spectral() * x.shape[0]

    def after_step(self) -> None:
        """One power-iteration step on the updated weights."""
        if self.spectral is not None:
            self.spectral.iterate(1)
