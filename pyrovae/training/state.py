"""The state of a training run: its ``state_dict()`` is the checkpoint, ``load_state_dict()`` the resume.

One list of fields (:data:`TrainState.COUNTERS`, the modules, the optimizer, the schedule, the
random streams and the running loss sums of every rank) is written and read back by the same
two methods, so a resumed run continues exactly: the same parameters, the same random draws,
the same metrics rows.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable

import pyro
import torch
from torch import nn

from pyrovae.runtime import seeds
from pyrovae.runtime.distributed import Group, all_sum
from pyrovae.training import checkpoint as ckpt_io


def param_store_state() -> dict[str, torch.Tensor]:
    """The constrained values of Pyro's global param store (``pyro.param`` sites of plain callables)."""
    store = pyro.get_param_store()
    return {name: store[name].detach().clone() for name in store.keys()}


def load_param_store(state: dict[str, torch.Tensor]) -> None:
    """Copy saved constrained values into the live unconstrained tensors (the optimizer holds those)."""
    store = pyro.get_param_store()
    for name, value in state.items():
        if name not in store:
            store[name] = value
            continue
        with torch.no_grad():
            store._params[name].copy_(torch.distributions.transform_to(store._constraints[name]).inv(value))


class TrainState:
    """Counters, running loss sums and the objects a step changes (model, guide, optimizer,
    learning-rate schedule), with the random streams of every rank."""

    #: the plain numbers of a run, stored in the checkpoint under these names
    COUNTERS = (
        *("step", "epoch", "batch", "best_val_elbo", "best_val_error", "best_val_loss"),
        *("bad_epochs", "skipped", "metrics_rows", "outliers", "outlier_streak"),
    )

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        config: Any,
        record: dict | None,
        device: torch.device,
        group: Group,
        objective: Any = None,
    ):
        self.model, self.guide, self.optimizer, self.scheduler = model, guide, optimizer, scheduler
        self.objective = objective  #: an objective with state of its own (a discriminator) is checkpointed
        self.config, self.record, self.group = config, record or {}, group
        self.step = self.epoch = self.batch = self.bad_epochs = self.skipped = self.metrics_rows = 0
        self.outliers = 0  #: updates skipped for a gradient norm above train.skip_above
        self.outlier_streak = 0  #: steps in a row, up to the last, with a norm above it
        self.best_val_elbo, self.best_val_error, self.best_val_loss = -math.inf, math.inf, math.inf
        self.running = torch.zeros(2, device=device)  #: this rank's loss sum and count since the last row

    def advance(self, loss: torch.Tensor, bad: torch.Tensor) -> None:
        """Count a step and add its loss (unless skipped) to the running sums, on the device."""
        self.step, self.batch = self.step + 1, self.batch + 1
        self.running += torch.stack([torch.where(bad, 0.0, loss.detach()), (~bad).to(loss.dtype)])

    def mean_loss(self) -> float | None:
        """The mean loss since the last call over every rank's steps (None if all were skipped);
        resets the sums."""
        sums = all_sum(self.running.clone())
        self.running.zero_()
        return (sums[0] / sums[1]).item() if int(sums[1]) else None

    def step_row(self, beta: float) -> dict:
        """The metrics row of a logging step: the mean loss since the last row over all ranks."""
        return {
            "kind": "step",
            "step": self.step,
            "epoch": self.epoch,
            "loss": self.mean_loss(),
            "beta": beta,
            "lr": self.optimizer.param_groups[0]["lr"],
            "skipped": self.skipped,
            **({"outliers": self.outliers} if self.config.skip_above is not None else {}),
        }

    def state_dict(self) -> dict:
        """The checkpoint: every rank's random state and running sums are gathered (a collective)."""
        ranks = self.group.gather({"rng": seeds.rng_state(), "running": self.running.cpu()})
        modules = {
            k: m.state_dict() if isinstance(m, nn.Module) else {}
            for k, m in (("model", self.model), ("guide", self.guide))
        }
        return {
            "format": ckpt_io.FORMAT,
            "record": self.record,
            "train_config": dataclasses.asdict(self.config),
            **modules,
            "params": param_store_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "objective": None if self.objective is None else self.objective.state_dict(),
            **{k: getattr(self, k) for k in self.COUNTERS},
            "rng": ranks[0]["rng"],
            "rng_ranks": [r["rng"] for r in ranks] if self.group.size > 1 else None,
            "running_ranks": [r["running"] for r in ranks],
            "world_size": self.group.size,
            "versions": ckpt_io.versions(),
        }

    def load_state_dict(self, state: dict, *, seed: int, source: str = "the checkpoint") -> None:
        """Continue from a checkpoint; random streams written by another number of ranks restart."""
        for key, m in (("model", self.model), ("guide", self.guide)):
            if isinstance(m, nn.Module):
                m.load_state_dict(state[key])
        load_param_store(state["params"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.objective is not None and state.get("objective") is not None:
            self.objective.load_state_dict(state["objective"])
        for k in self.COUNTERS:
            setattr(self, k, state.get(k, getattr(self, k)))
        rngs = state.get("rng_ranks") or [state["rng"]]
        running = state.get("running_ranks") or [None] * len(rngs)
        ranks = [{"rng": r, "running": s} for r, s in zip(rngs, running)]
        if len(ranks) == self.group.size:
            mine = ranks[self.group.rank]
            seeds.set_rng_state(mine["rng"])
            if mine.get("running") is not None:
                self.running.copy_(mine["running"])
            return
        warnings.warn(
            f"{source} was written by {len(ranks)} rank(s), not {self.group.size}: the random streams "
            "restart (the run continues, not bit for bit)",
            RuntimeWarning,
            stacklevel=3,
        )
        pyro.set_rng_seed(self.group.seed(seed + self.step))
