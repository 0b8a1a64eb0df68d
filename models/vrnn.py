"""The variational recurrent neural network (Chung et al. 2015) over binary sequences."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.blocks.nn import gaussian_head
from pyrovae.blocks.sequence import SequenceModel
from pyrovae.registry import register_model
from pyrovae.sites import DATA_PLATE, step_site


@register_model("vrnn")
class VRNN(SequenceModel):
    """h_t = GRU([phi_x(x_t), phi_z(z_t)], h_{t-1}); z_t ~ N(prior(h_{t-1})), x_t ~
    Bernoulli(sigmoid(dec([phi_z(z_t), h_{t-1}]))) (Chung et al. 2015, eqs. 5-7), for the steps
    each sequence has: ``model(x, mask)`` with x (N, T, D) and mask (N, T) a prefix. The
    recurrence reads the draws z_{<t}, so the guide (:class:`pyrovae.guides.vrnn.VRNNGuide`) runs
    the same feature networks and GRU over its own draws: :meth:`features` and :meth:`advance`
    are what both share. ``x_shape`` (T, D), given by configs from the data, sets ``x_dim`` = D."""

    def __init__(
        self,
        x_dim: int = 88,
        z_dim: int = 16,
        hidden: int = 64,
        rnn_dim: int = 128,
        x_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        x_dim = x_dim if x_shape is None else x_shape[-1]
        self.x_dim, self.z_dim, self.hidden, self.rnn_dim = x_dim, z_dim, hidden, rnn_dim
        self.latent_dim = z_dim
        self.phi_x = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU())
        self.phi_z = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU())
        self.prior = nn.Sequential(nn.Linear(rnn_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))
        self.decoder = nn.Sequential(nn.Linear(hidden + rnn_dim, hidden), nn.ReLU(), nn.Linear(hidden, x_dim))
        self.cell = nn.GRUCell(2 * hidden, rnn_dim)
        self.h_0 = nn.Parameter(torch.zeros(rnn_dim))

    def start(self, n: int) -> torch.Tensor:
        return self.h_0.expand(n, self.rnn_dim)

    def advance(
        self, fx: torch.Tensor, fz: torch.Tensor, h: torch.Tensor, step: torch.Tensor
    ) -> torch.Tensor:
        """h_t from the features of x_t and z_t (any leading particle dims); a sequence past
        its end (``step`` False) keeps its state."""
        shape = torch.broadcast_shapes(fz.shape[:-1], h.shape[:-1])
        inputs = torch.cat([fx.expand(*shape, -1), fz.expand(*shape, -1)], -1)
        new = self.cell(inputs.reshape(-1, inputs.shape[-1]), h.expand(*shape, -1).reshape(-1, h.shape[-1]))
        return torch.where(step[:, None], new.reshape(*shape, -1), h)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        fx = self.phi_x(x)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            h = self.start(x.shape[0])
            for t in pyro.markov(range(x.shape[1])):
                loc, scale = gaussian_head(self.prior(h), self.z_dim)
                z = pyro.sample(step_site("z", t + 1), dist.Normal(loc, scale).to_event(1).mask(mask[:, t]))
                fz = self.phi_z(z)
                logits = self.decoder(torch.cat([fz, h.expand(*fz.shape[:-1], -1)], -1))
                pyro.sample(
                    step_site("x", t + 1),
                    dist.Bernoulli(logits=logits).to_event(1).mask(mask[:, t]),
                    obs=x[:, t],
                )
                h = self.advance(fx[:, t], fz, h, mask[:, t])

    @torch.no_grad()
    def sample(self, num: int, steps: int) -> torch.Tensor:
        """``num`` sequences of ``steps`` steps from the model, each step's keys drawn and fed back
        into the recurrence (as the model reads its past steps); returns p(x_t | z_t, h_{t-1})'s
        means (num, steps, x_dim)."""
        h, out = self.start(num), []
        every = torch.ones(num, dtype=torch.bool, device=h.device)
        for _ in range(steps):
            loc, scale = gaussian_head(self.prior(h), self.z_dim)
            fz = self.phi_z(loc + scale * torch.randn_like(loc))
            probs = torch.sigmoid(self.decoder(torch.cat([fz, h], -1)))
            out.append(probs)
            h = self.advance(self.phi_x(torch.bernoulli(probs)), fz, h, every)
        return torch.stack(out, 1)
