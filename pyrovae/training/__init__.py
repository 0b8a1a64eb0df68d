"""Training: the loop (:mod:`.loop`: :func:`fit`), its settings (:mod:`.settings`), its state
(:mod:`.state`), the objectives (:mod:`.objectives`, :mod:`.regularized`, :mod:`.factor`, the VQ-VAE's
:mod:`.quantized`, by name in
:mod:`.catalog`), the optimiser and schedules
(:mod:`.optim`), atomic checkpoints (:mod:`.checkpoint`), the non-finite guard
(:mod:`.guard`), and the run directory (:mod:`.rundir`, written through :mod:`.runfiles`).
"""

from typing import TYPE_CHECKING

from pyrovae.facade import lazy

if TYPE_CHECKING:  # the exports: read by pyrovae.facade.lazy, each loaded when first used
    from pyrovae.training.catalog import OBJECTIVES, make_objective
    from pyrovae.training.guard import diagnose_nonfinite
    from pyrovae.training.loop import FitResult, fit, make_loss
    from pyrovae.training.objectives import (
        KL_SCHEDULES,
        ELBOObjective,
        IWAEObjective,
        Objective,
        PyroObjective,
        kl_weight,
        make_elbo,
    )
    from pyrovae.training.quantized import VQObjective
    from pyrovae.training.regularized import (
        FreeBitsObjective,
        MMDObjective,
        TCVAEObjective,
        log_aggregate,
        mmd,
    )
    from pyrovae.training.rundir import RunDir
    from pyrovae.training.runfiles import read_metrics
    from pyrovae.training.settings import TrainConfig

__getattr__, __dir__, __all__ = lazy(__name__, __file__)
