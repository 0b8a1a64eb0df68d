"""Likelihoods for 8-bit images: the discretized logistic, its mixture, and a 256-way categorical.

Pixels take the values k / 255, k = 0..255 (``pixels = "8bit"``). Each bin of half-width
h = 1 / 510 gets the mass of a logistic between its edges, and the edge bins take the tails
(Salimans et al. 2017, PixelCNN++, sec. 2.1, eq. 2):

    P(k) = sigma((x + h - mu) / s) - sigma((x - h - mu) / s),   0 < k < 255,
    P(0) = sigma((h - mu) / s),   P(255) = 1 - sigma((1 - h - mu) / s),

so the masses of the 256 bins telescope to exactly 1 for any mu and s. The difference of
sigmoids is computed in log space: sigma(a) - sigma(b) = sigma(a) sigma(-b) (1 - e^{b - a}),
stable for tiny and huge scales alike.
"""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution, constraints
from torch.nn import functional as F

LEVELS = 256  #: grey levels of an 8-bit subpixel


def bin_log_prob(x: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, levels: int = LEVELS):
    """log P(bin of x) under a logistic(loc, exp(log_scale)) discretized to ``levels`` bins on
    [0, 1], elementwise (PixelCNN++ eq. 2; see the module docstring)."""
    half = 0.5 / (levels - 1)
    inv = torch.exp(-log_scale)
    a = (x + half - loc) * inv
    b = (x - half - loc) * inv
    inner = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(-2 * half * inv))
    return torch.where(x < half, F.logsigmoid(a), torch.where(x > 1 - half, F.logsigmoid(-b), inner))


def quantize(y: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """The bin value k / (levels - 1) nearest to ``y`` clipped to [0, 1]."""
    return torch.round(y.clamp(0, 1) * (levels - 1)) / (levels - 1)


def _logistic(loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    u = torch.rand_like(loc).clamp(1e-6, 1 - 1e-6)
    return loc + log_scale.exp() * (torch.log(u) - torch.log1p(-u))


class DiscretizedLogistic(TorchDistribution):
    """Independent discretized logistics, one per subpixel: ``loc`` and ``log_scale`` of
    shape batch + (C, H, W); the event is the whole image."""

    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}
    support = constraints.unit_interval

    def __init__(self, loc, log_scale, event_dim: int = 3, validate_args=None):
        self.loc, self.log_scale = torch.broadcast_tensors(loc, log_scale)
        shape = self.loc.shape
        super().__init__(shape[: len(shape) - event_dim], shape[len(shape) - event_dim :], validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        dims = tuple(range(-len(self.event_shape), 0))
        return bin_log_prob(value, self.loc, self.log_scale).sum(dims)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            return quantize(_logistic(self.loc.expand(shape), self.log_scale.expand(shape)))

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.clamp(0, 1)


class DiscretizedLogisticMixture(TorchDistribution):
    """A mixture of ``M`` discretized logistics per pixel, shared by its channels
    (PixelCNN++ eq. 2, without the autoregressive channel coefficients): ``logits`` of shape
    batch + (M, H, W), ``loc`` and ``log_scale`` batch + (M, C, H, W);
    log p(x_ij) = logsumexp_m [log pi_m + sum_c log P(x_cij; mu_mcij, s_mcij)]."""

    arg_constraints = {"logits": constraints.real, "loc": constraints.real, "log_scale": constraints.real}
    support = constraints.unit_interval

    def __init__(self, logits, loc, log_scale, validate_args=None):
        self.logits, self.loc, self.log_scale = logits, loc, log_scale
        super().__init__(loc.shape[:-4], loc.shape[-3:], validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        per_component = bin_log_prob(value.unsqueeze(-4), self.loc, self.log_scale).sum(-3)
        pixel = torch.logsumexp(per_component + F.log_softmax(self.logits, -3), -3)
        return pixel.sum((-2, -1))

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            logits = self.logits.expand(*shape[:-3], *self.logits.shape[-3:])
            pick = torch.distributions.Categorical(logits=logits.movedim(-3, -1)).sample()  # batch + (H, W)
            index = pick[..., None, None, :, :].expand(*shape[:-3], 1, shape[-3], *shape[-2:])
            full = (*shape[:-3], *self.loc.shape[-4:])
            loc = self.loc.expand(full).gather(-4, index).squeeze(-4)
            log_scale = self.log_scale.expand(full).gather(-4, index).squeeze(-4)
            return quantize(_logistic(loc, log_scale))

    @property
    def mean(self) -> torch.Tensor:
        """sum_m pi_m clip(mu_m), close to the mean of the discretized mixture: an image to show."""
        weights = F.softmax(self.logits, -3).unsqueeze(-3)
        return (weights * self.loc.clamp(0, 1)).sum(-4)


class Categorical256(TorchDistribution):
    """A free 256-way categorical per subpixel (van den Oord et al. 2016, PixelRNN, sec. 3.1):
    ``logits`` of shape batch + (C, 256, H, W); log P(x) = sum over subpixels of
    l_k - logsumexp(l), k = 255 x."""

    arg_constraints = {"logits": constraints.real}
    support = constraints.unit_interval

    def __init__(self, logits, validate_args=None):
        self.logits = logits
        c, _, h, w = logits.shape[-4:]
        super().__init__(logits.shape[:-4], torch.Size((c, h, w)), validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        k = torch.round(value * (LEVELS - 1)).long().unsqueeze(-3)
        shape = torch.broadcast_shapes(k.shape, (*self.logits.shape[:-3], 1, *self.logits.shape[-2:]))
        logits = self.logits.expand(*shape[:-3], LEVELS, *shape[-2:])
        picked = logits.gather(-3, k.expand(shape)).squeeze(-3)
        return (picked - torch.logsumexp(self.logits, -3)).sum((-3, -2, -1))

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            logits = self.logits.expand(*sample_shape, *self.logits.shape)
            k = torch.distributions.Categorical(logits=logits.movedim(-3, -1)).sample()
            return k.to(self.logits.dtype) / (LEVELS - 1)

    @property
    def mean(self) -> torch.Tensor:
        levels = torch.arange(LEVELS, dtype=self.logits.dtype, device=self.logits.device) / (LEVELS - 1)
        return (F.softmax(self.logits, -3) * levels[:, None, None]).sum(-3)
