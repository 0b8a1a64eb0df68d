"""The deep Markov model (Krishnan et al. 2017) over binary sequences such as piano rolls."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.blocks.sequence import Emitter, GatedTransition, SequenceModel
from pyrovae.registry import register_model
from pyrovae.sites import DATA_PLATE, step_site


@register_model("dmm")
class DMM(SequenceModel):
    """z_t ~ N(loc(z_{t-1}), diag scale(z_{t-1})^2) by the gated transition from a learned z_0,
    x_t ~ Bernoulli(sigmoid(emitter(z_t))) over ``x_dim`` keys, for the steps each sequence has
    (Krishnan et al. 2017, eq. 1 and sec. 5.1): ``model(x, mask)`` with x (N, T, D), mask (N, T)
    a prefix; a step past a sequence's end is masked out of both its sites. ``x_shape`` (T, D),
    given by configs from the data, sets ``x_dim`` = D."""

    def __init__(
        self,
        x_dim: int = 88,
        z_dim: int = 100,
        emission_dim: int = 100,
        transition_dim: int = 200,
        x_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        x_dim = x_dim if x_shape is None else x_shape[-1]
        self.x_dim, self.z_dim, self.latent_dim = x_dim, z_dim, z_dim
        self.emitter = Emitter(x_dim, z_dim, emission_dim)
        self.transition = GatedTransition(z_dim, transition_dim)
        self.z_0 = nn.Parameter(torch.zeros(z_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = self.z_0.expand(x.shape[0], self.z_dim)
            for t in pyro.markov(range(x.shape[1])):
                loc, scale = self.transition(z)
                z = pyro.sample(step_site("z", t + 1), dist.Normal(loc, scale).to_event(1).mask(mask[:, t]))
                logits = self.emitter(z)
                pyro.sample(
                    step_site("x", t + 1),
                    dist.Bernoulli(logits=logits).to_event(1).mask(mask[:, t]),
                    obs=x[:, t],
                )
