"""Guides of the conditional models (models/conditional.py)."""

from __future__ import annotations

import math
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch

from pyrovae.blocks.base import ImageModule
from pyrovae.blocks.flows import PosteriorFlow
from pyrovae.blocks.nn import gaussian_head, mlp
from pyrovae.hooks import Takes
from pyrovae.registry import register_guide
from pyrovae.sites import DATA_PLATE, LATENT


@register_guide("cond_mlp")
class ConditionalMLPGuide(ImageModule):
    """q(z | x, y) = N(mu, diag sigma^2) from an MLP on [flattened x, y], y of ``num_classes``
    numbers (one-hot label or conditioning vector), for the model ``cvae``; ``flow``, ``flow_depth``,
    ``flow_hidden``, ``flow_context``: a flow conditioned on the same MLP (:mod:`pyrovae.blocks.flows`)."""

    takes = Takes.IMAGE_LABEL

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int,
        *,
        num_classes: int = 10,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
        min_scale: float = 1e-4,
        flow: str = "none",
        flow_depth: int = 2,
        flow_hidden: Sequence[int] = (320, 320),
        flow_context: int = 32,
    ):
        super().__init__(x_shape, latent_dim)
        self.min_scale = min_scale
        self.head = PosteriorFlow(latent_dim, flow, flow_depth, flow_hidden, flow_context, min_scale)
        self.net = mlp([math.prod(self.x_shape) + num_classes, *hidden, self.head.features], activation)

    def local_inputs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The MLP's output, what ``head`` reads (refined per datapoint by
        :func:`pyrovae.diagnostics.refine.refine`)."""
        return self.net(torch.cat([x.flatten(1), y], -1))

    def params(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of the Gaussian (q itself without a flow)."""
        return self.head.base(self.local_inputs(x, y))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        q = self.head(self.local_inputs(x, y))
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(LATENT, q)


@register_guide("quadrant_recognition")
class QuadrantRecognition(ImageModule):
    """The recognition network q(z | x, y) of the quadrant CVAE (Sohn et al. 2015): an MLP on
    the visible input x and the whole image y. Without y (generation) it samples z from the
    model's prior network p(z | x), once ``attach_model`` gave it the model."""

    takes = Takes.QUADRANTS

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int,
        *,
        hidden: Sequence[int] = (500, 500),
        activation: str = "relu",
        min_scale: float = 1e-4,
    ):
        super().__init__(x_shape, latent_dim)
        self.min_scale = min_scale
        self.net = mlp([2 * math.prod(self.x_shape), *hidden, 2 * latent_dim], activation)
        object.__setattr__(self, "_model", None)  # not a submodule: its parameters stay the model's

    def attach_model(self, model) -> None:
        object.__setattr__(self, "_model", model)

    def params(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gaussian_head(
            self.net(torch.cat([x.flatten(1), y.flatten(1)], -1)), self.latent_dim, self.min_scale
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        if y is None:
            if self._model is None:
                raise ValueError(
                    "without y the recognition guide samples from the model's prior network; "
                    "call guide.attach_model(model) first"
                )
            loc, scale = self._model.prior_params(x)
        else:
            loc, scale = self.params(x, y)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(LATENT, dist.Normal(loc, scale).to_event(1))


@register_guide("none")
class NoLatents(ImageModule):
    """The guide of a model with no latent site (``quadrant_baseline``): it samples nothing."""

    latent_sites = ()
    takes = Takes.ANY

    def __init__(self, x_shape: Sequence[int], latent_dim=(), **_):
        super().__init__(x_shape, ())

    def forward(self, *args, **kwargs) -> None:
        return None
