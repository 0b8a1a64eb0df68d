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
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pyro
import pyro.poutine as poutine
import torch
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt_io
from .compile import Compiled, resolve_mode
from . import estimators
from .config import TrainConfig
from .data import VAL_BINARIZATION_SEED, Batches, Split
from .errors import ConfigError, PyrovaeError, unknown_name
from .objectives import kl_weight, make_objective

LR_SCHEDULES = ("constant", "exponential", "cosine", "iwae")


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


def as_split(data: Split | torch.Tensor) -> Split:
    """Wrap a plain tensor of observations as a Split (no resampling)."""
    if isinstance(data, Split):
        return data
    if isinstance(data, torch.Tensor):
        return Split(data, torch.full((data.shape[0],), -1, dtype=torch.long, device=data.device), "continuous")
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
        end += 3 ** i
    return 10 ** (-i / 7)


def _loss(objective, model, guide, params, mode: str, example: torch.Tensor) -> Compiled:
    """loss(x, beta) = objective / batch size, run through :class:`pyrovae.compile.Compiled`."""
    resolve_mode(mode)
    objective.prepare(model, guide, example)
    if not objective.capturable:
        if mode not in ("auto", "none"):
            warnings.warn(f"compile = {mode!r}: this objective reads values back to the host (Pyro's "
                          "ELBO) and is not captured; training runs eagerly", RuntimeWarning, stacklevel=3)
        mode = "none"

    def loss(x, beta):
        return objective(model, guide, x, beta=beta) / x.shape[0]
    return Compiled(loss, _modules(model, guide), mode, params=params)


def _check_data(model, split: Split, name: str, chunk: int = 8192) -> None:
    """Check all of ``split`` once, chunk by chunk (bounded memory), so that the training loop
    can run with Pyro's validation off."""
    x = split.images
    if x.dim() < 1 or len(split) == 0:
        raise PyrovaeError(f"{name} data must be a non-empty batch of shape (N, ...), got {tuple(x.shape)}")
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        for start in range(0, len(split), chunk):
            part = x[start:start + chunk]
            if not torch.isfinite(part).all():
                raise PyrovaeError(f"{name} data contains NaN or inf; clean it before training")
            if split.pixels == "dynamic" and ((part < 0) | (part > 1)).any():
                raise PyrovaeError(f"{name} data: dynamic binarization needs intensities in [0, 1]")
            if hasattr(model, "check_data"):
                model.check_data(split.observe(slice(start, start + chunk)))


class _Writer:
    """Metrics rows: kept in memory, appended to ``run_dir/metrics.jsonl``, passed to each callback."""

    def __init__(self, run_dir: Path | None, keep: list[dict], callbacks: Iterable[Callable[[dict], object]]):
        self.path = None if run_dir is None else run_dir / "metrics.jsonl"
        self.rows, self.callbacks = keep, list(callbacks)

    def __call__(self, row: dict) -> bool:
        """Record ``row``; True when a callback asks to stop (by returning True)."""
        self.rows.append(row)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        return any([bool(cb(row)) for cb in self.callbacks])


