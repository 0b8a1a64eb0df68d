"""pyrovae: variational autoencoders in Pyro, with per-datapoint likelihood reports.

The folders name the layers, lowest first: the shared vocabulary (:mod:`pyrovae.errors`,
:mod:`pyrovae.sites`, :mod:`pyrovae.hooks`, :mod:`pyrovae.registry`), :mod:`pyrovae.runtime`,
:mod:`pyrovae.blocks`, :mod:`pyrovae.data`, :mod:`pyrovae.inference`,
:mod:`pyrovae.diagnostics`, :mod:`pyrovae.training` and :mod:`pyrovae.run`; a folder imports
only from the folders before it. This facade loads nothing until a name is first used, so
``import pyrovae`` is cheap; ``pyrovae.estimators`` is :mod:`pyrovae.inference`.

Importing pyrovae changes none of Pyro's global settings: its models and guides are plain
``nn.Module``s whose parameters live in the modules, so several runs share one process
whatever ``pyro.settings`` say.
"""

import importlib
import sys
from typing import TYPE_CHECKING

from pyrovae.facade import lazy

if TYPE_CHECKING:  # the exports: read by pyrovae.facade.lazy, each loaded when first used
    from pyrovae import blocks, data, diagnostics, guides, hooks, inference, models, run, runtime, training
    from pyrovae import inference as estimators
    from pyrovae.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        Interrupted,
        ModelError,
        NonFiniteError,
        PyrovaeError,
    )
    from pyrovae.registry import build_guide, build_model, register_guide, register_model
    from pyrovae.run.config import Config, DataConfig, load_config
    from pyrovae.run.evaluation import evaluate
    from pyrovae.run.experiment import fit_config, load_run
    from pyrovae.run.recipes import evaluation_data
    from pyrovae.training import objectives
    from pyrovae.training.loop import FitResult, fit
    from pyrovae.training.settings import TrainConfig

__version__ = "0.1.0"
__getattr__, __dir__, __all__ = lazy(__name__, __file__)
# ``pyrovae.estimators`` is the inference facade under its second name, importable as a module
# too (``from pyrovae.estimators import elbo``); the facade itself loads nothing until used
sys.modules[f"{__name__}.estimators"] = importlib.import_module("pyrovae.inference")
