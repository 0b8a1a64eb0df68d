"""The run level, the only one that knows config files and run directories: configs
(:mod:`.config`) and their checks (:mod:`.configcheck`); the recipes every command follows
(:mod:`.recipes`); training a run and reloading it (:mod:`.experiment`) with the callbacks it
attaches (:mod:`.callbacks`); its evaluation (:mod:`.evaluation`) and diagnostics
(:mod:`.diagnose`); what is printed (:mod:`.console`) and the command line (:mod:`.cli`).
"""

from typing import TYPE_CHECKING

from pyrovae.facade import lazy

if TYPE_CHECKING:  # the exports: read by pyrovae.facade.lazy, each loaded when first used
    from pyrovae.run.callbacks import Curves, TensorBoardWriter, fit_callbacks
    from pyrovae.run.config import (
        Component,
        Config,
        DataConfig,
        apply_overrides,
        config_from_dict,
        load_config,
    )
    from pyrovae.run.configcheck import validate
    from pyrovae.run.diagnose import diagnose_run
    from pyrovae.run.evaluation import evaluate, evaluate_ais, evaluate_bdmc
    from pyrovae.run.experiment import Run, draw_figures, fit_config, load_run, read_config, reconstructions
    from pyrovae.run.recipes import EvaluationData, build, evaluation_data, load_data

__getattr__, __dir__, __all__ = lazy(__name__, __file__)
