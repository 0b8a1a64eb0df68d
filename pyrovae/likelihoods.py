"""Observation models p(x | z) for images, built from a decoder's raw output."""

from __future__ import annotations

import math
from typing import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from .errors import ConfigError, DataError, unknown_name

LIKELIHOODS = ("bernoulli", "gaussian", "continuous_bernoulli")


class BernoulliLogits(dist.Bernoulli):
    """Bernoulli(sigmoid(l)) whose log-density is written as log p(x) = x l - softplus(l),
    the same function as ``Bernoulli.log_prob`` (log sigmoid(l) = l - softplus(l),
    log (1 - sigmoid(l)) = -softplus(l)) in two elementwise passes instead of the
    broadcast copies and several passes of ``binary_cross_entropy_with_logits``."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return value * self.logits - torch.nn.functional.softplus(self.logits)


class BernoulliImage(dist.Independent):
    """``BernoulliLogits(l).to_event(d)`` whose log-density sums the two terms separately:
    log p(x) = sum_i x_i l_i - sum_i softplus(l_i), the same number as the sum of
    :meth:`BernoulliLogits.log_prob` over the event dims, with one fewer full-size temporary
    and pass over the pixels of each particle."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits = self.base_dist.logits
        dims = tuple(range(-self.reinterpreted_batch_ndims, 0))
        return (value * logits).sum(dims) - torch.nn.functional.softplus(logits).sum(dims)


class Likelihood(nn.Module):
    """Maps decoder outputs ("logits" of shape batch + x_shape) to a distribution over x.

    - ``bernoulli``: x_i ~ Bernoulli(sigmoid(logit_i)); binary pixels only.
    - ``gaussian``: x_i ~ N(sigmoid(logit_i), sigma^2) with sigma fixed, or learned per
      pixel (``sigma = "learned"``, initialised at ``sigma_init``).
    - ``continuous_bernoulli``: x_i ~ CB(sigmoid(logit_i)) on [0, 1], the normalized
      Bernoulli of Loaiza-Ganem & Cunningham (2019), eq. 3, for grey-scale pixels.
    """

    def __init__(self, name: str, x_shape: Sequence[int], sigma: float | str = 0.1, sigma_init: float = 0.1):
        super().__init__()
        if name not in LIKELIHOODS:
            raise unknown_name("likelihood", name, LIKELIHOODS)
        self.name, self.event_dim = name, len(x_shape)
        self.log_sigma = None
        if name == "gaussian":
            if sigma == "learned":
                self.log_sigma = nn.Parameter(torch.full(tuple(x_shape), math.log(sigma_init)))
            elif isinstance(sigma, (int, float)) and sigma > 0:
                self.register_buffer("fixed_sigma", torch.tensor(float(sigma)))
            else:
                raise ConfigError(f'gaussian sigma must be a positive number or "learned", got {sigma!r}')

    def forward(self, logits: torch.Tensor) -> dist.Distribution:
        if self.name == "bernoulli":
            return BernoulliImage(BernoulliLogits(logits=logits), self.event_dim)
        if self.name == "continuous_bernoulli":
            d = dist.ContinuousBernoulli(logits=logits)
        else:
            sigma = self.log_sigma.exp() if self.log_sigma is not None else self.fixed_sigma
            d = dist.Normal(torch.sigmoid(logits), sigma.expand_as(logits))
        return d.to_event(self.event_dim)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """E[x | z], the image to show for a decoded z."""
        if self.name == "continuous_bernoulli":
            return dist.ContinuousBernoulli(logits=logits).mean
        return torch.sigmoid(logits)

    def check_data(self, x: torch.Tensor) -> None:
        """Raise a DataError when ``x`` lies outside this likelihood's support."""
        if not torch.isfinite(x).all():
            raise DataError("data contains NaN or inf; clean the data before training")
        if self.name == "bernoulli" and not ((x == 0) | (x == 1)).all():
            raise DataError(
                "the bernoulli likelihood needs binary pixels (0 or 1); use "
                'pixels = "dynamic" or "static", or likelihood = "continuous_bernoulli" '
                'or "gaussian" for grey-scale pixels in [0, 1]'
            )
        if self.name == "continuous_bernoulli" and ((x < 0) | (x > 1)).any():
            raise DataError(
                "the continuous_bernoulli likelihood needs pixels in [0, 1]; rescale the "
                'data, or use likelihood = "gaussian" for unbounded values'
            )
