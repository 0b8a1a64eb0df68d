"""Guides q(z|x). Every module in this package is imported, so a new file with a
``@register_guide`` class is available by name with no other change."""

import importlib
import pkgutil

from .gaussian import ConvGuide, DiagonalGaussianGuide, MLPGuide, ResNetGuide

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["DiagonalGaussianGuide", "MLPGuide", "ConvGuide", "ResNetGuide"]