def fit(model: Callable, guide: Callable, train: Split | torch.Tensor, val: Split | torch.Tensor | None = None,
        *, config: TrainConfig = TrainConfig(), seed: int = 0, device: str | torch.device | None = "auto",
        run_dir: str | Path | None = None, record: dict | None = None, resume: bool = False,
        progress: bool | None = None, callbacks: Iterable[Callable[[dict], object]] = ()) -> FitResult:
    """Train ``model``/``guide`` by SVI on ``train``; validate on ``val`` each epoch.

    ``model(x)`` and ``guide(x)`` are any Pyro callables with a ``"data"`` plate.
    With ``run_dir`` the run writes ``metrics.jsonl``, ``curves.png``, ``checkpoint.pt``
    (every ``config.checkpoint_every`` steps and each epoch) and ``best.pt`` (best
    validation ELBO); ``record`` (e.g. the full experiment config) is stored inside
    each checkpoint. ``resume=True`` continues from ``run_dir/checkpoint.pt``.
    Each callback receives every metrics row; one that returns True on an epoch row
    ends training after that epoch (e.g. a time budget).
    """
    cfg = config
    device = resolve_device(device)
    pyro.set_rng_seed(seed)
    for m in _modules(model, guide):
        m.to(device)
    train, val = as_split(train).to(device), None if val is None else as_split(val).to(device)
    _check_data(model, train, "training")
    if val is not None:
        _check_data(model, val, "validation")
    batches = Batches(train, cfg.batch_size, seed=seed)
    steps_per_epoch = len(batches)
    total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    if total_steps < 1:
        raise ConfigError("nothing to train: set train.epochs or train.max_steps to a positive number")

    objective = make_objective(cfg.objective, num_particles=cfg.num_particles, k=cfg.k)
    params = collect_params(model, guide, train.observe(slice(0, 2)))
    loss_fn = _loss(objective, model, guide, params, cfg.compile, train.observe(slice(0, 2)))
    beta_t = torch.ones((), device=device)
    opt = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    sched = _scheduler(opt, cfg, epochs)

    run_dir = None if run_dir is None else Path(run_dir)
    rows: list[dict] = []
    write = _Writer(run_dir, rows, callbacks)
    step, epoch, start_batch, best, bad_epochs = 0, 0, 0, -math.inf, 0
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            state = ckpt_io.load(run_dir / "checkpoint.pt", map_location=device)
            for m, key in ((model, "model"), (guide, "guide")):
                if isinstance(m, nn.Module):
                    m.load_state_dict(state[key])
            _load_param_store(state["params"])
            opt.load_state_dict(state["optimizer"])
            if sched is not None and state["scheduler"] is not None:
                sched.load_state_dict(state["scheduler"])
            step, epoch, start_batch = state["step"], state["epoch"], state["batch"]
            best, bad_epochs = state["best_val_elbo"], state["bad_epochs"]
            ckpt_io.set_rng_state(state["rng"])
        elif (run_dir / "metrics.jsonl").exists():
            (run_dir / "metrics.jsonl").unlink()

    def save(name: str) -> None:
        if run_dir is None:
            return
        ckpt_io.atomic_save({
            "format": ckpt_io.FORMAT, "record": record or {}, "train_config": dataclasses.asdict(cfg),
            "model": model.state_dict() if isinstance(model, nn.Module) else {},
            "guide": guide.state_dict() if isinstance(guide, nn.Module) else {},
            "params": _param_store_state(), "optimizer": opt.state_dict(),
            "scheduler": None if sched is None else sched.state_dict(),
            "step": step, "epoch": epoch, "batch": start_batch, "best_val_elbo": best,
            "bad_epochs": bad_epochs, "rng": ckpt_io.rng_state(), "versions": ckpt_io.versions(),
        }, run_dir / name)

    val_x = None if val is None else val.observe_fixed(seed + VAL_BINARIZATION_SEED)

    def validate() -> float:
        # A forked RNG: validating never changes the random stream training continues with,
        # so a run stopped and resumed anywhere matches one that never stopped. Reseeded, so
        # every epoch is scored with the same draws and epochs differ only by the model.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                pyro.validation_enabled(False):
            torch.manual_seed(seed + VAL_BINARIZATION_SEED)
            for m in _modules(model, guide):
                m.eval()
            v = estimators.elbo(model, guide, val_x, num_samples=cfg.val_samples, data_chunk=2000).mean().item()
            for m in _modules(model, guide):
                m.train()
        return v

    bar = tqdm(total=total_steps, initial=step, disable=not progress if progress is not None else None,
               desc="fit", unit="step", mininterval=1.0)
    running, running_n, t_epoch = torch.zeros((), device=device), 0, time.perf_counter()
    stop = step >= total_steps
    # the data were checked once above; Pyro's per-step argument checks would only repeat that
    with pyro.validation_enabled(False):
        while not stop and epoch < epochs:
            for x in batches.epoch(epoch, start_batch):
                beta = kl_weight(step, schedule=cfg.kl_schedule, beta=cfg.beta, warmup_steps=cfg.warmup_steps,
                                 total_steps=total_steps, cycles=cfg.cycles, cycle_ratio=cfg.cycle_ratio)
                # a captured loss takes beta as a tensor input, so a schedule never forces a new capture
                loss = loss_fn(x, beta_t.fill_(beta) if loss_fn.mode != "none" else beta)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                step, start_batch = step + 1, start_batch + 1
                running += loss.detach()
                running_n += 1
                if step % cfg.log_every == 0 or step == total_steps:
                    mean_loss = (running / running_n).item()
                    if not math.isfinite(mean_loss):
                        raise PyrovaeError(f"the training loss became {mean_loss} by step {step}; lower the "
                                           f"learning rate or set train.grad_clip (last checkpoint: "
                                           f"{run_dir / 'checkpoint.pt' if run_dir else 'none'})")
                    row = {"kind": "step", "step": step, "epoch": epoch, "loss": mean_loss, "beta": beta,
                           "lr": opt.param_groups[0]["lr"]}
                    write(row)
                    bar.set_postfix(loss=f"{mean_loss:.2f}")
                    running, running_n = torch.zeros((), device=device), 0
                bar.update(1)
                if run_dir is not None and step % cfg.checkpoint_every == 0:
                    save("checkpoint.pt")
                if step >= total_steps:
                    stop = True
                    break
            seconds = time.perf_counter() - t_epoch
            full_epoch = start_batch >= steps_per_epoch
            epoch, start_batch = (epoch + 1, 0) if full_epoch else (epoch, start_batch)
            row = {"kind": "epoch", "step": step, "epoch": epoch, "seconds": seconds}
            if val_x is not None:
                row["val_elbo"] = validate()
                if row["val_elbo"] > best:
                    best, bad_epochs = row["val_elbo"], 0
                    save("best.pt")
                else:
                    bad_epochs += 1
            if sched is not None and full_epoch:
                sched.step()
            asked_to_stop = write(row)
            save("checkpoint.pt")
            if run_dir is not None:
                from .plots import plot_curves

                plot_curves(read_metrics(run_dir), run_dir / "curves.png")
            if asked_to_stop or (cfg.early_stopping is not None and bad_epochs >= cfg.early_stopping):
                break
            t_epoch = time.perf_counter()
    bar.close()
    return FitResult(step=step, epoch=epoch, best_val_elbo=best, metrics=rows, run_dir=run_dir,
                     compile=loss_fn.summary())


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
