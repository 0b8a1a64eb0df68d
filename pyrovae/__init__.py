"""pyrovae: variational autoencoders in Pyro, with per-datapoint likelihood reports.

Parameters live in their modules (``module_local_params``), not Pyro's global param
store, so several runs can share one process.
"""

import pyro

pyro.settings.set(module_local_params=True)

from . import data, estimators, objectives  # noqa: E402
from .config import Config, DataConfig, TrainConfig, load_config  # noqa: E402
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    Interrupted,
    ModelError,  # noqa: E402
    NonFiniteError,
    PyrovaeError,
)
from .registry import build_guide, build_model, register_guide, register_model  # noqa: E402
from .train import FitResult, fit  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "fit",
    "FitResult",
    "Config",
    "DataConfig",
    "TrainConfig",
    "load_config",
    "register_model",
    "register_guide",
    "build_model",
    "build_guide",
    "data",
    "estimators",
    "objectives",
    "PyrovaeError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "ModelError",
    "NonFiniteError",
    "Interrupted",
]
