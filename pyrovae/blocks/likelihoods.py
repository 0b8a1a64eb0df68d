"""Observation models p(x | z) for images, built from a decoder's raw output."""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.blocks.discretized import LEVELS, Categorical256, DiscretizedLogistic, DiscretizedLogisticMixture
from pyrovae.errors import ConfigError, DataError, unknown_name

#: the likelihoods p(x | z) a registered model takes by name (``[model] likelihood = ...``)
LIKELIHOODS = (
    "bernoulli",
    "gaussian",
    "continuous_bernoulli",
    "discretized_logistic",
    "discretized_logistic_mixture",
    "categorical",
)
EIGHT_BIT = ("discretized_logistic", "discretized_logistic_mixture", "categorical")  #: need pixels = "8bit"
DISCRETE = ("bernoulli", *EIGHT_BIT)  #: probability masses: log p(x) and bits/dim comparable across models


def pixel_mode_for(likelihood: str) -> str:
    """The pixel mode a likelihood models: ``8bit`` for the 8-bit ones, ``dynamic`` (binarized
    afresh each epoch) for the Bernoulli, ``continuous`` for the densities over grey levels;
    what a config without ``data.pixels`` gets."""
    if likelihood not in LIKELIHOODS:
        raise unknown_name("likelihood", likelihood, LIKELIHOODS)
    return "8bit" if likelihood in EIGHT_BIT else "dynamic" if likelihood == "bernoulli" else "continuous"


