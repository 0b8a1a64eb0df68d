"""What a run trains and how: the trainable tensors of a model/guide pair, Adam, and the
learning-rate schedules."""

from __future__ import annotations

from typing import Callable

import pyro
import pyro.poutine as poutine
import torch
from torch import nn

from pyrovae.errors import ConfigError, PyrovaeError, unknown_name
from pyrovae.hooks import owner_modules

LR_SCHEDULES = ("constant", "exponential", "cosine", "iwae")


def hold_fixed(model: Callable, guide: Callable, train_only: list[str]) -> None:
    """Train only the module parameters named under ``train_only`` (``"model.prior"`` covers
    ``model.prior.*``): every other parameter of model and guide stops requiring a gradient. An
    empty list changes nothing; a name matching no parameter is a ConfigError."""
    if not train_only:
        return
    named = [
        (f"{k}.{n}", p)
        for k, m in (("model", model), ("guide", guide))
        if isinstance(m, nn.Module)
        for n, p in m.named_parameters()
    ]
    under = lambda name, pre: name == pre or name.startswith(pre + ".")
    unknown = [pre for pre in train_only if not any(under(n, pre) for n, _ in named)]
    if unknown:
        tops = sorted({".".join(n.split(".")[:2]) for n, _ in named})
        raise ConfigError(f"train.train_only names {unknown}, which hold no parameter; modules: {tops}")
    for name, p in named:
        p.requires_grad_(any(under(name, pre) for pre in train_only))


def collect_params(model: Callable, guide: Callable, *args) -> list[torch.Tensor]:
    """Every trainable tensor of the pair: the parameters of the modules behind model and guide
    (:func:`pyrovae.hooks.owner_modules`), then the tensors of ``pyro.param`` sites met while
    tracing guide and model on ``args``: a module's own parameter where the site registers one
    (``pyro.module``, a PyroModule in Pyro's global-parameter mode), else the unconstrained
    value in Pyro's param store."""
    params: dict[int, torch.Tensor] = {}
    for m in owner_modules(model, guide):
        for p in m.parameters():
            if p.requires_grad:
                params[id(p)] = p
    with poutine.trace(param_only=True) as tr, pyro.validation_enabled(False):  # the data were checked
        guide_tr = poutine.trace(guide).get_trace(*args)
        poutine.replay(model, trace=guide_tr)(*args)
    for site in tr.trace.nodes.values():
        init = site["args"][1] if len(site["args"]) > 1 else None
        value = init if isinstance(init, nn.Parameter) else site["value"]
        p = value.unconstrained() if hasattr(value, "unconstrained") else value
        if p.requires_grad:
            params[id(p)] = p
    if not params:
        raise PyrovaeError("the model and guide have no parameters to train")
    return list(params.values())


def make_optimizer(params: list[torch.Tensor], cfg) -> torch.optim.Adam:
    """Adam over ``params``, fused: it skips a step's update when told the gradient is not
    finite (``found_inf``), with no host read."""
    return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay, fused=True)


def make_scheduler(opt: torch.optim.Optimizer, cfg, epochs: int):
    """The learning-rate schedule ``cfg.lr_schedule``, stepped once per epoch (None: constant)."""
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
