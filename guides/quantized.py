"""The VQ-VAE's guide (van den Oord et al. 2017, sec. 3.1): the point mass at the nearest codes."""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch

from pyrovae.blocks.base import ImageModule
from pyrovae.blocks.nn import GridEncoder
from pyrovae.errors import ModelError
from pyrovae.registry import register_guide
from pyrovae.sites import CODES, DATA_PLATE


@register_guide("vq")
class NearestCodeGuide(ImageModule):
    """q(c | x) = 1 at ``c = argmin_k ||z_e(x) - e_k||`` per grid position, z_e a convolutional
    encoder (``channels`` from the finest scale, ``blocks`` residual blocks) and e the model's
    codebook, shared (:meth:`attach_model`). A point mass over discrete values: log q = 0
    exactly, so the ELBO is log p(x, c) (the paper's bound with a uniform prior)."""

    latent_sites = (CODES,)

    def __init__(self, x_shape: Sequence[int], latent_dim: int = 16, *, channels: Sequence[int] = (32, 64),
                 blocks: int = 2, activation: str = "relu"):  # fmt: skip
        super().__init__(x_shape, latent_dim)
        self.encoder = GridEncoder(self.x_shape, latent_dim, channels, blocks, activation)
        self._model: list = []  # the model holding the codebook (a list: not a submodule of the guide)

    def attach_model(self, model) -> None:
        """Use ``model.quantizer``'s codebook (the model owns it)."""
        quantizer = getattr(model, "quantizer", None)
        if quantizer is None or quantizer.dim != self.latent_dim:
            raise ModelError(
                f"guide 'vq' needs a model with a codebook of {self.latent_dim}-vectors (model "
                f"'vqvae' with the same latent_dim); got {type(model).__name__}"
            )
        self._model[:] = [model]

    @property
    def quantizer(self):
        if not self._model:
            raise ModelError("guide 'vq' has no codebook yet: call guide.attach_model(model) first")
        return self._model[0].quantizer

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z_e(x): the encoder's grid of vectors (N, h, w, D)."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> None:
        codes = self.quantizer.nearest(self.encode(x))
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(CODES, dist.Delta(codes, event_dim=2))
