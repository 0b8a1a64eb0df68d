"""A deep top-down hierarchical VAE in the style of the Ladder VAE (Sønderby et al. 2016), NVAE
(Vahdat & Kautz 2020) and VDVAE (Child 2021): L stochastic layers of latent grids, generated top
down through residual cells that the guide shares."""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.blocks.base import ImageModel
from pyrovae.blocks.hierarchy import (
    Spectral,
    SpectralPenalty,
    TopDownLayer,
    gaussian_grid,
    layer_channels,
    normalised,
    on_grids,
)
from pyrovae.blocks.likelihoods import Likelihood
from pyrovae.blocks.nn import GridDecoder
from pyrovae.registry import register_model
from pyrovae.sites import DATA_PLATE, OBSERVED


@register_model("ladder")
class LadderVAE(Spectral, ImageModel):
    """x ~ p(x | h_0), h_{l-1} = cell_l(h_l, z_l), z_l ~ N(mu_l(h_l), diag sigma_l(h_l)^2) for
    l = L, ..., 1 from a learned constant h_L: a top-down hierarchy of ``layers`` stochastic
    layers (sites ``z1`` next to x, ..., ``zL`` at the top), each a grid of ``latent_dim``
    channels at 1 / 2^len(``channels``) of the image size, the state h of ``width`` channels
    (LVAE, Sønderby et al. 2016, eq. 1; the residual cells of VDVAE). The decoder turns h_0 into
    the likelihood's parameters (``channels`` coarsest first, ``blocks`` residual blocks); the
    guide ``ladder`` shares the top-down layers (:class:`TopDownLayer`). With one layer and its
    prior head at zero it is a VAE with p(z) = N(0, I). ``norm = "weight"`` weight-normalises
    every convolution (NVAE's choice, :func:`normalised`); ``spectral`` > 0 adds NVAE's spectral
    regularisation of the model's convolutions to the training loss, ``spectral`` times the sum
    of their largest singular values per datapoint (:class:`SpectralPenalty`)."""

    latent_sites = ("z1",)  #: per instance: ("z1", ..., "zL")

    def __init__(self, x_shape: Sequence[int], latent_dim: int | Sequence[int] = 4, *, layers: int = 8,
                 width: int = 64, channels: Sequence[int] = (64, 32), blocks: int = 1,
                 activation: str = "relu", likelihood: str = "bernoulli", sigma: float | str = 0.1,
                 components: int = 5, min_scale: float = 1e-3, norm: str = "none",
                 spectral: float = 0.0):  # fmt: skip
        latent_dim = layer_channels(latent_dim, layers)
        self.latent_sites = tuple(f"z{i}" for i in range(1, layers + 1))
        super().__init__(x_shape, [latent_dim] * layers if layers > 1 else latent_dim)
        self.layers, self.width, self.latent, self.min_scale = layers, width, latent_dim, min_scale
        self.likelihood = Likelihood(likelihood, self.x_shape, sigma, components=components)
        f = 2 ** len(channels)
        self.grid = (latent_dim, self.x_shape[1] // f, self.x_shape[2] // f)  #: one layer's latent shape
        self.top = nn.Parameter(torch.zeros(width, *self.grid[1:]))  # h_L
        self.down = nn.ModuleList(TopDownLayer(width, latent_dim, activation) for _ in range(layers))
        out = self.likelihood.param_shape[0]
        self.decoder = GridDecoder(width, self.x_shape, channels, blocks, activation, out)
        normalised(self, norm)
        self.spectral = SpectralPenalty(self, spectral) if spectral else None

    def order(self) -> list[tuple[str, TopDownLayer]]:
        """(site, layer) from the top down: ("zL", ...), ..., ("z1", ...)."""
        return [(f"z{i}", self.down[i - 1]) for i in range(self.layers, 0, -1)]

    def prior_params(self, layer: TopDownLayer, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of p(z_l | h)."""
        return gaussian_grid(on_grids(layer.prior, h), self.min_scale)

    def start(self, n: int) -> torch.Tensor:
        """h_L for ``n`` datapoints."""
        return self.top.expand(n, *self.top.shape)

    def forward(self, x: torch.Tensor) -> None:
        h = self.start(x.shape[0])
        with pyro.plate(DATA_PLATE, x.shape[0]):
            for site, layer in self.order():
                z = pyro.sample(site, dist.Normal(*self.prior_params(layer, h)).to_event(3))
                h = layer(h, z)
            pyro.sample(OBSERVED, self.likelihood(self.params(h)), obs=x)

    def params(self, h: torch.Tensor) -> torch.Tensor:
        """The likelihood's parameters from h_0 (..., C, h, w)."""
        return self.decoder(h.movedim(-3, -1))

    @torch.no_grad()
    def sample(self, num: int) -> torch.Tensor:
        """E[x | h_0] with every layer drawn from its prior, top down."""
        h = self.start(num)
        for _, layer in self.order():
            h = layer(h, dist.Normal(*self.prior_params(layer, h)).sample())
        return self.likelihood.mean(self.params(h))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z_L = z], the lower layers at their prior means."""
        h = self.start(z.shape[0])
        for i, (_, layer) in enumerate(self.order()):
            h = layer(h, z if i == 0 else self.prior_params(layer, h)[0])
        return self.likelihood.mean(self.params(h))

    def sample_prior(self, num: int) -> torch.Tensor:
        loc, scale = self.prior_params(self.down[-1], self.start(num))
        return dist.Normal(loc, scale).sample()
