"""The standard VAE of Kingma & Welling (2013)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pyro
import torch

from pyrovae.blocks.base import ImageModel
from pyrovae.blocks.likelihoods import Likelihood
from pyrovae.blocks.nn import ConvDecoder, ResNetDecoder, mlp
from pyrovae.blocks.priors import Prior, make_prior
from pyrovae.errors import unknown_name
from pyrovae.registry import register_model
from pyrovae.sites import DATA_PLATE, LATENT, OBSERVED


@register_model("vae")
class VAE(ImageModel):
    """VAE: z ~ N(0, I), x ~ p(x | decoder(z)) (Kingma & Welling 2013, sec. 3).

    ``decoder`` is ``"mlp"`` (layers ``hidden``), ``"conv"`` (MLP ``hidden`` then
    transposed convolutions with ``channels``) or ``"resnet"`` (per scale, coarsest first, a
    transposed convolution to ``channels[i]`` and ``blocks`` residual blocks); ``likelihood`` is
    ``"bernoulli"``, ``"gaussian"`` (``sigma`` fixed or ``"learned"`` per pixel),
    ``"continuous_bernoulli"``, or for 8-bit pixels ``"discretized_logistic"``,
    ``"discretized_logistic_mixture"`` (``components``) or ``"categorical"``
    (see :class:`pyrovae.blocks.likelihoods.Likelihood`);
    ``prior`` is ``"standard"`` (N(0, I)), ``"mog"``, ``"vamp"`` or ``"flow"`` with
    ``prior_options`` (see :mod:`pyrovae.blocks.priors`), or a :class:`pyrovae.blocks.priors.Prior`.
    """

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int = 20,
        *,
        decoder: str = "mlp",
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
        likelihood: str = "bernoulli",
        sigma: float | str = 0.1,
        components: int = 5,
        channels: Sequence[int] = (64, 32),
        blocks: int = 2,
        prior: str | Prior = "standard",
        prior_options: Mapping[str, Any] | None = None,
    ):
        super().__init__(x_shape, latent_dim)
        self.prior = make_prior(prior, latent_dim, self.x_shape, prior_options)
        self.likelihood = Likelihood(likelihood, self.x_shape, sigma, components=components)
        if decoder == "mlp":
            self.net = torch.nn.Sequential(
                mlp([latent_dim, *hidden, math.prod(self.likelihood.param_shape)], activation),
                torch.nn.Unflatten(-1, self.likelihood.param_shape),
            )
        elif decoder == "conv":
            out = self.likelihood.param_shape[0]
            self.net = ConvDecoder(latent_dim, self.x_shape, channels, hidden, activation, out)
        elif decoder == "resnet":
            out = self.likelihood.param_shape[0]
            self.net = ResNetDecoder(latent_dim, self.x_shape, channels, blocks, activation, out)
        else:
            raise unknown_name("decoder", decoder, ("mlp", "conv", "resnet"))

    def attach_guide(self, guide) -> None:
        """Give a prior built from the guide (the VampPrior) its guide; a no-op for the others."""
        if hasattr(self.prior, "attach"):
            self.prior.attach(guide)

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = pyro.sample(LATENT, self.prior(x.shape[0]))
            pyro.sample(OBSERVED, self.likelihood(self.net(z)), obs=x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.net(z))

    def sample_prior(self, num: int) -> torch.Tensor:
        return self.prior.sample(num)
