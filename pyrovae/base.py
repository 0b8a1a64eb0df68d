"""Base classes for image models and guides: shape checks and the sampling interface."""
from __future__ import annotations

from typing import Sequence

import torch
from pyro.nn import PyroModule

from .errors import DataError


class ImageModule(PyroModule):
    """A model or guide over images of shape ``x_shape`` with a ``latent_dim`` code."""

    def __init__(self, x_shape: Sequence[int], latent_dim: int):
        super().__init__()
        if latent_dim < 1:
            raise DataError(f"latent_dim must be positive, got {latent_dim}")
        self.x_shape = tuple(int(s) for s in x_shape)
        self.latent_dim = int(latent_dim)

    def check_data(self, x: torch.Tensor) -> None:
        """Raise DataError unless ``x`` is a float batch of shape (N, *x_shape)."""
        if not isinstance(x, torch.Tensor):
            raise DataError(f"data must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise DataError(f"data must be a floating-point tensor, got {x.dtype}; use x.float()")
        if tuple(x.shape[1:]) != self.x_shape:
            raise DataError(f"{type(self).__name__} was built for images of shape {self.x_shape} "
                            f"(batch shape (N, {', '.join(map(str, self.x_shape))})), got data of "
                            f"shape {tuple(x.shape)}")


class ImageModel(ImageModule):
    """A model p(z) p(x|z) that can also decode and sample images."""

    def check_data(self, x: torch.Tensor) -> None:
        """Shape and dtype checks, then the likelihood's support (``self.likelihood``, if any)."""
        super().check_data(x)
        likelihood = getattr(self, "likelihood", None)
        if likelihood is not None:
            likelihood.check_data(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z] for codes ``z`` of shape (..., latent_dim)."""
        raise NotImplementedError

    def sample_prior(self, num: int) -> torch.Tensor:
        """``num`` draws z ~ p(z)."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, num: int) -> torch.Tensor:
        """``num`` images E[x | z], z ~ p(z)."""
        return self.decode(self.sample_prior(num))
