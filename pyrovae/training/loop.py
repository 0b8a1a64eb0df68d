"""fit(): one readable SVI loop over a device-resident dataset, with checkpoints and metrics.

The loss is a training objective of :mod:`pyrovae.objectives` (by default the Monte Carlo
ELBO) divided by the batch size, run through :class:`pyrovae.runtime.compile.Compiled` (captured
once per batch shape unless ``train.compile = "none"``) and minimised by Adam over the
parameters of the model and guide (:func:`pyrovae.training.optim.collect_params`). The run's state
is a :class:`pyrovae.training.state.TrainState` (its ``state_dict()`` is the checkpoint), its files
a :class:`pyrovae.training.runfiles.RunFiles`, and what differs under torch.distributed sits in one
:class:`pyrovae.runtime.distributed.Group`. The data are checked once up front; inside the loop
Pyro's argument checks are off and the loss is read back every ``log_every`` steps.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pyro
import torch

from pyrovae import hooks
from pyrovae.data.batches import Batches, observed_once
from pyrovae.data.labelled import LabelledBatches, is_partly_labelled
from pyrovae.data.splits import Split
from pyrovae.errors import ConfigError, ModelError
from pyrovae.hooks import (
    Takes,
    attach_data,
    auxiliary_loss,
    check_pixels,
    is_conditional,
    label_site,
    owner_modules,
    takes,
)
from pyrovae.inference import pairs
from pyrovae.inference.checks import as_split, check_data
from pyrovae.runtime import distributed, threads
from pyrovae.runtime.compile import Compiled, resolve_mode, warn_eager
from pyrovae.runtime.devices import resolve_device
from pyrovae.runtime.progress import bar
from pyrovae.runtime.seeds import keeps_streams
from pyrovae.training.catalog import make_objective
from pyrovae.training.guard import Guard, diagnose_nonfinite
from pyrovae.training.objectives import Objective, kl_weight
from pyrovae.training.optim import (
    collect_params,
    hold_fixed,
    make_optimizer,
    make_scheduler,
)
from pyrovae.training.runfiles import RunFiles, Signals
from pyrovae.training.settings import TrainConfig
from pyrovae.training.state import TrainState
from pyrovae.training.validation import Validator


@dataclass
class FitResult:
    """What :func:`fit` returns: where training stopped, the best validation ELBO, every
    metrics row, and how the steps ran."""

    step: int
    epoch: int
    best_val_elbo: float
    metrics: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    compile: str = "none"  #: how the loss ran: see pyrovae.runtime.compile.Compiled.summary
    skipped: int = 0  #: steps whose update was skipped for a non-finite loss or gradient
    threads: int | None = None  #: the CPU threads the steps ran with (None on a GPU)
    best_val_loss: float = math.inf  #: the best validation loss, for a guide with no ELBO
    layout: str = "batches"  #: "batches", or "whole data" for a pair with per-datapoint state

    def __repr__(self) -> str:
        return (
            f"FitResult(step={self.step}, epoch={self.epoch}, best_val_elbo={self.best_val_elbo:.4g}, "
            f"{len(self.metrics)} metrics rows, run_dir={self.run_dir}, compile={self.compile!r}, "
            f"skipped={self.skipped}, threads={self.threads}, layout={self.layout!r})"
        )

    @classmethod
    def of(cls, state: TrainState, files: RunFiles, compile: str, tuner: threads.Tuner, whole: bool):
        rows, run_dir, layout = files.rows, files.run_dir, "whole data" if whole else "batches"
        used = tuner.threads if state.running.device.type == "cpu" else None
        counts = (state.step, state.epoch, state.best_val_elbo)
        return cls(*counts, rows, run_dir, compile, state.skipped, used, state.best_val_loss, layout)


@dataclass
class Plan:
    """What a run trains on, and for how long."""

    train: Split
    val: Split | None
    batches: Batches
    example: tuple  #: the model's arguments for a few datapoints (all of them for a whole-data guide)
    conditional: bool
    total_steps: int
    epochs: int
    whole: bool = False  #: the pair holds per-datapoint state: all datapoints in every step


def plan(model, guide, train, val, cfg: TrainConfig, seed: int, group, device: torch.device) -> Plan:
    """Move model, guide and data to ``device``, check them, and lay out the batches. A guide
    that holds per-datapoint state (:func:`pyrovae.inference.pairs.per_datapoint_state`) trains on
    the whole data in order, one batch per step, and says so."""
    for m in owner_modules(model, guide):
        m.to(device)
    if isinstance(train, Split):  # a declared pixel mode (a plain tensor's values meet check_data)
        check_pixels(model, train.pixels)
    train, val = as_split(train).to(device), None if val is None else as_split(val).to(device)
    check_data(model, train, "training")
    attach_data(model, guide, train.labels)
    if val is not None:
        check_data(model, val, "validation")
    if cfg.select == "error" and (label_site(model) is None or val is None or not (val.labels >= 0).any()):
        raise ConfigError(
            'train.select = "error" picks best.pt by validation classification error: it needs a model '
            'with a label site (e.g. ss_vae) and labelled validation data; use select = "elbo"'
        )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        rows = observed_once(model, train)
        whole = pairs.per_datapoint_state(model, guide, None, rows=rows, size=len(train))
        example = hooks.inputs(model, train.observe(), train.labels) if whole else rows(torch.arange(2))[0]
    pairs.check_pair(model, guide, example, whole=whole is not None)
    if whole:
        warnings.warn(
            f"the pair holds per-datapoint state ({whole}): it trains on all {len(train)} datapoints "
            "at once, in order, one step per epoch; if its tables are indexed by an argument of one "
            "row per datapoint, declare per_datapoint = False on the guide",
            RuntimeWarning,
            stacklevel=3,
        )
    if whole and (val is not None or group.size > 1):
        raise ModelError(
            f"the guide runs only on all {len(train)} training datapoints at once (it is sized "
            "for them): train it in one process with val=None"
        )
    size = len(train) if whole else cfg.batch_size
    if takes(model) == Takes.IMAGE_PARTIAL_LABEL and not whole and is_partly_labelled(train):
        batches = LabelledBatches(
            train, size, seed=seed, rank=group.rank, world=group.size, repeat=cfg.labelled_repeat
        )
    else:
        batches = Batches(train, size, shuffle=not whole, seed=seed, rank=group.rank, world=group.size)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * len(batches)
    if total < 1:
        raise ConfigError("nothing to train: set train.epochs or train.max_steps to a positive number")
    epochs = math.ceil(total / len(batches))
    return Plan(train, val, batches, example, is_conditional(model), total, epochs, bool(whole))


def make_loss(objective, model, guide, params, mode: str, example: tuple) -> Compiled:
    """``loss(*args, beta)`` = objective / batch size, through :class:`~pyrovae.runtime.compile.Compiled`."""
    resolve_mode(mode)
    objective.prepare(model, guide, *example)
    if not objective.capturable:
        warn_eager(mode, objective.eager_reason)
        mode = "none"
    mode = hooks.auto_compile(model, mode)

    def loss(*args):
        *data, beta = args
        value = objective(model, guide, *data, beta=beta)
        extra = auxiliary_loss(model, guide, *data)  # e.g. M2's classifier loss
        return (value if extra is None else value + extra) / data[0].shape[0]

    return Compiled(loss, owner_modules(model, guide), mode, params=params)


def objective_and_loss(objective, cfg: TrainConfig, model, guide, params, mode: str, run: Plan, group):
    """The run's objective (``objective``, else the one ``cfg`` names, with its settings and the
    training set's size) and its loss function; an objective's own parameters made equal on
    every rank."""
    objective = make_objective(
        objective or cfg.objective,
        num_particles=cfg.num_particles,
        k=cfg.k,
        dataset_size=len(run.train),
        **cfg.objective_options(),
    )
    loss_fn = make_loss(objective, model, guide, params, mode, run.example)
    objective.synchronize(group)
    return objective, loss_fn


def beta_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """The KL weight of ``step`` under the config's schedule (:func:`pyrovae.objectives.kl_weight`)."""
    return kl_weight(
        step,
        schedule=cfg.kl_schedule,
        beta=cfg.beta,
        warmup_steps=cfg.warmup_steps,
        beta_start=cfg.beta_start,
        total_steps=total_steps,
        cycles=cfg.cycles,
        cycle_ratio=cfg.cycle_ratio,
    )


