"""Latent plots: posterior means by label, the decoded manifold of a 2-D code, traversals,
interpolations and image grids."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import pyro
import torch

from pyrovae.diagnostics import plots
from pyrovae.errors import ModelError
from pyrovae.hooks import code_site


@torch.no_grad()
def batched_posterior_means(guide, *args: torch.Tensor, site: str = "z", batch: int = 1000) -> torch.Tensor:
    """E_q[z | args] read off the guide's distribution at ``site`` (for a site below another
    latent, at the sampled value of the one above; the mean of 256 draws where it has no mean in
    closed form, as a flow), ``batch`` datapoints at a time."""
    n = args[0].shape[0]
    return torch.cat(
        [_mean(pyro.poutine.trace(guide).get_trace(*(a[i : i + batch] for a in args)).nodes[site]["fn"])
         for i in range(0, n, batch)]
    )  # fmt: skip


def _mean(fn, draws: int = 256) -> torch.Tensor:
    try:
        return fn.mean
    except NotImplementedError:
        return fn.sample((draws,)).mean(0)


def _decoder(model, decode: Callable | None) -> Callable:
    return decode or model.decode


@torch.no_grad()
def posterior_means(
    model, guide, x: torch.Tensor, *condition: torch.Tensor, site: str | None = None
) -> torch.Tensor:
    """E_q[z | x] at ``site`` (default: the code site ``model.decode`` takes), (N, D)."""
    return batched_posterior_means(guide, x, *condition, site=site or code_site(model))


def plot_latent_means(
    model,
    guide,
    x: torch.Tensor,
    *condition: torch.Tensor,
    labels: torch.Tensor | None = None,
    site: str | None = None,
    ax=None,
):
    """Scatter of posterior means coloured by label (first two principal components when D > 2)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5)) if ax is None else (ax.figure, ax)
    plots.latent_scatter(posterior_means(model, guide, x, *condition, site=site), labels, ax)
    fig.tight_layout()
    return fig


def plot_manifold(model, n: int = 20, decode: Callable | None = None, ax=None):
    """E[x | z] on an n x n grid of a 2-D code at the N(0, 1) quantiles 0.05..0.95
    (Kingma & Welling 2013, fig. 4)."""
    import matplotlib.pyplot as plt

    dim = model.latent_dim if isinstance(model.latent_dim, int) else model.latent_dim[-1]
    if dim != 2:
        raise ModelError(
            f"the manifold grid needs a 2-D code; this model's has {dim} dimensions "
            "(use plot_latent_means, traversals or interpolate)"
        )
    param = next(model.parameters())
    images = plots.manifold_grid(_decoder(model, decode), n, param.device, param.dtype)
    fig, ax = plt.subplots(figsize=(7, 7)) if ax is None else (ax.figure, ax)
    plots.show_grid(images, ax, nrow=n, title="decoded manifold of the 2-D code")
    return fig


@torch.no_grad()
def traversals(
    model,
    guide,
    x: torch.Tensor,
    *condition: torch.Tensor,
    dims: Sequence[int] | None = None,
    span: float = 3.0,
    steps: int = 9,
    decode: Callable | None = None,
) -> torch.Tensor:
    """Decode E_q[z | x] of the first datapoint with one unit at a time set to ``steps`` values
    in [-span, span] (the others held): shape ``(len(dims) * steps, *image_shape)``, one row per unit."""
    z0 = posterior_means(model, guide, x[:1], *(c[:1] for c in condition))
    dims = list(range(z0.shape[-1])) if dims is None else list(dims)
    values = torch.linspace(-span, span, steps, device=z0.device, dtype=z0.dtype)
    z = z0.repeat(len(dims) * steps, 1)
    for row, d in enumerate(dims):
        z[row * steps : (row + 1) * steps, d] = values
    return _decoder(model, decode)(z)


@torch.no_grad()
def interpolate(
    model,
    guide,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    *condition: torch.Tensor,
    steps: int = 10,
    decode: Callable | None = None,
) -> torch.Tensor:
    """Decode codes on the line from E_q[z | x_a] to E_q[z | x_b] (single datapoints, batch
    shape (1, ...)): shape ``(steps, *image_shape)``."""
    za = posterior_means(model, guide, x_a, *condition)
    zb = posterior_means(model, guide, x_b, *condition)
    t = torch.linspace(0, 1, steps, device=za.device, dtype=za.dtype)[:, None]
    return _decoder(model, decode)((1 - t) * za + t * zb)


def plot_images(images: torch.Tensor, nrow: int, title: str | None = None, ax=None):
    """A grid of images in a figure (for traversals, interpolations, samples)."""
    import matplotlib.pyplot as plt

    rows = math.ceil(images.shape[0] / nrow)
    fig, ax = plt.subplots(figsize=(nrow * 0.8, rows * 0.8 + 0.5)) if ax is None else (ax.figure, ax)
    plots.show_grid(images, ax, nrow=nrow, title=title)
    fig.tight_layout()
    return fig
