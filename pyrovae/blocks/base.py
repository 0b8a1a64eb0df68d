"""Base classes for image models and guides: shape checks and the sampling interface."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pyrovae.errors import ConfigError, DataError
from pyrovae.hooks import Takes
from pyrovae.sites import LATENT


class ImageModule(nn.Module):
    """A model or guide over images of shape ``x_shape`` with a ``latent_dim`` code.

    A plain ``nn.Module`` (parameters in the module whatever Pyro's ``module_local_params``
    setting); the optional hooks the engine reads are listed in :mod:`pyrovae.hooks`."""

    #: names of the latent sample sites, outermost (the one ``decode`` takes) last
    latent_sites: tuple[str, ...] = (LATENT,)
    #: the arguments model and guide take: "image" (x), "image,label" (x, one-hot y), "quadrants" (x, y)
    takes: Takes = Takes.IMAGE

    def __init__(self, x_shape: Sequence[int], latent_dim: int | Sequence[int]):
        super().__init__()
        dims = (latent_dim,) if isinstance(latent_dim, int) else tuple(latent_dim)
        if len(dims) != len(self.latent_sites) or any(not isinstance(d, int) or d < 1 for d in dims):
            raise ConfigError(
                f"{type(self).__name__} needs latent_dim as {len(self.latent_sites)} positive "
                f"integer(s), one per latent site {self.latent_sites}; got {latent_dim!r}"
            )
        self.x_shape = tuple(int(s) for s in x_shape)
        self.latent_dim = dims[0] if len(dims) == 1 else dims

    def check_data(self, x: torch.Tensor) -> None:
        """Raise DataError unless ``x`` is a float batch of shape ``(N, *x_shape)``."""
        if not isinstance(x, torch.Tensor):
            raise DataError(f"data must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise DataError(f"data must be a floating-point tensor, got {x.dtype}; use x.float()")
        param = next(self.parameters(), None)
        if param is not None and param.dtype != x.dtype:
            raise DataError(
                f"data are {x.dtype} but {type(self).__name__}'s parameters are {param.dtype}; "
                f"convert one to the other (x.to({param.dtype}) or model.to({x.dtype}))"
            )
        if param is not None and param.device != x.device:
            raise DataError(
                f"data are on {x.device} but {type(self).__name__}'s parameters are on "
                f"{param.device}; move one to the other"
            )
        if tuple(x.shape[1:]) != self.x_shape:
            raise DataError(
                f"{type(self).__name__} was built for images of shape {self.x_shape} "
                f"(batch shape (N, {', '.join(map(str, self.x_shape))})), got data of "
                f"shape {tuple(x.shape)}"
            )


class ImageModel(ImageModule):
    """A model p(z) p(x|z) that can also decode and sample images."""

    def check_data(self, x: torch.Tensor) -> None:
        """Shape and dtype checks, then the likelihood's support (``self.likelihood``, if any)."""
        super().check_data(x)
        likelihood = getattr(self, "likelihood", None)
        if likelihood is not None:
            likelihood.check_data(x)

    def check_pixels(self, pixels: str) -> None:
        """Check the likelihood against the pixel mode (``Likelihood.check_pixels``)."""
        likelihood = getattr(self, "likelihood", None)
        if likelihood is not None:
            likelihood.check_pixels(pixels)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z] for codes ``z`` of the outermost latent site (the last of ``latent_sites``)."""
        raise NotImplementedError

    def sample_prior(self, num: int) -> torch.Tensor:
        """``num`` draws z ~ p(z)."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, num: int) -> torch.Tensor:
        """``num`` images E[x | z], z ~ p(z)."""
        return self.decode(self.sample_prior(num))
