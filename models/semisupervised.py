"""The semi-supervised VAE (M2) of Kingma et al. (2014): a class that is observed for the
labelled images and summed out for the others."""

from __future__ import annotations

import math
from typing import Sequence

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch import nn
from torch.nn import functional as F

from pyrovae.blocks.base import ImageModel
from pyrovae.blocks.likelihoods import Likelihood
from pyrovae.blocks.nn import cat_broadcast, mlp
from pyrovae.errors import ConfigError, DataError
from pyrovae.hooks import Takes
from pyrovae.registry import register_model
from pyrovae.sites import DATA_PLATE, LABEL, LATENT, OBSERVED

OBSERVED_LABEL = "y_label"  #: the observed site of the labelled datapoints' class
UNLABELLED = -1  #: the label of an unlabelled datapoint


def partial_labels(labels: torch.Tensor | None, n: int, classes: int, device) -> torch.Tensor:
    """Integer labels with -1 for the unlabelled datapoints (all of them when ``labels`` is None)."""
    if labels is None:
        return torch.full((n,), UNLABELLED, dtype=torch.long, device=device)
    labels = labels.long()
    if labels.shape != (n,) or (labels < UNLABELLED).any() or (labels >= classes).any():
        raise DataError(
            f"a semi-supervised model needs one label per datapoint in [0, {classes}) or -1 for "
            f"unlabelled, got labels of shape {tuple(labels.shape)} in [{labels.min()}, {labels.max()}]"
        )
    return labels


@register_model("ss_vae")
class SemiSupervisedVAE(ImageModel):
    """M2 (Kingma et al. 2014, sec. 3.1.2, eq. 2): y ~ Cat(1/C), z ~ N(0, I),
    x ~ p(x | decoder(z, y)). The label is observed where given (site ``y_label``) and a latent
    site ``y`` elsewhere, which the guide ``ss_mlp`` marks for enumeration: objective ``"enum"``
    sums it out (ibid., eq. 7). ``latent_dim`` is (C classes, d); decoder an MLP on [z, y].
    """

    latent_sites = (LABEL, LATENT)  #: latent_dim = (C classes, d)
    takes = Takes.IMAGE_PARTIAL_LABEL
    label_site = LABEL  #: the discrete site whose q(y | x) classifies (evaluate reports its error)

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: Sequence[int] = (10, 50),
        *,
        hidden: Sequence[int] = (500,),
        activation: str = "softplus",
        likelihood: str = "bernoulli",
        sigma: float | str = 0.1,
        components: int = 5,
    ):
        super().__init__(x_shape, latent_dim)
        self.num_classes, self.z_dim = self.latent_dim
        if self.num_classes < 2:
            raise ConfigError(f"ss_vae needs at least 2 classes, got latent_dim {self.latent_dim}")
        self.register_buffer("logits", torch.zeros(self.num_classes))
        self.likelihood = Likelihood(likelihood, self.x_shape, sigma, components=components)
        self.net = nn.Sequential(
            mlp([self.z_dim + self.num_classes, *hidden, math.prod(self.likelihood.param_shape)], activation),
            nn.Unflatten(-1, self.likelihood.param_shape),
        )

    def inputs(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple:
        """(x, labels with -1 where unlabelled); no labels: every datapoint unlabelled."""
        return images, partial_labels(labels, images.shape[0], self.num_classes, images.device)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        n, labelled = x.shape[0], y >= 0
        known = y.clamp(min=0)
        with pyro.plate(DATA_PLATE, n):
            prior = dist.Categorical(logits=self.logits.expand(n, -1))
            with poutine.mask(mask=labelled):
                pyro.sample(OBSERVED_LABEL, prior, obs=known)
            with poutine.mask(mask=~labelled):
                guess = pyro.sample(LABEL, prior)
            code = F.one_hot(torch.where(labelled, known, guess), self.num_classes).to(x)
            z = pyro.sample(LATENT, dist.Normal(x.new_zeros(n, self.z_dim), 1.0).to_event(1))
            pyro.sample(OBSERVED, self.likelihood(self.net(cat_broadcast(z, code))), obs=x)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | z, y] for one-hot classes ``y`` (broadcast against z)."""
        if y is None:
            raise ConfigError(
                "ss_vae decodes z for a chosen class: pass y (one-hot) or sample(num, condition=c)"
            )
        return self.likelihood.mean(self.net(cat_broadcast(z, y.to(z))))

    def sample_prior(self, num: int) -> torch.Tensor:
        return torch.randn(num, self.z_dim, device=self.logits.device)

    @torch.no_grad()
    def sample(self, num: int, condition: int | None = None) -> torch.Tensor:
        """``num`` images of class ``condition`` (random classes when None)."""
        c = (
            torch.randint(self.num_classes, (num,), device=self.logits.device)
            if condition is None
            else torch.full((num,), int(condition), device=self.logits.device)
        )
        return self.decode(self.sample_prior(num), F.one_hot(c, self.num_classes))