MIN_LOG_SCALE = -7.0  #: floor of a discretized logistic's log-scale (PixelCNN++), a bin is 1/255 wide
#: a decoder output of 0 means mid-grey with scale e^-3 (about 13 levels): a starting point from
#: which training reaches bin-sized scales in a few hundred steps, not the thousands s = 1 takes
LOC_OFFSET, LOG_SCALE_OFFSET = 0.5, -3.0


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
    """Maps decoder outputs (of shape batch + ``param_shape``) to a distribution over x.

    - ``bernoulli``: x_i ~ Bernoulli(sigmoid(logit_i)); binary pixels only.
    - ``gaussian``: x_i ~ N(sigmoid(logit_i), sigma^2) with sigma fixed, or learned per
      pixel (``sigma = "learned"``, initialised at ``sigma_init``).
    - ``continuous_bernoulli``: x_i ~ CB(sigmoid(logit_i)) on [0, 1], the normalized
      Bernoulli of Loaiza-Ganem & Cunningham (2019), eq. 3, for grey-scale pixels.
    - ``discretized_logistic``: a logistic per subpixel discretized to 256 bins
      (:mod:`pyrovae.blocks.discretized`), 2 outputs per subpixel (mean, log-scale); 8-bit pixels.
    - ``discretized_logistic_mixture``: ``components`` logistics per pixel shared by its
      channels, 1 + 2 C outputs per component and pixel; 8-bit pixels.
    - ``categorical``: 256 logits per subpixel; 8-bit pixels, small images.

    The first two kinds are densities when the pixels are grey levels: their log p(x) is
    not comparable with the probability masses of the discrete ones (:data:`DISCRETE`).
    """

    def __init__(self, name: str, x_shape: Sequence[int], sigma: float | str = 0.1,
                 sigma_init: float = 0.1, components: int = 5):  # fmt: skip
        super().__init__()
        if name not in LIKELIHOODS:
            raise unknown_name("likelihood", name, LIKELIHOODS)
        if not isinstance(components, int) or isinstance(components, bool) or components < 1:
            raise ConfigError(f"likelihood components must be an integer >= 1, got {components!r}")
        self.name, self.event_dim, self.components = name, len(x_shape), components
        self.discrete = name in DISCRETE
        self.log_sigma = None
        if name in EIGHT_BIT and len(x_shape) != 3:
            raise ConfigError(f"likelihood {name} needs images of shape (C, H, W), got {tuple(x_shape)}")
        c = x_shape[0]
        per_pixel = {"discretized_logistic": 2 * c, "categorical": LEVELS * c}
        per_pixel["discretized_logistic_mixture"] = components * (1 + 2 * c)
        self.param_shape = (per_pixel[name], *x_shape[1:]) if name in EIGHT_BIT else tuple(x_shape)
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
        if self.name in EIGHT_BIT:
            return self._eight_bit(logits)
        if self.name == "continuous_bernoulli":
            d = dist.ContinuousBernoulli(logits=logits)
        else:
            sigma = self.log_sigma.exp() if self.log_sigma is not None else self.fixed_sigma
            d = dist.Normal(torch.sigmoid(logits), sigma.expand_as(logits))
        return d.to_event(self.event_dim)

    def _eight_bit(self, out: torch.Tensor):
        if self.name == "categorical":
            return Categorical256(out.unflatten(-3, (-1, LEVELS)))
        if self.name == "discretized_logistic":
            loc, log_scale = out.unflatten(-3, (2, -1)).unbind(-4)
            return DiscretizedLogistic(
                loc + LOC_OFFSET, (log_scale + LOG_SCALE_OFFSET).clamp(min=MIN_LOG_SCALE)
            )
        m = self.components
        logits, rest = out.split([m, out.shape[-3] - m], -3)
        loc, log_scale = rest.unflatten(-3, (2, m, -1)).unbind(-5)
        return DiscretizedLogisticMixture(
            logits, loc + LOC_OFFSET, (log_scale + LOG_SCALE_OFFSET).clamp(min=MIN_LOG_SCALE)
        )

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """E[x | z] (for the discretized likelihoods, its clipped mean), the image to show."""
        if self.name in EIGHT_BIT:
            return self._eight_bit(logits).mean
        if self.name == "continuous_bernoulli":
            return dist.ContinuousBernoulli(logits=logits).mean
        return torch.sigmoid(logits)

    def check_pixels(self, pixels: str) -> None:
        """Raise ConfigError when this likelihood cannot model the pixel mode ``pixels`` (a
        Bernoulli on 8-bit levels, an 8-bit likelihood on other pixels); warn when a density is
        put on discrete pixels (binary or 8-bit). Grey values under a Bernoulli are refused by
        :meth:`check_data`."""
        if self.name == "bernoulli" and pixels == "8bit":
            raise ConfigError(
                'the bernoulli likelihood models binary pixels, not 8-bit ones: use pixels = "dynamic" '
                'or "static", or likelihood = "discretized_logistic_mixture" for 8-bit pixels'
            )
        if self.name in EIGHT_BIT and pixels != "8bit":
            raise ConfigError(
                f'likelihood {self.name} models 8-bit pixels (256 levels): set data.pixels = "8bit" '
                f"(got {pixels!r})"
            )
        if not self.discrete and pixels != "continuous":
            fits = "discretized_logistic_mixture" if pixels == "8bit" else "bernoulli"
            warnings.warn(
                f"the {self.name} likelihood is a density: its log p(x) on {pixels} (discrete) pixels is "
                f"not comparable with the probabilities of discrete likelihoods (use {fits} for a "
                "probability and bits/dim)",
                stacklevel=2,
            )

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
        if self.name in ("continuous_bernoulli", *EIGHT_BIT) and ((x < 0) | (x > 1)).any():
            raise DataError(
                f"the {self.name} likelihood needs pixels in [0, 1]; rescale the "
                'data, or use likelihood = "gaussian" for unbounded values'
            )
        if self.name in EIGHT_BIT and ((x * (LEVELS - 1) - torch.round(x * (LEVELS - 1))).abs() > 1e-3).any():
            raise DataError(
                f"the {self.name} likelihood needs 8-bit pixels (values k / 255); use "
                'pixels = "8bit" on uint8 images, or likelihood = "gaussian" for other values'
            )
