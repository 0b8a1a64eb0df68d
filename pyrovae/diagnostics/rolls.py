"""Sequences from sequence models (``model(x, mask)``): prior draws and reconstructions, read off
the model's observed steps in the order it observes them, as piano rolls (N, T, D).

As for images (:mod:`pyrovae.diagnostics.generate`), a step is the mean of its observed site's
p(x_t | z_t) (a draw where it has none): drawn from the prior by running the model on a blank
batch (its latent path from p(z), for a model whose latent path does not read x, as the deep
Markov model's), or by the model's own ``sample(num, steps)`` (a model whose recurrence reads
its past steps, as the VRNN); reconstructed by replaying the model on one draw of the guide.
"""

from __future__ import annotations

import pyro.poutine as poutine
import torch

from pyrovae.diagnostics.generate import mean_or_draw
from pyrovae.errors import ModelError


def _steps(trace, num: int) -> torch.Tensor:
    """(num, T, D): the mean (or draw) of each observed site of the trace, stacked in order."""
    out = []
    for site in trace.nodes.values():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        out.append(mean_or_draw(site["fn"]).reshape(num, -1))
    if not out:
        raise ModelError("the model observes no site; a sequence model observes each step x_t")
    return torch.stack(out, 1)


@torch.no_grad()
def sequence_samples(model, num: int, steps: int, dim: int, device="cpu") -> torch.Tensor:
    """``num`` sequences of ``steps`` steps (num, steps, dim) from the model's prior: its own
    ``sample(num, steps)``, else the model run on a blank batch with every step observed."""
    if hasattr(model, "sample"):
        return model.sample(num, steps)
    blank = torch.zeros(num, steps, dim, device=device)
    with poutine.block():
        trace = poutine.trace(model).get_trace(blank, torch.ones(num, steps, dtype=torch.bool, device=device))
    return _steps(trace, num)


@torch.no_grad()
def sequence_reconstructions(model, guide, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """E[x_t | z_t] at one draw of z_{1:T} from the guide, zero past each sequence's end."""
    with poutine.block():
        guided = poutine.trace(guide).get_trace(x, mask)
        trace = poutine.trace(poutine.replay(model, trace=guided)).get_trace(x, mask)
    return _steps(trace, x.shape[0]) * mask[..., None]