def train_step(
    loss_fn, x: tuple, beta, opt, guard: Guard, params, state: TrainState, batches: Batches
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SVI step: the loss, its gradient (weighted by the rank's share of the global batch),
    the non-finite guard and clipping, the optimizer step (skipped on the device when flagged).
    Returns (loss, whether the step was skipped)."""
    loss = loss_fn(*x, beta)
    opt.zero_grad(set_to_none=True)
    state.group.weigh(loss, x[0].shape[0], batches.total(state.batch)).backward()
    bad = guard.update(loss, params, state.step + 1, state.config.grad_clip, state.group)
    opt.found_inf = guard.found
    opt.step()
    if state.objective is not None:
        state.objective.after_step(state.group)
    hooks.after_step(state.model, state.guide)
    return loss, bad


def probe_threads(tuner: threads.Tuner, loss_fn, run: Plan, state: TrainState, beta_t) -> None:
    """Let ``tuner`` time discarded steps (forward and backward of the next batch on a forked
    random stream: no update, the modules' buffers put back) until it has chosen the threads."""
    if tuner.choice is not None:
        return
    model, guide = state.model, state.guide
    beta = beta_t if loss_fn.mode != "none" else 1.0  # as the loop passes it; its value times alike
    buffers = [(b, b.clone()) for m in owner_modules(model, guide) for b in m.buffers()]
    with torch.random.fork_rng(devices=[]), pyro.validation_enabled(False):
        batch = next(iter(run.batches.epoch(state.epoch, state.batch, labels=run.conditional)))
        x = hooks.inputs(model, *batch) if run.conditional else (batch,)
        while tuner.choice is None:
            with tuner.unit():
                loss_fn(*x, beta).backward()
    with torch.no_grad():
        for b, saved in buffers:
            b.copy_(saved)
    state.optimizer.zero_grad(set_to_none=True)


def start_files(files: RunFiles, resume: bool, seed: int, device, probe) -> threads.Tuner:
    """Start the run's files with the CPU threads chosen (:class:`pyrovae.runtime.threads.Tuner`, on CPU in
    one process; steps are short, so ten are timed after three of warm-up): a fresh run times
    ``probe(tuner)`` first (so ``versions.json`` records the choice); a resumed run keeps its
    checkpoint's threads, the arithmetic of the run that stopped."""
    tuner = threads.Tuner(enabled=device.type == "cpu" and files.state.group.size == 1, timed=10, warm=3)
    if not resume:
        probe(tuner)
    files.start(resume, seed, device)
    if resume and files.resumed_threads:
        tuner.fix(files.resumed_threads)
    elif resume:  # a checkpoint from before threads were recorded
        probe(tuner)
    return tuner


def improved(state: TrainState, row: dict) -> bool:
    """Whether the epoch's validation figure (``train.select``; the objective's loss for a
    guide with no ELBO) is the best so far; records it."""
    if state.config.select == "error":
        better = row["val_error"] < state.best_val_error
        state.best_val_error = min(state.best_val_error, row["val_error"])
    elif "val_loss" in row:
        better = row["val_loss"] < state.best_val_loss
    else:
        better = row["val_elbo"] > state.best_val_elbo
    if "val_loss" in row:
        state.best_val_loss = min(state.best_val_loss, row["val_loss"])
    else:
        state.best_val_elbo = max(state.best_val_elbo, row["val_elbo"])
    return better


def end_epoch(state: TrainState, files: RunFiles, validate, seconds: float, full: bool, device) -> bool:
    """The epoch row (validation figures, best checkpoint), the schedule's step and a checkpoint;
    True when training should stop (a callback, early stopping)."""
    row = {
        "kind": "epoch",
        "step": state.step,
        "epoch": state.epoch,
        "seconds": seconds,
        "skipped": state.skipped,
    }
    if validate is not None:
        row.update(validate())
        if improved(state, row):
            state.bad_epochs = 0
            files.save_best()
        else:
            state.bad_epochs += 1
    if state.scheduler is not None and full:
        state.scheduler.step()
    stop = state.group.any(files.write(row), device)  # a callback on one rank (a time budget) stops all
    files.save()
    patience = state.config.early_stopping
    return stop or (patience is not None and state.bad_epochs >= patience)


@keeps_streams
def fit(
    model: Callable,
    guide: Callable,
    train: Split | torch.Tensor,
    val: Split | torch.Tensor | None = None,
    *,
    config: TrainConfig = TrainConfig(),
    seed: int = 0,
    device: str | torch.device | None = "auto",
    run_dir: str | Path | None = None,
    record: dict | None = None,
    resume: bool = False,
    progress: bool | None = None,
    callbacks: Iterable[Callable[[dict], object]] = (),
    objective: Objective | None = None,
) -> FitResult:
    """Train ``model``/``guide`` (Pyro callables with a ``"data"`` plate, or methods of one module) by
    SVI on ``train``, validating on ``val`` each epoch; with ``run_dir``, write metrics and atomic
    checkpoints (``resume=True`` continues to the same parameters and rows). Non-finite steps are
    never applied (``nan_policy``); each callback gets every metrics row, and one returning True
    on an epoch row stops training. ``objective``: a loss of your own (an :class:`Objective`)
    instead of the one ``config.objective`` names."""
    cfg, device, group = config, resolve_device(device), distributed.Group()
    pyro.set_rng_seed(group.seed(seed))
    run = plan(model, guide, train, val, cfg, seed, group, device)
    hold_fixed(model, guide, cfg.train_only)
    params = collect_params(model, guide, *run.example)
    mode = group.check_trainable(params, owner_modules(model, guide), cfg.compile)
    objective, loss_fn = objective_and_loss(objective, cfg, model, guide, params, mode, run, group)
    opt = make_optimizer(params, cfg)
    scheduler = make_scheduler(opt, cfg, run.epochs)
    state = TrainState(model, guide, opt, scheduler, cfg, record, device, group, objective)
    files = RunFiles(run_dir, state, callbacks, keep=cfg.keep_checkpoints)
    beta_t = torch.ones((), device=device, dtype=params[0].dtype)
    tuner = start_files(files, resume, seed, device, lambda t: probe_threads(t, loss_fn, run, state, beta_t))
    step_loss = group.wrap(loss_fn, owner_modules(model, guide), device)
    validator = lambda: Validator(model, guide, run.val, cfg.val_samples, seed, group, device, objective)
    validate = None if run.val is None else validator()
    guard = Guard.of_run(state, device)

    def check(x) -> None:  # read the device's non-finite count back and stop on a new one
        where = lambda: diagnose_nonfinite(model, guide, x, params)
        state.skipped, state.outliers, state.outlier_streak = guard.check(state, where, files.describe_last)

    t_epoch = time.perf_counter()
    show = progress if group.main else False
    with pyro.validation_enabled(False), Signals(run_dir is not None) as signals, tuner:
        with bar("fit", run.total_steps, "step", state.step, show=show) as pbar:
            while state.step < run.total_steps and state.epoch < run.epochs:
                for batch in run.batches.epoch(state.epoch, state.batch, labels=run.conditional):
                    x = hooks.inputs(model, *batch) if run.conditional else (batch,)
                    beta = beta_at(state.step, cfg, run.total_steps)
                    # a captured loss takes beta as a tensor input, so a schedule never forces a new capture
                    b = beta_t.fill_(beta) if loss_fn.mode != "none" else beta
                    loss, bad = train_step(step_loss, x, b, opt, guard, params, state, run.batches)
                    state.advance(loss, bad)
                    last = state.step == run.total_steps
                    log_now = state.step % cfg.log_every == 0 or last
                    if state.step % guard.every == 0 or last:
                        check(x)
                    if log_now:
                        files.write({**state.step_row(beta), **objective.metrics()})
                        pbar.set_postfix(loss=files.rows[-1]["loss"])
                    pbar.update(1)
                    if run_dir is not None and state.step % cfg.checkpoint_every == 0:
                        check(x)
                        files.save()
                    received = group.agree_signal(signals.received, log_now, device)
                    if received is not None:
                        check(x)
                        files.save()
                        raise files.interrupted(received)
                    if last:
                        break
                full = state.batch >= len(run.batches)
                state.epoch, state.batch = (state.epoch + 1, 0) if full else (state.epoch, state.batch)
                if end_epoch(state, files, validate, time.perf_counter() - t_epoch, full, device):
                    break
                t_epoch = time.perf_counter()
    return FitResult.of(state, files, loss_fn.summary(), tuner, run.whole)
