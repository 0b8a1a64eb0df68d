"""Non-finite losses and gradients: found on the device with no host read, never applied,
and reported by the step and the site they came from."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import pyro
import torch
from torch import nn

from pyrovae.errors import NonFiniteError
from pyrovae.inference.weights import inspection_traces
from pyrovae.runtime.distributed import Group


class Guard:
    """A step whose loss or gradient norm is not finite is marked in ``found`` (fused Adam
    then skips its update), counted in ``count``, and the first such step kept in ``first``;
    :meth:`check` reads the count back (a host sync) and stops the run under ``nan_policy = "stop"``."""

    def __init__(self, device: torch.device, skipped: int = 0, policy: str = "stop", log_every: int = 1,
                 skip_above: float | None = None, outliers: int = 0, patience: int = 20,
                 streak: int = 0):  # fmt: skip
        self.found = torch.zeros((), dtype=torch.float32, device=device)  # fused Adam's found_inf is float32
        self.count = torch.full((), skipped, dtype=torch.long, device=device)
        #: finite steps whose gradient norm exceeded ``skip_above``, their updates skipped (VDVAE);
        #: ``streak``: the last steps in a row above it; from the ``patience``-th on they go through
        self.outliers = torch.full((), outliers, dtype=torch.long, device=device)
        self.streak = torch.full((), streak, dtype=torch.long, device=device)
        self.skip_above, self.patience, self._warned = skip_above, patience, False
        self.first = torch.full((), -1, dtype=torch.long, device=device)
        self.policy = policy
        # steps between reads: on CPU a read costs nothing, so a stop comes at the step itself
        self.every = 1 if device.type == "cpu" and policy == "stop" else log_every

    @classmethod
    def of_run(cls, state, device: torch.device) -> Guard:
        """The guard of a run's ``TrainState`` (its counts so far) under its config."""
        cfg = state.config
        return cls(device, state.skipped, cfg.nan_policy, cfg.log_every, cfg.skip_above, state.outliers,
                   cfg.skip_patience, state.outlier_streak)  # fmt: skip

    def streak_now(self) -> int:
        """Steps in a row, up to the last, above ``skip_above`` (a host read); warns once when
        the streak has reached the patience."""
        if self.skip_above is None:
            return 0
        streak = int(self.streak)
        if streak >= self.patience and not self._warned:
            self._warned = True
            warnings.warn(
                f"{streak} steps in a row had a gradient norm above train.skip_above = {self.skip_above:g}: "
                "not outliers but the model's state, so their updates go through (clipped by "
                "train.grad_clip); raise train.skip_above",
                RuntimeWarning,
                stacklevel=2,
            )
        return streak

    def update(
        self,
        loss: torch.Tensor,
        params: list[torch.Tensor],
        step: int,
        clip: float | None,
        group: Group | None = None,
    ) -> torch.Tensor:
        """Mark step ``step`` and clip the gradients; under torch.distributed every rank skips the
        same steps. A finite step whose gradient norm (before clipping) exceeds ``skip_above`` is
        an outlier: its update is skipped too, counted apart (Child 2021, sec. 5.1), and the run
        goes on; from the ``patience``-th such step in a row on, their updates go through."""
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.count.device)
        bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(norm))
        if group is not None:
            bad = group.agree(bad)
        outlier = torch.zeros_like(bad)
        if self.skip_above is not None:  # a setting of the run: the same branch at every step
            above = norm > self.skip_above
            above = (group.agree(above) if group is not None else above) & ~bad
            outlier = above & (self.streak < self.patience)
            self.streak = torch.where(above, self.streak + 1, 0)
        if clip is not None and grads:
            torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
        self.count += bad
        self.outliers += outlier
        self.first = torch.where(bad & (self.first < 0), step, self.first)
        self.found = (bad | outlier).to(self.found.dtype)
        return bad

    def check(self, state, where: Callable[[], str], last_checkpoint: Callable[[], str]) -> tuple:
        """The numbers of non-finite steps, of outliers and of steps in a row above ``skip_above``
        (:meth:`streak_now`; both 0 unless ``skip_above`` is set) for the run's ``state``; raises
        NonFiniteError on a new non-finite step under the "stop" policy.
        ``where()`` names the cause (re-running the batch), ``last_checkpoint()`` the way back;
        both are called only then."""
        skipped, step = state.skipped, state.step
        total = int(self.count)
        if total > skipped and self.policy == "stop":
            raise NonFiniteError(
                f"the loss or its gradient was not finite at step {int(self.first)} ({where()}); that step's "
                f"update was not applied and training stopped at step {step}. Last good checkpoint: "
                f"{last_checkpoint()}. Lower train.lr, set train.grad_clip, check the data, or set "
                'train.nan_policy = "skip" to skip such batches'
            )
        return total, int(self.outliers) if self.skip_above is not None else 0, self.streak_now()


def describe_checkpoint(run_dir: Path | None, last: Path | None) -> str:
    """What is true of the way back: the checkpoint, or why there is none."""
    if last is not None:
        return str(last)
    if run_dir is None:
        return "none (no run directory)"
    return f"none yet ({run_dir} has no checkpoint before this step)"


def diagnose_nonfinite(
    model: Callable, guide: Callable, x: tuple | torch.Tensor, params: list[torch.Tensor]
) -> str:
    """Where a non-finite loss came from, on a re-run of batch ``x`` (the model's arguments): the
    first non-finite parameter, sample value or log-density (guide sites first, as they run first), else the
    first non-finite gradient."""
    named = {
        id(p): f"{prefix}.{n}"
        for prefix, m in (("model", model), ("guide", guide))
        if isinstance(m, nn.Module)
        for n, p in m.named_parameters()
    }
    store = pyro.get_param_store()
    named.update({id(store._params[n]): f"pyro.param {n!r}" for n in store.keys()})
    label = lambda p: named.get(id(p), f"a parameter of shape {tuple(p.shape)}")
    with torch.no_grad(), pyro.validation_enabled(False):
        for p in params:
            if not torch.isfinite(p).all():
                return f"{label(p)} is not finite"
        try:
            traces = inspection_traces(model, guide, x if isinstance(x, tuple) else (x,), {})
        except Exception as e:  # noqa: BLE001 - a model that fails on this batch names its own error
            return f"re-running the batch raised {type(e).__name__}: {e}"
        for who, tr in zip(("guide", "model"), traces):
            for name, site in tr.nodes.items():
                if site["type"] != "sample":
                    continue
                if isinstance(site["value"], torch.Tensor) and not torch.isfinite(site["value"]).all():
                    return f"the {who}'s sample site {name!r} has non-finite values"
                if not torch.isfinite(site["fn"].log_prob(site["value"])).all():
                    return f"the {who}'s sample site {name!r} has a non-finite log-density"
    for p in params:
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return f"the gradient of {label(p)} is not finite"
    return "a re-run of the batch was finite: the sampling noise of that step"
