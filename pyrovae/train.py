"""fit(): one readable SVI loop over a device-resident dataset, with checkpoints and metrics.

The loss is a training objective of :mod:`pyrovae.objectives` (by default the Monte Carlo
ELBO) divided by the batch size, run through :class:`pyrovae.compile.Compiled` (captured
once per batch shape unless ``train.compile = "none"``) and minimised by a torch optimizer
over the parameters of the model and guide (``nn.Module`` parameters, plus any
``pyro.param`` sites of plain callables). The data are checked once up front; inside the
loop Pyro's argument checks are off and the loss is read back every ``log_every`` steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch import nn
from tqdm import tqdm  # text bar everywhere (tqdm.auto needs ipywidgets in notebooks)

from . import checkpoint as ckpt_io
from . import distributed, estimators
from .compile import Compiled, resolve_mode
from .config import TrainConfig
from .data import VAL_BINARIZATION_SEED, Batches, Split
from .errors import (
    ConfigError,
    DataError,
    Interrupted,
    ModelError,
    NonFiniteError,
    PyrovaeError,
    unknown_name,
)
from .objectives import kl_weight, make_objective

LR_SCHEDULES = ("constant", "exponential", "cosine", "iwae")
NAN_POLICIES = ("stop", "skip")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from e


@dataclass
class FitResult:
    step: int
    epoch: int
    best_val_elbo: float
    metrics: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    compile: str = "none"  #: how the loss ran: see pyrovae.compile.Compiled.summary
    skipped: int = 0  #: steps whose update was skipped for a non-finite loss or gradient


def as_split(data: Split | torch.Tensor) -> Split:
    """Wrap a plain tensor of observations as a Split (no resampling)."""
    if isinstance(data, Split):
        return data
    if isinstance(data, torch.Tensor):
        if data.dim() < 1:
            raise DataError(
                f"data must be a batch of shape (N, ...), got a tensor of shape {tuple(data.shape)}"
            )
        return Split(
            data, torch.full((data.shape[0],), -1, dtype=torch.long, device=data.device), "continuous"
        )
    raise PyrovaeError(f"data must be a pyrovae.data.Split or a torch.Tensor, got {type(data).__name__}")


def _modules(*fns) -> list[nn.Module]:
    return [f for f in fns if isinstance(f, nn.Module)]


def collect_params(model: Callable, guide: Callable, *args) -> list[torch.Tensor]:
    """Every trainable tensor of the pair: module parameters and the unconstrained
    values of ``pyro.param`` sites met while tracing guide and model on ``args``."""
    params: dict[int, torch.Tensor] = {}
    for m in _modules(model, guide):
        for p in m.parameters():
            if p.requires_grad:
                params[id(p)] = p
    with poutine.trace(param_only=True) as tr:
        guide_tr = poutine.trace(guide).get_trace(*args)
        poutine.replay(model, trace=guide_tr)(*args)
    for site in tr.trace.nodes.values():
        value = site["value"]  # a param-store value, or a module's own Parameter
        p = value.unconstrained() if hasattr(value, "unconstrained") else value
        if p.requires_grad:
            params[id(p)] = p
    if not params:
        raise PyrovaeError("the model and guide have no parameters to train")
    return list(params.values())


def _param_store_state() -> dict[str, torch.Tensor]:
    store = pyro.get_param_store()
    return {name: store[name].detach().clone() for name in store.keys()}


def _load_param_store(state: dict[str, torch.Tensor]) -> None:
    """Copy saved constrained values into the live unconstrained tensors (the optimizer holds those)."""
    store = pyro.get_param_store()
    for name, value in state.items():
        if name not in store:
            store[name] = value
            continue
        with torch.no_grad():
            store._params[name].copy_(torch.distributions.transform_to(store._constraints[name]).inv(value))


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, epochs: int):
    if cfg.lr_schedule == "constant":
        return None
    if cfg.lr_schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_gamma)
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    if cfg.lr_schedule == "iwae":
        return torch.optim.lr_scheduler.LambdaLR(opt, iwae_lr_factor)
    raise unknown_name("lr_schedule", cfg.lr_schedule, LR_SCHEDULES)


def iwae_lr_factor(epoch: int) -> float:
    """Burda et al. (2015), sec. 5: 3^i epochs at learning rate lr * 10^(-i/7), i = 0..7 (3280 epochs),
    then the last rate."""
    i, end = 0, 1
    while epoch >= end and i < 7:
        i += 1
        end += 3**i
    return 10 ** (-i / 7)


def model_inputs(model: Callable, images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple:
    """The arguments a model and its guide take for observed ``images``: ``model.inputs(images,
    labels)`` for a conditional model (which defines it), else ``(images,)``."""
    inputs = getattr(model, "inputs", None)
    if inputs is None:
        return (images,)
    return tuple(inputs(images, labels))


def _loss(objective, model, guide, params, mode: str, example: tuple) -> Compiled:
    """loss(*args, beta) = objective / batch size, run through :class:`pyrovae.compile.Compiled`."""
    resolve_mode(mode)
    objective.prepare(model, guide, *example)
    if not objective.capturable:
        if mode not in ("auto", "none"):
            warnings.warn(
                f"compile = {mode!r}: this objective reads values back to the host (Pyro's "
                "ELBO) and is not captured; training runs eagerly",
                RuntimeWarning,
                stacklevel=3,
            )
        mode = "none"

    def loss(*args):
        *data, beta = args
        return objective(model, guide, *data, beta=beta) / data[0].shape[0]

    return Compiled(loss, _modules(model, guide), mode, params=params)


def check_data(model, split: Split, name: str, chunk: int = 8192) -> None:
    """Check all of ``split`` once, chunk by chunk (bounded memory), so that the training loop
    can run with Pyro's validation off."""
    x = split.images
    if x.dim() < 1 or len(split) == 0:
        raise DataError(f"{name} data must be a non-empty batch of shape (N, ...), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise DataError(f"{name} data must be a floating-point tensor, got {x.dtype}; use x.float()")
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        for start in range(0, len(split), chunk):
            part = x[start : start + chunk]
            if not torch.isfinite(part).all():
                raise DataError(f"{name} data contains NaN or inf; clean it first")
            if split.pixels == "dynamic" and ((part < 0) | (part > 1)).any():
                raise DataError(f"{name} data: dynamic binarization needs intensities in [0, 1]")
            if hasattr(model, "check_data"):
                model.check_data(split.observe(slice(start, start + chunk)))


class _Writer:
    """Metrics rows: kept in memory, appended to ``run_dir/metrics.jsonl``, passed to each callback."""

    def __init__(self, run_dir: Path | None, keep: list[dict], callbacks: Iterable[Callable[[dict], object]]):
        self.path = None if run_dir is None else run_dir / "metrics.jsonl"
        self.rows, self.callbacks, self.count = keep, list(callbacks), 0

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` rows of the file (those a checkpoint has seen)."""
        if self.path is not None:
            lines = self.path.read_text().splitlines(keepends=True)[:count] if self.path.exists() else []
            self.path.write_text("".join(lines))
        self.count = count

    def __call__(self, row: dict) -> bool:
        """Record ``row``; True when a callback asks to stop (by returning True)."""
        self.rows.append(row)
        self.count += 1
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        return any([bool(cb(row)) for cb in self.callbacks])


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
) -> FitResult:
    """Train ``model``/``guide`` by SVI on ``train``; validate on ``val`` each epoch.

    ``model(x)`` and ``guide(x)`` are any Pyro callables with a ``"data"`` plate; the data
    and the pair's sample sites are checked before the first step. With ``run_dir`` the run
    writes ``versions.json``, ``metrics.jsonl``, ``curves.png``, ``checkpoints/step-N.pt``
    (every ``config.checkpoint_every`` steps and each epoch, atomically; the last
    ``keep_checkpoints`` kept), ``checkpoint.pt`` (the newest of them) and ``best.pt`` (best
    validation ELBO); ``record`` (e.g. the full experiment config) is stored inside each
    checkpoint. ``resume=True`` continues from the newest readable checkpoint to the same
    final step; SIGINT and SIGTERM save a checkpoint and raise :class:`Interrupted`. A
    non-finite loss or gradient never updates the parameters: ``nan_policy = "stop"`` raises
    :class:`NonFiniteError` naming the step and the site, ``"skip"`` counts the skipped steps.
    Each callback receives every metrics row; one that returns True on an epoch row
    ends training after that epoch (e.g. a time budget).

    Inside a torch.distributed process group (``torchrun``, :mod:`pyrovae.distributed`) each
    rank trains on its shard of every global batch of ``batch_size * world size`` datapoints,
    with its own noise (seed + rank * 1,000,003), gradients averaged by
    DistributedDataParallel (the loss runs eagerly: ``compile`` does not apply); rank 0 alone
    writes files, and the checkpoints hold every rank's random state.
    """
    cfg = config
    if cfg.nan_policy not in NAN_POLICIES:
        raise unknown_name("nan_policy", cfg.nan_policy, NAN_POLICIES)
    device = resolve_device(device)
    rank, world = distributed.world()
    main = rank == 0
    pyro.set_rng_seed(distributed.rank_seed(seed, rank))
    for m in _modules(model, guide):
        m.to(device)
    train, val = as_split(train).to(device), None if val is None else as_split(val).to(device)
    check_data(model, train, "training")
    if val is not None:
        check_data(model, val, "validation")
    conditional = hasattr(model, "inputs")
    example = model_inputs(model, train.observe(slice(0, 2)), train.labels[:2])
    check_sites(model, guide, *example)
    batches = Batches(train, cfg.batch_size, seed=seed, rank=rank, world=world)
    steps_per_epoch = len(batches)
    total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    if total_steps < 1:
        raise ConfigError("nothing to train: set train.epochs or train.max_steps to a positive number")

    objective = make_objective(cfg.objective, num_particles=cfg.num_particles, k=cfg.k)
    params = collect_params(model, guide, *example)
    if world > 1:
        in_modules = {id(p) for m in _modules(model, guide) for p in m.parameters()}
        if any(id(p) not in in_modules for p in params):
            raise ConfigError(
                "distributed training all-reduces the gradients of nn.Module parameters; keep every "
                "trained tensor in the model's or guide's modules, not in pyro.param"
            )
        if cfg.compile not in ("auto", "none"):
            warnings.warn(
                f"compile = {cfg.compile!r} does not apply under torch.distributed: the loss runs "
                "eagerly inside DistributedDataParallel",
                RuntimeWarning,
                stacklevel=2,
            )
    loss_fn = _loss(objective, model, guide, params, "none" if world > 1 else cfg.compile, example)
    beta_t = torch.ones((), device=device)
    # fused Adam skips a step's update when told the gradient is not finite (found_inf), with no host read
    opt = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay, fused=True)
    sched = _scheduler(opt, cfg, epochs)
    guard = _Guard(device)

    run_dir = None if run_dir is None else Path(run_dir)
    rows: list[dict] = []
    write = _Writer(run_dir if main else None, rows, callbacks)
    step, epoch, start_batch, best, bad_epochs, skipped = 0, 0, 0, -math.inf, 0, 0
    last_checkpoint: Path | None = None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            state, last_checkpoint = ckpt_io.load_latest(run_dir, map_location=device)
            if last_checkpoint.name != "checkpoint.pt":
                warnings.warn(
                    f"{run_dir / 'checkpoint.pt'} could not be read; resuming from {last_checkpoint} "
                    f"(step {state['step']})",
                    RuntimeWarning,
                    stacklevel=2,
                )
            for m, key in ((model, "model"), (guide, "guide")):
                if isinstance(m, nn.Module):
                    m.load_state_dict(state[key])
            _load_param_store(state["params"])
            opt.load_state_dict(state["optimizer"])
            if sched is not None and state["scheduler"] is not None:
                sched.load_state_dict(state["scheduler"])
            step, epoch, start_batch = state["step"], state["epoch"], state["batch"]
            best, bad_epochs, skipped = state["best_val_elbo"], state["bad_epochs"], state.get("skipped", 0)
            ranks = state.get("rng_ranks")
            if world == 1 or (ranks is not None and len(ranks) == world):
                ckpt_io.set_rng_state(state["rng"] if world == 1 else ranks[rank])
            else:  # saved by another number of ranks: fresh, still independent, streams
                warnings.warn(
                    f"{last_checkpoint} was written by {len(ranks or [0])} rank(s), not {world}: the "
                    "random streams restart (the run continues, not bit for bit)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                pyro.set_rng_seed(distributed.rank_seed(seed + step, rank))
            if "metrics_rows" in state:  # rows written after that checkpoint are written again
                write.truncate(state["metrics_rows"])
        elif main:
            write.truncate(0)
            (run_dir / "versions.json").write_text(json.dumps(ckpt_io.versions(), indent=2) + "\n")
    step_loss = loss_fn if world == 1 else distributed.wrap(loss_fn, _modules(model, guide), device)

    def snapshot(rng_ranks: list | None = None) -> dict:
        return {
            "format": ckpt_io.FORMAT,
            "record": record or {},
            "train_config": dataclasses.asdict(cfg),
            "model": model.state_dict() if isinstance(model, nn.Module) else {},
            "guide": guide.state_dict() if isinstance(guide, nn.Module) else {},
            "params": _param_store_state(),
            "optimizer": opt.state_dict(),
            "scheduler": None if sched is None else sched.state_dict(),
            "step": step,
            "epoch": epoch,
            "batch": start_batch,
            "best_val_elbo": best,
            "bad_epochs": bad_epochs,
            "skipped": skipped,
            "metrics_rows": write.count,
            "rng": ckpt_io.rng_state(),
            "versions": ckpt_io.versions(),
            "world_size": world,
            "rng_ranks": rng_ranks,
        }

    def save_checkpoint() -> None:
        nonlocal last_checkpoint
        if run_dir is None:
            return
        rng_ranks = distributed.gather_objects(ckpt_io.rng_state()) if world > 1 else None
        if main:
            last_checkpoint = ckpt_io.save_step(snapshot(rng_ranks), run_dir, step, keep=cfg.keep_checkpoints)
        else:
            last_checkpoint = ckpt_io.step_path(run_dir, step)

    val_x = (
        None
        if val is None
        else model_inputs(model, val.observe_fixed(seed + VAL_BINARIZATION_SEED), val.labels)
    )

    def validate() -> float:
        # A forked RNG: validating never changes the random stream training continues with,
        # so a run stopped and resumed anywhere matches one that never stopped. Reseeded, so
        # every epoch is scored with the same draws and epochs differ only by the model.
        # Under torch.distributed each rank scores its part of the data and the sums are shared.
        with (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            pyro.validation_enabled(False),
        ):
            torch.manual_seed(distributed.rank_seed(seed + VAL_BINARIZATION_SEED, rank))
            for m in _modules(model, guide):
                m.eval()
            part = tuple(distributed.shard(a, rank, world) for a in val_x)
            elbos = estimators.elbo(model, guide, *part, num_samples=cfg.val_samples, data_chunk=2000)
            total = distributed.all_sum(
                torch.stack(
                    [
                        elbos.double().sum(),
                        torch.tensor(float(len(elbos)), dtype=torch.float64, device=elbos.device),
                    ]
                )
            )
            for m in _modules(model, guide):
                m.train()
        return (total[0] / total[1]).item()

    def check_finite(x: torch.Tensor) -> None:
        """Read the device-side count of non-finite steps (a host sync) and act on new ones."""
        nonlocal skipped
        total = int(guard.count)
        if total > skipped and cfg.nan_policy == "stop":
            first = int(guard.first)
            where = diagnose_nonfinite(model, guide, x, params)
            raise NonFiniteError(
                f"the loss or its gradient was not finite at step {first} ({where}); that step's update was "
                f"not applied and training stopped at step {step}. Last good checkpoint: "
                f"{last_checkpoint or 'none (no run directory)'}. Lower train.lr, set train.grad_clip, check the "
                'data, or set train.nan_policy = "skip" to skip such batches'
            )
        skipped = total

    # on CPU reading the flag costs nothing, so a stop comes at the step itself; on CUDA every log_every steps
    check_every = 1 if device.type == "cpu" and cfg.nan_policy == "stop" else cfg.log_every
    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=(not main) or (not progress if progress is not None else None),
        desc="fit",
        unit="step",
        mininterval=1.0,
    )
    running, running_n = torch.zeros((), device=device), torch.zeros((), device=device)
    t_epoch = time.perf_counter()
    stop = step >= total_steps
    guard.count.fill_(skipped)
    # the data were checked once above; Pyro's per-step argument checks would only repeat that
    agree = distributed.all_max if world > 1 else None
    with pyro.validation_enabled(False), _Signals(enabled=run_dir is not None) as signals:
        while not stop and epoch < epochs:
            for batch in batches.epoch(epoch, start_batch, labels=conditional):
                x = model_inputs(model, *batch) if conditional else (batch,)
                beta = kl_weight(
                    step,
                    schedule=cfg.kl_schedule,
                    beta=cfg.beta,
                    warmup_steps=cfg.warmup_steps,
                    total_steps=total_steps,
                    cycles=cfg.cycles,
                    cycle_ratio=cfg.cycle_ratio,
                )
                # a captured loss takes beta as a tensor input, so a schedule never forces a new capture
                loss = step_loss(*x, beta_t.fill_(beta) if loss_fn.mode != "none" else beta)
                opt.zero_grad(set_to_none=True)
                if world > 1:  # DDP averages over ranks: weigh each rank's mean by its share of the batch
                    (loss * distributed.loss_scale(x[0].shape[0], batches.total(start_batch))).backward()
                else:
                    loss.backward()
                bad = guard.update(loss, params, step + 1, cfg.grad_clip, agree)
                opt.found_inf = guard.found
                opt.step()
                step, start_batch = step + 1, start_batch + 1
                running += torch.where(bad, 0.0, loss.detach())
                running_n += ~bad
                if step % check_every == 0 or step == total_steps:
                    check_finite(x)
                if step % cfg.log_every == 0 or step == total_steps:  # checked just above
                    sums = distributed.all_sum(torch.stack([running, running_n.to(running.dtype)]))
                    good = int(sums[1])
                    mean_loss = (sums[0] / good).item() if good else None
                    row = {
                        "kind": "step",
                        "step": step,
                        "epoch": epoch,
                        "loss": mean_loss,
                        "beta": beta,
                        "lr": opt.param_groups[0]["lr"],
                        "skipped": skipped,
                    }
                    write(row)
                    if mean_loss is not None:
                        bar.set_postfix(loss=f"{mean_loss:.2f}")
                    running.zero_()
                    running_n.zero_()
                bar.update(1)
                if run_dir is not None and step % cfg.checkpoint_every == 0:
                    check_finite(x)
                    save_checkpoint()
                received = signals.received
                if world > 1:  # every rank stops at the same step: agreed at logging steps
                    received = None
                    if step % cfg.log_every == 0 or step == total_steps:
                        flag = distributed.all_max(torch.tensor(float(signals.received or 0), device=device))
                        received = int(flag) or None
                if received is not None:
                    check_finite(x)
                    save_checkpoint()
                    name = signal.Signals(received).name
                    raise Interrupted(
                        f"training stopped by {name} at step {step}; checkpoint saved to "
                        f"{last_checkpoint}; continue with `pyrovae fit --resume {run_dir}`",
                        received,
                    )
                if step >= total_steps:
                    stop = True
                    break
            seconds = time.perf_counter() - t_epoch
            full_epoch = start_batch >= steps_per_epoch
            epoch, start_batch = (epoch + 1, 0) if full_epoch else (epoch, start_batch)
            row = {"kind": "epoch", "step": step, "epoch": epoch, "seconds": seconds, "skipped": skipped}
            if val_x is not None:
                row["val_elbo"] = validate()
                if row["val_elbo"] > best:
                    best, bad_epochs = row["val_elbo"], 0
                    if run_dir is not None and main:
                        ckpt_io.atomic_save(snapshot(), run_dir / "best.pt")
                else:
                    bad_epochs += 1
            if sched is not None and full_epoch:
                sched.step()
            asked_to_stop = write(row)
            if world > 1:  # a callback on one rank (a time budget) stops them all
                asked_to_stop = bool(distributed.all_max(torch.tensor(float(asked_to_stop), device=device)))
            save_checkpoint()
            if run_dir is not None and main:
                from .plots import plot_curves

                plot_curves(read_metrics(run_dir), run_dir / "curves.png")
            if asked_to_stop or (cfg.early_stopping is not None and bad_epochs >= cfg.early_stopping):
                break
            t_epoch = time.perf_counter()
    bar.close()
    return FitResult(
        step=step,
        epoch=epoch,
        best_val_elbo=best,
        metrics=rows,
        run_dir=run_dir,
        compile=loss_fn.summary(),
        skipped=skipped,
    )


class _Guard:
    """Non-finite losses and gradients, found on the device with no host read: a step whose loss
    or gradient norm is not finite is marked in ``found`` (fused Adam then skips its update),
    counted in ``count``, and the first such step kept in ``first``."""

    def __init__(self, device: torch.device):
        self.found = torch.zeros((), device=device)
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self.first = torch.full((), -1, dtype=torch.long, device=device)

    def update(
        self,
        loss: torch.Tensor,
        params: list[torch.Tensor],
        step: int,
        clip: float | None,
        agree: Callable | None = None,
    ) -> torch.Tensor:
        """``agree`` (all ranks' maximum, under torch.distributed) makes every rank skip the same steps."""
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.count.device)
        bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(norm))
        if agree is not None:
            bad = agree(bad.float()) > 0
        if clip is not None and grads:
            torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
        self.count += bad
        self.first = torch.where(bad & (self.first < 0), step, self.first)
        self.found = bad.to(self.found.dtype)
        return bad


def diagnose_nonfinite(
    model: Callable, guide: Callable, x: tuple | torch.Tensor, params: list[torch.Tensor]
) -> str:
    """Where a non-finite loss came from, on a re-run of batch ``x`` (the model's arguments): the first non-finite
    parameter, sample value or log-density (guide sites first, as they run first), else the
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
            traces = estimators.inspection_traces(model, guide, x if isinstance(x, tuple) else (x,), {})
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


def check_sites(model: Callable, guide: Callable, *args) -> None:
    """Raise ModelError unless every latent sample site of the model is sampled by the guide
    and the guide samples nothing the model lacks (Pyro only warns)."""
    with pyro.validation_enabled(False):
        guide_tr, model_tr = estimators.inspection_traces(model, guide, args, {})

    def latent(tr):
        return {
            n
            for n, s in tr.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
        }

    in_model, in_guide = latent(model_tr), latent(guide_tr)
    if in_model != in_guide:
        parts = []
        if in_model - in_guide:
            parts.append(f"the guide does not sample {sorted(in_model - in_guide)}")
        if in_guide - in_model:
            parts.append(f"the model has no site {sorted(in_guide - in_model)}")
        raise ModelError(
            f"model and guide do not match: {'; '.join(parts)} (model latent sites "
            f"{sorted(in_model)}, guide sites {sorted(in_guide)}); give the guide one "
            "sample site per latent site of the model, with the same names"
        )


class _Signals:
    """While active (in the main thread), SIGINT and SIGTERM only set ``received``: the loop
    saves a checkpoint and stops at the end of the step."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> "_Signals":
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
