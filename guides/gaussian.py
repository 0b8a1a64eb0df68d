"""Amortized Gaussian guides q(z|x) = N(mu(x), diag sigma(x)^2) (Kingma & Welling 2013, eq. 9),
optionally moved by a flow conditioned on x (:mod:`pyrovae.blocks.flows`), or, with
``deterministic``, the point mass at mu(x): the deterministic encoder of a WAE (Tolstikhin et
al. 2018, sec. 2.2), which has no density, so that only objectives and estimators that need
none take it (``wae``; AIS from the prior)."""

from __future__ import annotations

import math
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.blocks.base import ImageModule
from pyrovae.blocks.flows import PosteriorFlow
from pyrovae.blocks.nn import ConvEncoder, ResNetEncoder, mlp
from pyrovae.errors import ConfigError
from pyrovae.registry import register_guide
from pyrovae.sites import DATA_PLATE, LATENT


class DiagonalGaussianGuide(ImageModule):
    """q(z|x) = N(mu(x), diag sigma(x)^2), with ``encoder`` mapping x to ``head.features``
    numbers and ``head`` (default: no flow) turning them into q (sigma = softplus(.) +
    ``min_scale``); with a flow head, that Gaussian is the flow's start."""

    def __init__(self, x_shape: Sequence[int], latent_dim: int, encoder: nn.Module, min_scale: float = 1e-4,
                 head: PosteriorFlow | None = None, deterministic: bool = False):  # fmt: skip
        super().__init__(x_shape, latent_dim)
        self.encoder = encoder
        self.min_scale = min_scale
        self.head = head if head is not None else PosteriorFlow(latent_dim, min_scale=min_scale)
        if not isinstance(deterministic, bool):
            raise ConfigError(f"guide.deterministic must be true or false, got {deterministic!r}")
        if deterministic and self.head.flow != "none":
            raise ConfigError(
                f"a deterministic encoder has no flow to move: set guide.flow = 'none' "
                f"(got {self.head.flow!r}) or guide.deterministic = false"
            )
        self.deterministic = deterministic  #: q(z|x) is the point mass at mu(x)

    @property
    def flow(self) -> str:
        """The flow after the Gaussian: "none", "iaf" or "householder"."""
        return self.head.flow

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of the Gaussian, each of shape (N, latent_dim): q(z|x) itself without a flow."""
        return self.head.base(self.encoder(x))

    def local_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output, what ``head`` reads: refined per datapoint by
        :func:`pyrovae.diagnostics.refine.refine`."""
        return self.encoder(x)

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        """q(z|x), batch shape (N,): with ``deterministic``, the point mass at mu(x)."""
        if self.deterministic:
            return dist.Delta(self.params(x)[0], event_dim=1)
        return self.head(self.encoder(x))

    def forward(self, x: torch.Tensor) -> None:
        q = self.posterior(x)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(LATENT, q)


def flow_head(latent_dim, min_scale, flow, depth, hidden, context, gated, order) -> PosteriorFlow:
    """The head of a Gaussian guide from its ``flow*`` options (:class:`PosteriorFlow`)."""
    return PosteriorFlow(latent_dim, flow, depth, hidden, context, min_scale, gated=gated, order=order)


@register_guide("mlp")
class MLPGuide(DiagonalGaussianGuide):
    """Gaussian encoder: flatten x, MLP with layers ``hidden``; ``flow`` "iaf" or "householder"
    moves the Gaussian by ``flow_depth`` transforms (networks ``flow_hidden``) conditioned on
    ``flow_context`` further encoder outputs (0: none), an IAF affine or ``flow_gated``, its
    networks' variable order ``flow_order`` (:class:`pyrovae.blocks.flows.PosteriorFlow`);
    ``deterministic`` makes q(z|x) the point mass at mu(x), a WAE's encoder."""

    def __init__(self, x_shape: Sequence[int], latent_dim: int, *, hidden: Sequence[int] = (400,),
                 activation: str = "relu", min_scale: float = 1e-4, flow: str = "none", flow_depth: int = 2,
                 flow_hidden: Sequence[int] = (320, 320), flow_context: int = 32, flow_gated: bool = False,
                 flow_order: str = "random", deterministic: bool = False):  # fmt: skip
        head = flow_head(
            latent_dim, min_scale, flow, flow_depth, flow_hidden, flow_context, flow_gated, flow_order
        )
        net = nn.Sequential(nn.Flatten(), mlp([math.prod(x_shape), *hidden, head.features], activation))
        super().__init__(x_shape, latent_dim, net, min_scale, head, deterministic)


@register_guide("conv")
class ConvGuide(DiagonalGaussianGuide):
    """Gaussian encoder: stride-2 convolutions ``channels``, then MLP ``hidden``; a flow as
    :class:`MLPGuide` takes it (``flow``, ``flow_depth``, ``flow_hidden``, ``flow_context``), or
    ``deterministic`` makes it a point mass."""

    def __init__(self, x_shape: Sequence[int], latent_dim: int, *, channels: Sequence[int] = (32, 64),
                 hidden: Sequence[int] = (256,), activation: str = "relu", min_scale: float = 1e-4,
                 flow: str = "none", flow_depth: int = 2, flow_hidden: Sequence[int] = (320, 320),
                 flow_context: int = 32, flow_gated: bool = False, flow_order: str = "random",
                 deterministic: bool = False):  # fmt: skip
        head = flow_head(
            latent_dim, min_scale, flow, flow_depth, flow_hidden, flow_context, flow_gated, flow_order
        )
        net = ConvEncoder(x_shape, head.features, channels, hidden, activation)
        super().__init__(x_shape, latent_dim, net, min_scale, head, deterministic)


@register_guide("resnet")
class ResNetGuide(DiagonalGaussianGuide):
    """Gaussian encoder for colour images: per scale ``blocks`` residual blocks and a
    stride-2 convolution (``channels`` from the finest scale), then a linear head; a flow as
    :class:`MLPGuide` takes it (``flow``, ``flow_depth``, ``flow_hidden``, ``flow_context``), or
    ``deterministic`` makes it a point mass."""

    def __init__(self, x_shape: Sequence[int], latent_dim: int, *, channels: Sequence[int] = (64, 128),
                 blocks: int = 2, activation: str = "relu", min_scale: float = 1e-4, flow: str = "none",
                 flow_depth: int = 2, flow_hidden: Sequence[int] = (320, 320),
                 flow_context: int = 32, flow_gated: bool = False, flow_order: str = "random",
                 deterministic: bool = False):  # fmt: skip
        head = flow_head(
            latent_dim, min_scale, flow, flow_depth, flow_hidden, flow_context, flow_gated, flow_order
        )
        net = ResNetEncoder(x_shape, head.features, channels, blocks, activation)
        super().__init__(x_shape, latent_dim, net, min_scale, head, deterministic)
