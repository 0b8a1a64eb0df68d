"""The networks of the deep Markov model (Krishnan et al. 2017): its gated transition, its
emitter, the guide's combiner and the backward RNN that summarises x_{t:T}; and
:class:`SequenceModel`, what the engine reads on a model of sequences."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pyrovae.errors import DataError
from pyrovae.hooks import Takes

MIN_SCALE = 1e-4  #: added to every softplus scale: a scale that underflows to 0 has no density


@dataclass(frozen=True)
class StepLikelihood:
    """The observation model of each step: ``discrete`` when log p(x) is a probability (bits/dim)."""

    discrete: bool


class SequenceModel(nn.Module):
    """The hooks of a model over sequences ``x`` (N, T, ``x_dim``) with a prefix mask (N, T):
    it takes :attr:`~pyrovae.hooks.Takes.SEQUENCE`, and its data check names a wrong feature
    size and, for a Bernoulli per key (``binary``), values other than 0 and 1."""

    takes = Takes.SEQUENCE
    binary = True  #: Bernoulli observations: the data must be 0 / 1
    x_dim: int

    @property
    def likelihood(self) -> StepLikelihood:
        return StepLikelihood(discrete=self.binary)

    def check_data(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if x.dim() != 3 or x.shape[-1] != self.x_dim:
            raise DataError(
                f"{name} takes sequences (N, T, {self.x_dim}), got {tuple(x.shape)}; give a sequence "
                f"dataset, or set the model's x_dim to the data's features"
            )
        if self.binary and ((x != 0) & (x != 1)).any():
            raise DataError(
                f"{name} models binary steps (a Bernoulli per feature); these data hold other values"
            )


class GatedTransition(nn.Module):
    """p(z_t | z_{t-1}) = N(loc, diag scale^2): loc = (1 - g) * W z + g * h, g = sigmoid(MLP(z)),
    h = MLP(z), scale = softplus(W' relu(h)) (Krishnan et al. 2017, sec. 5.1, the gated
    transition function; the identity is the starting W)."""

    def __init__(self, z_dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, z_dim))
        self.proposed = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, z_dim))
        self.linear = nn.Linear(z_dim, z_dim)
        self.scale = nn.Linear(z_dim, z_dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(z_dim))
            self.linear.bias.zero_()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate = torch.sigmoid(self.gate(z))
        proposed = self.proposed(z)
        loc = (1 - gate) * self.linear(z) + gate * proposed
        return loc, F.softplus(self.scale(F.relu(proposed))) + MIN_SCALE


class Emitter(nn.Module):
    """The logits of p(x_t | z_t): two ReLU layers of ``hidden`` units (ibid., sec. 5.1)."""

    def __init__(self, x_dim: int, z_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(z_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, x_dim),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Combiner(nn.Module):
    """q(z_t | z_{t-1}, x_{t:T}) = N(loc, diag scale^2) from h = (tanh(W z_{t-1}) + h_t) / 2,
    h_t the backward RNN's state (ibid., sec. 4, the combiner function of ST-R)."""

    def __init__(self, z_dim: int, rnn_dim: int):
        super().__init__()
        self.z_to_h = nn.Linear(z_dim, rnn_dim)
        self.loc = nn.Linear(rnn_dim, z_dim)
        self.scale = nn.Linear(rnn_dim, z_dim)

    def forward(self, z: torch.Tensor, h_rnn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = 0.5 * (torch.tanh(self.z_to_h(z)) + h_rnn)
        return self.loc(h), F.softplus(self.scale(h)) + MIN_SCALE


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each sequence of (N, T, ...) reversed within its length (steps past it stay last): an
    involution, so it also maps the reversed sequences' outputs back to their steps."""
    steps = torch.arange(x.shape[1], device=x.device)
    index = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


class BackwardRNN(nn.Module):
    """h_t summarising x_{t:T} of each sequence: a ReLU RNN run from its last step back,
    ``(N, T, D) -> (N, T, rnn_dim)`` (the "R" of ST-R; Pyro's DMM example uses the same)."""

    def __init__(self, x_dim: int, rnn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.rnn = nn.RNN(x_dim, rnn_dim, nonlinearity="relu", batch_first=True)
        self.h0 = nn.Parameter(torch.zeros(1, 1, rnn_dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h0 = self.h0.expand(1, x.shape[0], -1).contiguous()
        out, _ = self.rnn(self.dropout(reverse_within(x, lengths)), h0)
        return reverse_within(out, lengths)
