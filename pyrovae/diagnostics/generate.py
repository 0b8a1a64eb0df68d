"""Images from any Pyro model, with or without ``sample`` / ``decode`` methods of its own.

A model p(z) p(x | z) that observes its data at one site is enough: drawn from the prior by
running it alone (its latent sites drawn from p(z), the observed site's p(x | z) read, never
its value), and decoded at given latent values by replaying it on them; the image is the mean
of the observed site's distribution (a draw where it has none). Reconstructions of such a
model set every latent site to its posterior mean under the guide, in the guide's order (each
later site's mean given the earlier means; a discrete site at its draw), so a model of several
sites is decoded from all of them, not from the last one alone.
"""

from __future__ import annotations

import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from pyrovae import hooks
from pyrovae.diagnostics.latent import batched_posterior_means
from pyrovae.errors import ModelError
from pyrovae.inference.weights import given_trace


def _latent(trace) -> list[str]:
    return [
        n
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    ]


def _image(trace, like: torch.Tensor) -> torch.Tensor:
    """The mean of the one observed site (a draw where it has no mean), shaped as ``like``."""
    observed = [s for s in trace.nodes.values() if s["type"] == "sample" and s["is_observed"]]
    if len(observed) != 1:
        raise ModelError(
            f"the model observes {len(observed)} sites; drawing images needs one (or give the model "
            "sample(num) and decode(z) methods)"
        )
    value = mean_or_draw(observed[0]["fn"])
    return (
        value.reshape(like.shape[0], *like.shape[1:]).clamp(0, 1) if value.numel() == like.numel() else value
    )


def mean_or_draw(fn) -> torch.Tensor:
    """The mean of the distribution ``fn``, or a draw from it where it has none."""
    try:
        return fn.mean
    except NotImplementedError:
        return fn.sample()


def site_names(model, guide, x: torch.Tensor) -> list[str]:
    """The latent sites a model declares (``latent_sites``), else those its guide samples, in order."""
    if hasattr(model, "latent_sites"):
        return list(hooks.latent_sites(model))
    with torch.no_grad(), poutine.block():
        return _latent(poutine.trace(guide).get_trace(x[:2]))


@torch.no_grad()
def prior_images(model, num: int, x_shape, device="cpu") -> torch.Tensor:
    """``num`` images (num, *x_shape) drawn from the model's prior: its own ``sample(num)``, else
    the model run on a blank batch of that shape (its observed site's p(x | z) read, at z drawn
    from the prior)."""
    if hasattr(model, "sample"):
        return model.sample(num).reshape(num, *x_shape)
    blank = torch.zeros(num, *x_shape, device=device)
    with poutine.block():
        return _image(poutine.trace(model).get_trace(blank), blank)


@torch.no_grad()
def posterior_means(model, guide, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The posterior mean of every latent site of the guide, each given the earlier ones' means."""
    means: dict[str, torch.Tensor] = {}
    with poutine.block():
        for _ in range(len(site_names(model, guide, x)) or 1):
            tr = poutine.trace(poutine.replay(guide, trace=given_trace(means))).get_trace(x)
            name = next((n for n in _latent(tr) if n not in means), None)
            if name is None:
                break
            site = tr.nodes[name]
            if site["fn"].has_enumerate_support or not site["value"].is_floating_point():
                means[name] = site["value"]  # a discrete site: its draw, not an average of values
                continue
            try:
                means[name] = site["fn"].mean
            except NotImplementedError:
                means[name] = site["fn"].sample((256,)).mean(0)
    return means


@torch.no_grad()
def reconstructions(model, guide, x: torch.Tensor) -> torch.Tensor:
    """E[x | z]: the model's ``decode`` of the posterior mean at its code site where it has one
    (its other sites as the guide draws them), else the model replayed on every latent site at
    its posterior mean (a discrete site at its draw)."""
    if hasattr(model, "decode"):
        return model.decode(batched_posterior_means(guide, x, site=hooks.code_site(model)))
    means = posterior_means(model, guide, x)
    with poutine.block():
        return _image(poutine.trace(poutine.replay(model, trace=given_trace(means))).get_trace(x), x)
