"""pyrovae: variational autoencoders in Pyro, with per-datapoint likelihood reports.

Importing pyrovae changes none of Pyro's global settings: its models and guides are plain
``nn.Module``s whose parameters live in the modules, so several runs share one process
whatever ``pyro.settings`` say.
"""

from . import data, estimators, objectives
from .config import Config, DataConfig, TrainConfig, load_config
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    Interrupted,
    ModelError,
    NonFiniteError,
    PyrovaeError,
)
from .registry import build_guide, build_model, register_guide, register_model
from .train import FitResult, fit

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
