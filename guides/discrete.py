"""Guides with a discrete latent q(c | x) marked for enumeration, and q(z | x, c)."""

from __future__ import annotations

import math
from typing import Sequence

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch import nn
from torch.nn import functional as F

from pyrovae.blocks.base import ImageModule
from pyrovae.blocks.flows import PosteriorFlow
from pyrovae.blocks.nn import CodeConditioned, activation, mlp
from pyrovae.errors import ConfigError
from pyrovae.hooks import Takes
from pyrovae.inference.enumeration import ENUMERATE
from pyrovae.registry import register_guide
from pyrovae.sites import CLUSTER, DATA_PLATE, LABEL, LATENT


class _DiscreteThenGaussian(ImageModule):
    """q(c | x) = Cat(softmax(f(x))) and q(z | x, c) = N(mu(x, c), diag sigma(x, c)^2), the
    second an MLP on [g(x), one-hot c] (Kingma et al. 2014, eq. 4 and 5), optionally moved by a
    flow conditioned on the same MLP (:class:`pyrovae.blocks.flows.PosteriorFlow`)."""

    discrete_site = CLUSTER

    def __init__(self, x_shape, latent_dim, hidden, act, min_scale, enumerated, shared, flow):
        super().__init__(x_shape, latent_dim)
        (self.classes, self.z_dim), d = self.latent_dim, math.prod(self.x_shape)
        self.min_scale, self.infer = min_scale, ENUMERATE if enumerated else {}
        self.head = PosteriorFlow(self.z_dim, *flow, min_scale=min_scale)
        if shared:  # one trunk g(x) = f's hidden layers feeds both heads
            self.trunk = nn.Sequential(nn.Flatten(), mlp([d, *hidden], act), activation(act))
            self.classifier = nn.Linear(hidden[-1], self.classes)
            self.encoder = CodeConditioned(hidden[-1], self.classes, [hidden[-1], self.head.features], act)
        else:  # two networks on x (the classifier of M2 is its own MLP)
            self.trunk = nn.Flatten()
            self.classifier = mlp([d, *hidden, self.classes], act)
            self.encoder = CodeConditioned(d, self.classes, [*hidden, self.head.features], act)

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of q(c | x), shape (N, C)."""
        return self.classifier(self.trunk(x))

    def _sample(self, x: torch.Tensor, known: torch.Tensor | None = None) -> None:
        """c ~ q(c | x) (masked out where ``known`` holds a label >= 0, which z then uses),
        z ~ q(z | x, c)."""
        h = self.trunk(x)
        logits = self.classifier(h)
        missing = None if known is None else known < 0
        with pyro.plate(DATA_PLATE, x.shape[0]):
            with poutine.mask(mask=missing) if missing is not None else poutine.mask(mask=True):
                c = pyro.sample(self.discrete_site, dist.Categorical(logits=logits), infer=dict(self.infer))
            if known is not None:
                c = torch.where(missing, c, known.clamp(min=0))
            pyro.sample(LATENT, self.head(self.encoder(h, F.one_hot(c, self.classes).to(h))))


@register_guide("mixture")
class MixtureGuide(_DiscreteThenGaussian):
    """q(c | x) q(z | x, c) for models with a cluster c and a code z (``gmvae``, ``mfa``): a
    shared MLP trunk (``hidden``), a linear classifier head, and an MLP on [trunk, one-hot c]
    for z. c is marked for enumeration unless ``enumerated = false`` (then sampled); ``flow``,
    ``flow_depth``, ``flow_hidden``, ``flow_context``: a flow on q(z | x, c) (:mod:`pyrovae.blocks.flows`)."""

    latent_sites = (CLUSTER, LATENT)

    def __init__(self, x_shape: Sequence[int], latent_dim: Sequence[int], *,
                 hidden: Sequence[int] = (500, 500), activation: str = "relu", min_scale: float = 1e-4,
                 enumerated: bool = True, flow: str = "none", flow_depth: int = 2,
                 flow_hidden: Sequence[int] = (320, 320), flow_context: int = 32):  # fmt: skip
        flows = (flow, flow_depth, flow_hidden, flow_context)
        super().__init__(x_shape, latent_dim, hidden, activation, min_scale, enumerated, True, flows)

    def forward(self, x: torch.Tensor) -> None:
        self._sample(x)


@register_guide("ss_mlp")
class SemiSupervisedGuide(_DiscreteThenGaussian):
    """The guide of M2 (Kingma et al. 2014, eq. 4 and 5): a classifier q(y | x) (an MLP,
    ``hidden``) for the unlabelled datapoints, y marked for enumeration, and q(z | x, y), an
    MLP on [x, one-hot y] with y the label where given. The classifier also gets the
    auxiliary loss alpha E[-log q(y | x)] on the labelled data (ibid., eq. 9): ``alpha`` is
    the paper's 0.1 N per training datapoint, spread over the labelled ones; or, where
    ``aux_weight`` is set, that weight on each labelled image's -log q(y | x) each time it is
    seen (the ``aux_loss_multiplier`` of Pyro's ss-vae example, 46 there). ``flow``, ``flow_depth``,
    ``flow_hidden``, ``flow_context``: a flow on q(z | x, y) (:mod:`pyrovae.blocks.flows`)."""

    latent_sites = (LABEL, LATENT)
    takes = Takes.IMAGE_PARTIAL_LABEL
    discrete_site = LABEL

    def __init__(self, x_shape: Sequence[int], latent_dim: Sequence[int], *, hidden: Sequence[int] = (500,),
                 activation: str = "softplus", min_scale: float = 1e-4, enumerated: bool = True,
                 alpha: float = 0.1, aux_weight: float | None = None, flow: str = "none", flow_depth: int = 2,
                 flow_hidden: Sequence[int] = (320, 320), flow_context: int = 32):  # fmt: skip
        flows = (flow, flow_depth, flow_hidden, flow_context)
        super().__init__(x_shape, latent_dim, hidden, activation, min_scale, enumerated, False, flows)
        if aux_weight is not None and not aux_weight >= 0:
            raise ConfigError(f"guide.aux_weight must be null or a number >= 0, got {aux_weight}")
        self.alpha, self.aux_weight = alpha, aux_weight
        self.register_buffer("labelled_fraction", torch.ones(()))

    def attach_data(self, labels: torch.Tensor) -> None:
        """Record the share of labelled training datapoints (it scales the auxiliary loss)."""
        self.labelled_fraction.fill_(max((labels >= 0).float().mean().item(), 1e-12))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._sample(x, y)

    def auxiliary_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """w sum over the labelled datapoints of -log q(y | x), w = ``aux_weight`` or
        alpha / labelled share: with each label seen once an epoch, alpha times the mean over the
        labelled data per datapoint of the whole set, the paper's alpha = 0.1 N of eq. 9."""
        labelled = y >= 0
        nll = F.cross_entropy(self.class_logits(x), y.clamp(min=0), reduction="none")
        weight = self.alpha / self.labelled_fraction if self.aux_weight is None else self.aux_weight
        return weight * (nll * labelled).sum()
