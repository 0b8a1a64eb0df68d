"""The deep Markov model's structured guide: the combiner over a backward RNN (ST-R)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import affine_autoregressive
from torch import nn

from pyrovae.blocks.sequence import BackwardRNN, Combiner
from pyrovae.hooks import Takes
from pyrovae.registry import register_guide
from pyrovae.sites import DATA_PLATE, step_site


@register_guide("combiner")
class CombinerGuide(nn.Module):
    """q(z_{1:T} | x) = prod_t q(z_t | z_{t-1}, x_{t:T}): the combiner of the previous draw and
    the backward RNN's state (Krishnan et al. 2017, sec. 4, ST-R), each step's Gaussian
    optionally pushed through ``num_iafs`` affine autoregressive flows of ``iaf_dim`` hidden
    units (Kingma et al. 2016; the option of Pyro's DMM example). Works for any model with
    sites ``z_1``.. ``z_T`` of ``z_dim`` dimensions over x (N, T, ``x_dim``) and a prefix mask.
    Configs give ``x_shape`` (T, D) and the model's ``latent_dim``, which set ``x_dim`` and ``z_dim``."""

    takes = Takes.SEQUENCE

    def __init__(
        self,
        x_dim: int = 88,
        z_dim: int = 100,
        rnn_dim: int = 600,
        num_iafs: int = 0,
        iaf_dim: int = 100,
        rnn_dropout: float = 0.0,
        x_shape: tuple[int, ...] | None = None,
        latent_dim: int | None = None,
    ):
        super().__init__()
        x_dim = x_dim if x_shape is None else x_shape[-1]
        z_dim = z_dim if latent_dim is None else latent_dim
        self.z_dim = self.latent_dim = z_dim
        self.rnn = BackwardRNN(x_dim, rnn_dim, rnn_dropout)
        self.combiner = Combiner(z_dim, rnn_dim)
        self.z_q_0 = nn.Parameter(torch.zeros(z_dim))
        self.iafs = nn.ModuleList(
            affine_autoregressive(z_dim, hidden_dims=[iaf_dim]) for _ in range(num_iafs)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        h = self.rnn(x, mask.sum(1))
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = self.z_q_0.expand(x.shape[0], self.z_dim)
            for t in pyro.markov(range(x.shape[1])):
                loc, scale = self.combiner(z, h[:, t])
                step = dist.Normal(loc, scale).to_event(1)
                if len(self.iafs):
                    step = dist.TransformedDistribution(step, list(self.iafs))
                z = pyro.sample(step_site("z", t + 1), step.mask(mask[:, t]))
