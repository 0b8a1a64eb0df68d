"""Vector quantisation (van den Oord et al. 2017): the nearest of K code vectors, the
straight-through gradient, the codebook and commitment losses (eq. 3), or a codebook updated
by exponential moving averages (appendix A.1), restarts of dead codes, and how much of the
codebook a batch uses (perplexity)."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from pyrovae.errors import ConfigError


class VectorQuantizer(nn.Module):
    """A codebook of ``num_codes`` vectors of size ``dim``. With ``ema`` the codebook is not a
    parameter but the moving averages of the encoder outputs assigned to each code (decay
    ``decay``, Laplace smoothing ``eps``); ``beta`` weighs the commitment loss (paper: 0.25);
    ``restart_every`` > 0 moves the codes unused over that many training steps to encoder outputs
    (the VQ objective, :mod:`pyrovae.training.quantized`, does it)."""

    def __init__(self, num_codes: int, dim: int, *, beta: float = 0.25, ema: bool = False,
                 decay: float = 0.99, eps: float = 1e-5, restart_every: int = 0):  # fmt: skip
        super().__init__()
        if not (isinstance(num_codes, int) and num_codes >= 2 and isinstance(dim, int) and dim >= 1):
            raise ConfigError(f"a codebook needs num_codes >= 2 and dim >= 1, got {num_codes!r} and {dim!r}")
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"the codebook's EMA decay must lie in (0, 1), got {decay!r}")
        if not (isinstance(restart_every, int) and restart_every >= 0):
            raise ConfigError(f"restart_every must be an integer >= 0 (0: never), got {restart_every!r}")
        if not (isinstance(beta, (int, float)) and beta >= 0):
            raise ConfigError(f"the commitment weight must be a number >= 0, got {beta!r}")
        self.num_codes, self.dim, self.beta, self.restart_every = num_codes, dim, float(beta), restart_every
        self._through: list | None = None  # the encodings met inside straight_through_context
        self.ema, self.decay, self.eps = ema, decay, eps
        init = torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if ema:
            self.register_buffer("codebook", init)
            self.register_buffer("cluster_size", torch.zeros(num_codes))
            self.register_buffer("embed_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """The index of the nearest code (squared Euclidean distance) of each vector in the
        last dim of ``z_e`` (..., D): shape (...)."""
        flat = z_e.reshape(-1, self.dim)
        e = self.codebook.detach()
        d2 = flat.detach().pow(2).sum(-1, keepdim=True) - 2 * flat.detach() @ e.T + e.pow(2).sum(-1)
        indices = d2.argmin(-1).reshape(z_e.shape[:-1])
        if self._through is not None:
            self._through.append((z_e, indices))
        return indices

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """The code vectors e_k of ``indices`` (...): shape (..., D); inside
        :meth:`straight_through_context`, z_q in value with the gradient passed to the encoding
        the indices came from."""
        z_q = self.codebook[indices]
        if self._through:
            z_e = self._through[-1][0]
            return self.straight_through(z_e, z_q)
        return z_q

    @contextlib.contextmanager
    def straight_through_context(self):
        """Within it, :meth:`nearest` records each (encoding, indices) pair in the list it yields
        and :meth:`lookup` passes the gradient straight through to the last encoding (van den
        Oord et al. 2017, sec. 3.1): a model that decodes ``lookup(codes)`` of codes a guide chose
        by ``nearest`` trains its encoder through a Pyro trace."""
        self._through = []
        try:
            yield self._through
        finally:
            self._through = None

    @staticmethod
    def straight_through(z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        """z_q in value, with the gradient passed to z_e unchanged (paper, sec. 3.1)."""
        return z_e + (z_q - z_e).detach()

    def losses(self, z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        """Per vector (...): ``||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2`` (paper, eq. 3), the
        first term left out with ``ema`` (the moving averages move the codebook)."""
        commitment = self.beta * (z_e - z_q.detach()).pow(2).sum(-1)
        if self.ema:
            return commitment
        return (z_e.detach() - z_q).pow(2).sum(-1) + commitment

    def usage(self, indices: torch.Tensor) -> torch.Tensor:
        """How many vectors chose each code: shape (K,)."""
        return torch.bincount(indices.reshape(-1), minlength=self.num_codes)

    @torch.no_grad()
    def ema_update(self, z_e: torch.Tensor, indices: torch.Tensor, reduce: Callable | None = None) -> None:
        """One step of the moving averages (paper, appendix A.1, eqs. 6-8): N_k <- g N_k +
        (1 - g) n_k, m_k <- g m_k + (1 - g) sum of the z_e assigned to k, e_k = m_k / N_k with N_k
        smoothed as (N_k + eps) / (N + K eps) N so that no code divides by zero. ``reduce`` sums
        the batch's counts and sums over ranks (in place) under torchrun."""
        if not self.ema:
            raise ConfigError("ema_update needs a codebook built with ema=True")
        flat, idx = z_e.reshape(-1, self.dim).to(self.embed_sum.dtype), indices.reshape(-1)
        counts = self.usage(idx).to(flat.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, flat)
        if reduce is not None:
            reduce(counts)
            reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.num_codes * self.eps) * total
        self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(-1))

    @torch.no_grad()
    def restart(self, z_e: torch.Tensor, counts: torch.Tensor, generator=None) -> torch.Tensor:
        """Codes with no use in ``counts`` (K,) move to randomly drawn encoder outputs of ``z_e``
        (and, with ``ema``, their averages restart there with a count of one); returns the
        restarted codes' indices."""
        flat = z_e.reshape(-1, self.dim)
        dead = (counts == 0).nonzero().squeeze(-1)
        if dead.numel():
            pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator, device=flat.device)
            self.codebook.data[dead] = flat[pick].to(self.codebook.dtype)
            if self.ema:
                self.cluster_size[dead] = 1.0
                self.embed_sum[dead] = flat[pick].to(self.embed_sum.dtype)
        return dead

    @staticmethod
    def perplexity(counts: torch.Tensor) -> torch.Tensor:
        """exp of the entropy of the codes' frequencies ``counts`` (K,) (:meth:`usage`): K when
        every code is used equally, 1 when one code takes every vector."""
        p = counts.double() / counts.sum()
        return torch.exp(-(p * p.clamp_min(1e-30).log()).sum())
