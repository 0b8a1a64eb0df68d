"""Models p(z) p(x|z). Every module in this package is imported, so a new file with a
``@register_model`` class is available by name with no other change."""

import importlib
import pkgutil

from .linear_gaussian import LinearGaussian
from .vae import VAE

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["VAE", "LinearGaussian"]
