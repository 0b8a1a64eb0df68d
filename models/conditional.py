"""Conditional VAEs: label-conditioned, and structured output for the MNIST quadrant task.

- ``cvae``: p(z) p(x | z, y) with y a one-hot label or any conditioning vector (Kingma et
  al. 2014, "M2" without the classifier; Sohn et al. 2015, sec. 3);
- ``quadrant_cvae``: predict the hidden quadrants y of an image from its visible ones x,
  with a prior network p(z | x), a generation network p(y | x, z) and, as guide, a
  recognition network q(z | x, y) (Sohn et al. 2015, eq. 4 and fig. 1);
- ``quadrant_baseline``: the same task by one deterministic network, p(y | x) = Bernoulli(f(x))
  (the paper's "NN baseline"): a model with no latent site, whose log-likelihood is exact.

Both quadrant models count only the hidden pixels: the visible input x holds -1 there.
"""

from __future__ import annotations

import math
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyrovae.blocks.base import ImageModel
from pyrovae.blocks.likelihoods import BernoulliLogits, Likelihood
from pyrovae.blocks.nn import gaussian_head, mlp
from pyrovae.blocks.priors import StandardPrior
from pyrovae.errors import ConfigError, DataError
from pyrovae.hooks import Takes
from pyrovae.registry import register_model
from pyrovae.sites import DATA_PLATE, LATENT, OBSERVED

HIDDEN = -1.0  #: the value of a hidden pixel in a quadrant task's input


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    if labels.dim() != 1 or (labels < 0).any() or (labels >= num_classes).any():
        raise DataError(
            f"a label-conditioned model needs integer labels in [0, {num_classes}) for every "
            "datapoint; this dataset has unlabelled or out-of-range ones"
        )
    return F.one_hot(labels, num_classes).float()


