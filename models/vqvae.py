"""The VQ-VAE of van den Oord et al. (2017), written as a Pyro model over a grid of discrete codes."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pyro
import torch

from pyrovae.blocks.base import ImageModel
from pyrovae.blocks.codes import make_code_prior
from pyrovae.blocks.likelihoods import Likelihood
from pyrovae.blocks.nn import GridDecoder
from pyrovae.blocks.quantize import VectorQuantizer
from pyrovae.registry import register_model
from pyrovae.sites import CODES, DATA_PLATE, OBSERVED


@register_model("vqvae")
class VQVAE(ImageModel):
    """VQ-VAE: codes c ~ p(c) on an (H / 2^s) x (W / 2^s) grid, x ~ p(x | decoder(e_c)) with e
    the codebook of ``num_codes`` vectors of size ``latent_dim`` (van den Oord et al. 2017,
    sec. 3). ``prior`` "uniform" (the paper's training prior; the bound is then
    log p(x | e_c) - L log K) or "transformer" (learned after the autoencoder:
    :mod:`pyrovae.blocks.codes`, ``prior_options`` width, layers, heads). The codebook:
    ``commitment`` (beta of eq. 3), ``ema`` moving-average updates with ``decay`` (appendix
    A.1), ``restart_every`` steps dead codes restart (0: never). The decoder: ``channels``
    (coarsest first; one stride-2 step each), ``blocks`` residual blocks; ``likelihood`` as
    :class:`pyrovae.models.vae.VAE`'s. The guide ``vq`` chooses the nearest codes; train with
    ``train.objective = "vqvae"``."""

    latent_sites = (CODES,)

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int = 16,
        *,
        num_codes: int = 64,
        channels: Sequence[int] = (64, 32),
        blocks: int = 2,
        activation: str = "relu",
        likelihood: str = "bernoulli",
        sigma: float | str = 0.1,
        components: int = 5,
        commitment: float = 0.25,
        ema: bool = False,
        decay: float = 0.99,
        restart_every: int = 0,
        prior: str = "uniform",
        prior_options: Mapping[str, Any] | None = None,
    ):
        super().__init__(x_shape, latent_dim)
        self.likelihood = Likelihood(likelihood, self.x_shape, sigma, components=components)
        out = self.likelihood.param_shape[0]
        self.decoder = GridDecoder(latent_dim, self.x_shape, channels, blocks, activation, out)
        f = 2 ** len(channels)
        self.grid = (self.x_shape[1] // f, self.x_shape[2] // f)  #: the code grid's (height, width)
        self.quantizer = VectorQuantizer(
            num_codes, latent_dim, beta=commitment, ema=ema, decay=decay, restart_every=restart_every
        )
        self.prior = make_code_prior(prior, num_codes, self.grid, prior_options)

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate(DATA_PLATE, x.shape[0]):
            codes = pyro.sample(CODES, self.prior(x.shape[0]))
            pyro.sample(OBSERVED, self.likelihood(self.decoder(self.quantizer.lookup(codes))), obs=x)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """E[x | c] for grids of code indices ``codes`` (..., h, w)."""
        return self.likelihood.mean(self.decoder(self.quantizer.lookup(codes)))

    def sample_prior(self, num: int) -> torch.Tensor:
        return self.prior.sample(num)
