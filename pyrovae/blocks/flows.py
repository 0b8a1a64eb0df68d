"""Flow posteriors: the distribution head of an amortized guide.

An encoder's output h(x) is split into the mean and scale of a diagonal Gaussian and, for a
flow, a context vector c(x); the Gaussian draw z_0 is then moved by ``depth`` transforms
conditioned on c(x), with the exact density

    log q(z_T | x) = log N(z_0; mu(x), diag sigma(x)^2) - sum_t log |det dz_t / dz_{t-1}|

(Rezende & Mohamed 2015, eq. 5). Two families, both invertible in closed form, so that
log q(z | x) is available at any z (AIS from the guide, BDMC and refined proposals evaluate it
at values the guide did not draw):

- ``"iaf"``: inverse autoregressive flow (Kingma et al. 2016, sec. 4 and Algorithm 1), Pyro's
  conditional affine autoregressive transform on a MADE network (Germain et al. 2015) that sees
  [c(x), z_{t-1}]: affine, z_t = exp(l_t) z_{t-1} + m_t (their eq. 10), or with ``gated`` their
  eq. 14, z_t = s_t z_{t-1} + (1 - s_t) m_t, s_t = sigmoid(.); the variable order reversed between
  transforms. Affine is the default: on the default VAE it led the gated form by 0.44 nats of
  log p(x) after 5 epochs (``benchmarks/iaf_peer.py``, docs/guide/flows.md). Drawing and scoring a
  draw take one pass per transform; scoring another value inverts each transform in
  ``latent_dim`` passes.
- ``"householder"``: the Householder flow (Tomczak & Welling 2016, sec. 3), ``depth``
  reflections z_t = (I - 2 v_t v_t^T / |v_t|^2) z_{t-1} with v_t from c(x) (Pyro's conditional
  Householder transform): volume-preserving, so q is the full-covariance Gaussian
  N(U mu, U diag sigma^2 U^T) with U orthogonal; every direction is cheap.
"""

from __future__ import annotations

from typing import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive, Permute, conditional_householder
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from pyrovae.blocks.nn import gaussian_head, off_meta
from pyrovae.errors import ConfigError, unknown_name

FLOWS = ("none", "iaf", "householder")  #: the posterior families a guide's ``flow`` option names
ORDERS = ("random", "sequential")  #: the variable order inside each IAF network (MADE's degrees)


class PosteriorFlow(nn.Module):
    """q(z | x) from encoder features h(x): N(mu, diag sigma^2) (``flow = "none"``), or that
    Gaussian moved by ``depth`` transforms of ``flow`` conditioned on a ``context``-sized part of
    h(x) (see the module docstring); ``hidden``: the layers of each transform's network.
    ``features`` is the width the encoder must output."""

    def __init__(
        self,
        latent_dim: int,
        flow: str = "none",
        depth: int = 2,
        hidden: Sequence[int] = (320, 320),
        context: int = 32,
        min_scale: float = 1e-4,
        *,
        gated: bool = False,
        order: str = "random",
    ):
        super().__init__()
        if flow not in FLOWS:
            raise unknown_name("guide flow", flow, FLOWS)
        if order not in ORDERS:
            raise unknown_name("guide flow_order", order, ORDERS)
        if not isinstance(gated, bool):
            raise ConfigError(f"guide.flow_gated must be true or false, got {gated!r}")
        self.flow, self.latent_dim, self.min_scale = flow, latent_dim, min_scale
        self.context = 0 if flow == "none" else context
        if flow != "none":
            least_context = int(flow != "iaf")  # an IAF may see z alone; a Householder flow needs x
            for name, value, least in (("flow_depth", depth, 1), ("flow_context", context, least_context)):
                if not isinstance(value, int) or isinstance(value, bool) or value < least:
                    raise ConfigError(f"guide.{name} must be an integer >= {least}, got {value!r}")
            if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
                raise ConfigError(f"guide.flow_hidden must be a list of positive integers, got {hidden!r}")
        self.transforms = nn.ModuleList()
        self.gated = gated and flow == "iaf"
        if flow == "iaf":
            for _ in range(depth):
                self.transforms.append(iaf(latent_dim, context, list(hidden), gated, order))
            self.register_buffer("gate", torch.tensor(float(gated)))  # in checkpoints: which form
        elif flow == "householder":
            self.transforms.append(
                off_meta(
                    lambda: conditional_householder(latent_dim, context, list(hidden), count_transforms=depth)
                )
            )
        self.register_buffer("order", torch.arange(latent_dim - 1, -1, -1), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """An IAF checkpoint states its form (``gate``); one written before it did is gated, the
        only form there was. A form other than this flow's is refused by name."""
        key = prefix + "gate"
        if self.flow == "iaf":
            stored = bool(state_dict.get(key, torch.ones(())))
            if stored != self.gated:
                raise ConfigError(
                    f"this checkpoint's IAF is {'gated' if stored else 'affine'} and this guide's "
                    f"{'gated' if self.gated else 'affine'}: set guide.flow_gated = {str(stored).lower()}"
                )
            state_dict.setdefault(key, torch.tensor(float(stored)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def features(self) -> int:
        """The encoder outputs this head reads: 2 * latent_dim, plus the context for a flow."""
        return 2 * self.latent_dim + self.context

    def base(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, sigma) of the Gaussian the flow starts from (q itself for ``flow = "none"``)."""
        return gaussian_head(h[..., : 2 * self.latent_dim], self.latent_dim, self.min_scale)

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        """q(z | x) with batch shape h.shape[:-1] and event shape (latent_dim,)."""
        loc, scale = self.base(h)
        gaussian = dist.Normal(loc, scale).to_event(1)
        if self.flow == "none":
            return gaussian
        context = h[..., 2 * self.latent_dim :]
        steps = []
        for i, t in enumerate(self.transforms):
            if i:
                steps.append(Permute(self.order))
            steps.append(t.condition(context))
        return dist.TransformedDistribution(gaussian, steps)


def iaf(latent_dim: int, context: int, hidden: list[int], gated: bool, order: str):
    """One IAF transform on a MADE network (Germain et al. 2015) over ``latent_dim`` variables in
    ``order``, seeing ``context`` further inputs (0: an empty context, the network sees z alone):
    gated, z' = s z + (1 - s) m with s = sigmoid(.) (Kingma et al. 2016, eq. 14, Pyro's
    ``stable``), or affine, z' = exp(l) z + m (their eq. 10, the log-scale l clipped to [-5, 3])."""
    perm = torch.arange(latent_dim) if order == "sequential" else None
    arn = off_meta(lambda: ConditionalAutoRegressiveNN(latent_dim, context, hidden, permutation=perm))
    return ConditionalAffineAutoregressive(arn, stable=gated)