@register_model("cvae")
class ClassConditionalVAE(ImageModel):
    """z ~ N(0, I), x ~ p(x | decoder(z, y)) with y the one-hot label (``num_classes``) or any
    conditioning vector of ``num_classes`` numbers; decoder an MLP on [z, y]."""

    takes = Takes.IMAGE_LABEL

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int = 20,
        *,
        num_classes: int = 10,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
        likelihood: str = "bernoulli",
        sigma: float | str = 0.1,
        components: int = 5,
    ):
        super().__init__(x_shape, latent_dim)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"cvae needs num_classes >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.prior = StandardPrior(latent_dim)
        self.likelihood = Likelihood(likelihood, self.x_shape, sigma, components=components)
        self.net = nn.Sequential(
            mlp([latent_dim + num_classes, *hidden, math.prod(self.likelihood.param_shape)], activation),
            nn.Unflatten(-1, self.likelihood.param_shape),
        )

    def inputs(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, one-hot y) for labelled images."""
        return images, one_hot(labels, self.num_classes).to(images)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = pyro.sample(LATENT, self.prior(x.shape[0]))
            yz = torch.cat([z, y.expand(*z.shape[:-1], y.shape[-1])], -1)
            pyro.sample(OBSERVED, self.likelihood(self.net(yz)), obs=x)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            raise ConfigError(
                "cvae decodes z for a chosen class: pass condition=LABEL (pyrovae sample --condition)"
            )
        return self.likelihood.mean(self.net(torch.cat([z, y.expand(z.shape[0], -1)], -1)))

    def sample_prior(self, num: int) -> torch.Tensor:
        return self.prior.sample(num)

    @torch.no_grad()
    def sample(self, num: int, condition: int | torch.Tensor | None = None) -> torch.Tensor:
        """``num`` images of class ``condition`` (an int label or a conditioning vector)."""
        if condition is None:
            raise ConfigError(
                "cvae samples a chosen class: pass condition=LABEL (pyrovae sample --condition 7)"
            )
        z = self.sample_prior(num)
        y = (
            one_hot(torch.tensor([int(condition)]), self.num_classes)
            if not isinstance(condition, torch.Tensor)
            else condition.reshape(1, -1).float()
        ).to(z)
        return self.decode(z, y)


def quadrant_mask(quadrants: int, shape: Sequence[int]) -> torch.Tensor:
    """Boolean mask of the visible pixels: the bottom-left quadrant, then the top-left, then the
    top-right, for 1, 2 or 3 visible quadrants (the layout of Pyro's CVAE tutorial)."""
    if quadrants not in (1, 2, 3):
        raise ConfigError(f"the quadrant task shows 1, 2 or 3 quadrants, got {quadrants!r}")
    _, h, w = shape
    mask = torch.zeros(shape, dtype=torch.bool)
    corners = [
        (slice(h // 2, h), slice(0, w // 2)),
        (slice(0, h // 2), slice(0, w // 2)),
        (slice(0, h // 2), slice(w // 2, w)),
    ]
    for rows, cols in corners[:quadrants]:
        mask[:, rows, cols] = True
    return mask


class _QuadrantTask(ImageModel):
    """Shared by the quadrant models: inputs (x visible with -1 hidden, y the whole image)."""

    takes = Takes.QUADRANTS

    def __init__(self, x_shape: Sequence[int], latent_dim: int, quadrants: int):
        super().__init__(x_shape, latent_dim)
        self.quadrants = quadrants
        self.register_buffer("visible", quadrant_mask(quadrants, self.x_shape), persistent=False)

    def inputs(
        self, images: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.where(self.visible, images, torch.full_like(images, HIDDEN)), images

    def _likelihood(self, logits: torch.Tensor, x: torch.Tensor) -> dist.Distribution:
        """Bernoulli over the hidden pixels only (the visible ones are masked out)."""
        hidden = (x == HIDDEN).expand(logits.shape)
        return BernoulliLogits(logits=logits).mask(hidden).to_event(len(self.x_shape))

    def check_data(self, x: torch.Tensor) -> None:
        super().check_data(x)
        if not ((x == 0) | (x == 1)).all():
            raise DataError('the quadrant task models binary pixels; use pixels = "dynamic" or "static"')


@register_model("quadrant_cvae")
class QuadrantCVAE(_QuadrantTask):
    """Structured-output CVAE (Sohn et al. 2015): z ~ p(z | x) (prior network), y ~ p(y | x, z)
    (generation network) over the hidden quadrants, with ``quadrants`` visible."""

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int = 2,
        *,
        quadrants: int = 1,
        hidden: Sequence[int] = (500, 500),
        activation: str = "relu",
        min_scale: float = 1e-4,
    ):
        super().__init__(x_shape, latent_dim, quadrants)
        d = math.prod(self.x_shape)
        self.min_scale = min_scale
        self.prior_net = nn.Sequential(nn.Flatten(), mlp([d, *hidden, 2 * latent_dim], activation))
        self.generation_net = mlp([latent_dim + d, *hidden, d], activation)

    def prior_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gaussian_head(self.prior_net(x), self.latent_dim, self.min_scale)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = pyro.sample(LATENT, dist.Normal(*self.prior_params(x)).to_event(1))
            xf = x.flatten(1).expand(*z.shape[:-1], -1)
            logits = self.generation_net(torch.cat([z, xf], -1)).unflatten(-1, self.x_shape)
            pyro.sample(OBSERVED, self._likelihood(logits, x), obs=y)

    @torch.no_grad()
    def complete(self, x: torch.Tensor, num: int) -> torch.Tensor:
        """``num`` sampled completions of each visible input: E[y | x, z], z ~ p(z | x), with the
        visible pixels kept; shape (num, N, *x_shape)."""
        loc, scale = self.prior_params(x)
        z = loc + scale * torch.randn(num, *loc.shape, device=loc.device)
        logits = self.generation_net(torch.cat([z, x.flatten(1).expand(num, -1, -1)], -1)).unflatten(
            -1, self.x_shape
        )
        return torch.where(x == HIDDEN, torch.sigmoid(logits), x)

    @torch.no_grad()
    def init_from(self, baseline: "QuadrantBaseline") -> None:
        """Start the generation network from a trained baseline: its weights for the visible
        input, zeros for z, so the CVAE starts from the baseline's prediction."""
        ours = [m for m in self.generation_net if isinstance(m, nn.Linear)]
        theirs = [m for m in baseline.net if isinstance(m, nn.Linear)]
        if [m.weight.shape[0] for m in ours] != [m.weight.shape[0] for m in theirs]:
            raise ConfigError(
                "init_from needs a baseline with the same hidden sizes as the generation network"
            )
        for i, (a, b) in enumerate(zip(ours, theirs)):
            if i == 0:
                a.weight[:, : self.latent_dim].zero_()
                a.weight[:, self.latent_dim :].copy_(b.weight)
            else:
                a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise ConfigError("quadrant_cvae predicts completions of visible inputs: use complete(x, num)")


@register_model("quadrant_baseline")
class QuadrantBaseline(_QuadrantTask):
    """p(y | x) = Bernoulli(sigmoid(f(x))) over the hidden pixels: one deterministic network,
    no latent variable (Sohn et al. 2015, sec. 4, "NN baseline")."""

    latent_sites = ()

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int | Sequence[int] = (),
        *,
        quadrants: int = 1,
        hidden: Sequence[int] = (500, 500),
        activation: str = "relu",
    ):
        super().__init__(x_shape, (), quadrants)
        d = math.prod(self.x_shape)
        self.net = mlp([d, *hidden, d], activation)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        with pyro.plate(DATA_PLATE, x.shape[0]):
            logits = self.net(x.flatten(1)).unflatten(-1, self.x_shape)
            pyro.sample(OBSERVED, self._likelihood(logits, x), obs=y)

    @torch.no_grad()
    def complete(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x == HIDDEN, torch.sigmoid(self.net(x.flatten(1)).unflatten(-1, self.x_shape)), x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise ConfigError("quadrant_baseline is deterministic: use complete(x)")
