"""The guide of the top-down hierarchical VAE (``models/ladder.py``): a bottom-up deterministic
path over x and the model's own top-down path, combined per layer."""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.blocks.base import ImageModule
from pyrovae.blocks.hierarchy import (
    Spectral,
    SpectralPenalty,
    gaussian_grid,
    layer_channels,
    normalised,
    on_grids,
    zero_conv,
)
from pyrovae.blocks.nn import GridEncoder, ResBlock
from pyrovae.errors import ModelError, unknown_name
from pyrovae.registry import register_guide
from pyrovae.sites import DATA_PLATE

POSTERIORS = ("residual", "precision")  #: how q combines the two paths (guide.posterior)


def _paired(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[a, b] along the channels, their leading dims broadcast (a particle dim on one of them)."""
    lead = torch.broadcast_shapes(a.shape[:-3], b.shape[:-3])
    return torch.cat([a.expand(*lead, *a.shape[-3:]), b.expand(*lead, *b.shape[-3:])], -3)


@register_guide("ladder")
class LadderGuide(Spectral, ImageModule):
    """q(z_L | x) q(z_L-1 | x, z_L) ... q(z_1 | x, z_>1), top down as the model generates
    (``layers``: by default as many as the model's ``latent_dim`` lists, one for an integer, as
    a one-layer model reports it); the bottom-up path d_1 = enc(x), d_l+1 = ResBlock(d_l)
    (``channels``, ``blocks``, the model's ``width``); the top-down state h is the model's (its
    layers, shared parameters), and layer l combines h with d_l (``posterior``):

    - ``"residual"``: N(mu_p + dmu, sigma_p dsigma), (dmu, dsigma) from [h, d_l] (NVAE's
      residual normal, Vahdat & Kautz 2020, eq. 2); it starts at q = p;
    - ``"precision"``: the precision-weighted product of p(z_l | h) and a Gaussian of d_l
      alone (LVAE, Sønderby et al. 2016, eqs. 18-19).

    ``norm = "weight"`` weight-normalises the guide's own convolutions (:func:`normalised`) and
    ``spectral`` > 0 regularises their largest singular values (:class:`SpectralPenalty`), as
    the model's options do for its own."""

    latent_sites = ("z1",)  #: per instance: ("z1", ..., "zL")

    def __init__(self, x_shape: Sequence[int], latent_dim: int | Sequence[int] = 4, *,
                 layers: int | None = None, width: int = 64, channels: Sequence[int] = (32, 64),
                 blocks: int = 1, activation: str = "relu", posterior: str = "residual",
                 min_scale: float = 1e-3, norm: str = "none", spectral: float = 0.0):  # fmt: skip
        if posterior not in POSTERIORS:
            raise unknown_name("ladder posterior (guide.posterior)", posterior, POSTERIORS)
        if layers is None:  # as many as the model's latent_dim lists; an integer is one layer's
            layers = 1 if isinstance(latent_dim, int) else len(latent_dim)
        latent_dim = layer_channels(latent_dim, layers)
        self.latent_sites = tuple(f"z{i}" for i in range(1, layers + 1))
        super().__init__(x_shape, [latent_dim] * layers if layers > 1 else latent_dim)
        self.layers, self.width, self.latent, self.posterior = layers, width, latent_dim, posterior
        self.min_scale = min_scale
        self.encoder = GridEncoder(self.x_shape, width, channels, blocks, activation)
        self.up = nn.ModuleList(ResBlock(width, activation) for _ in range(layers - 1))
        c_in = 2 * width if posterior == "residual" else width
        self.heads = nn.ModuleList(zero_conv(c_in, 2 * latent_dim) for _ in range(layers))
        normalised(self, norm)
        self.spectral = SpectralPenalty(self, spectral) if spectral else None
        self._model: list = []  # the model whose top-down path this guide shares (not a submodule)

    def attach_model(self, model) -> None:
        """Share ``model``'s top-down layers; it must be a ladder of the same shape."""
        shape = lambda m: (getattr(m, "layers", None), getattr(m, "width", None), getattr(m, "latent", None))
        if not hasattr(model, "down") or shape(model) != shape(self):
            raise ModelError(
                f"guide 'ladder' (layers, width, latent_dim = {shape(self)}) needs model 'ladder' of the "
                f"same layers, width and latent_dim; got {type(model).__name__} {shape(model)}"
            )
        self._model[:] = [model]

    @property
    def model(self):
        if not self._model:
            raise ModelError("guide 'ladder' has no top-down path yet: call guide.attach_model(model) first")
        return self._model[0]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The bottom-up features d_1, ..., d_L, each (N, width, h, w)."""
        d = [self.encoder(x).movedim(-1, -3)]
        for up in self.up:
            d.append(up(d[-1]))
        return d

    def q(self, index: int, h: torch.Tensor, d: torch.Tensor, loc_p, scale_p) -> dist.Normal:
        """q(z_l | x, z_>l) of layer ``index`` (1 = next to x) from the state h, the feature d_l and
        the prior's (loc, scale)."""
        if self.posterior == "residual":
            delta_loc, delta_scale = gaussian_grid(on_grids(self.heads[index - 1], _paired(h, d)), 0.0)
            return dist.Normal(loc_p + delta_loc, scale_p * delta_scale + self.min_scale)
        loc_d, scale_d = gaussian_grid(on_grids(self.heads[index - 1], d), self.min_scale)
        precision_p, precision_d = scale_p.pow(-2), scale_d.pow(-2)
        precision = precision_p + precision_d
        return dist.Normal((loc_p * precision_p + loc_d * precision_d) / precision, precision.rsqrt())

    def forward(self, x: torch.Tensor) -> None:
        model, feats = self.model, self.features(x)
        h = model.start(x.shape[0])
        with pyro.plate(DATA_PLATE, x.shape[0]):
            for site, layer in model.order():
                index = int(site[1:])
                loc_p, scale_p = model.prior_params(layer, h)
                z = pyro.sample(site, self.q(index, h, feats[index - 1], loc_p, scale_p).to_event(3))
                h = layer(h, z)
