"""How a computation runs: the device (:mod:`.devices`), CPU threads (:mod:`.threads`), the
processes of a torchrun job (:mod:`.distributed`), captured graphs (:mod:`.compile`) and
progress bars (:mod:`.progress`).
"""

from typing import TYPE_CHECKING

from pyrovae.facade import lazy

if TYPE_CHECKING:  # the exports: read by pyrovae.facade.lazy, each loaded when first used
    from pyrovae.runtime.compile import MODES, Compiled
    from pyrovae.runtime.devices import resolve_device
    from pyrovae.runtime.threads import Tuner, available_cpus, configure

__getattr__, __dir__, __all__ = lazy(__name__, __file__)
