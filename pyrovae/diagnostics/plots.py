"""Figures: image grids, training curves, latent scatter and manifold (matplotlib).

Files are drawn on ``matplotlib.figure.Figure`` objects, which need no backend, so that
importing pyrovae leaves the user's backend (a notebook's inline one) alone."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid, save_image


def image_grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    return make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=1.0)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Write images (N, C, H, W) in [0, 1] as one PNG grid."""
    save_image(image_grid(images, nrow), path)
    return Path(path)


def save_completions(model, x: torch.Tensor, y: torch.Tensor, path: str | Path, num: int = 5) -> Path:
    """One row per input: the visible part (hidden pixels grey), ``num`` sampled completions
    (or the baseline's one prediction) and the truth."""
    visible = torch.where(x < 0, torch.full_like(x, 0.5), x)
    try:
        completions = model.complete(x, num)  # (num, N, ...)
    except TypeError:  # a deterministic model: one prediction
        completions = model.complete(x)[None]
    rows = [torch.cat([visible[i : i + 1], completions[:, i], y[i : i + 1]]) for i in range(x.shape[0])]
    return save_grid(torch.cat(rows), path, nrow=completions.shape[0] + 2)


def plot_curves(rows: Sequence[dict], path: str | Path) -> Path:
    """Training loss per logged step and validation ELBO per epoch."""
    steps = [r for r in rows if r.get("kind") == "step" and r.get("loss") is not None]
    epochs = [r for r in rows if r.get("kind") == "epoch" and "val_elbo" in r]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    if steps:
        ax.plot(
            [r["step"] for r in steps],
            [r["loss"] for r in steps],
            lw=1,
            label="train loss (-ELBO, beta-weighted)",
        )
    if epochs:
        ax.plot([r["step"] for r in epochs], [-r["val_elbo"] for r in epochs], "o-", label="validation -ELBO")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per datapoint")
    if steps or epochs:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def pca_2d(z: torch.Tensor) -> torch.Tensor:
    """Project codes (N, D) onto their first two principal components (identity for D <= 2)."""
    if z.shape[1] <= 2:
        return z
    zc = z - z.mean(0)
    _, _, v = torch.linalg.svd(zc, full_matrices=False)
    return zc @ v[:2].T


def as_features(z: torch.Tensor) -> torch.Tensor:
    """Codes (N, ...) as float features (N, D): flattened, and integer codes (a grid of code
    indices) one-hot encoded first, so that their principal components compare indices as
    categories, not as numbers."""
    z = z.detach().cpu()
    if not torch.is_floating_point(z):
        z = torch.nn.functional.one_hot(z, int(z.max()) + 1)
    return z.reshape(z.shape[0], -1).float()


def latent_scatter(z: torch.Tensor, labels: torch.Tensor | None, ax, site: str = "z") -> None:
    """Draw posterior means (N, D) on ``ax``, coloured by label (PCA to 2D when D > 2; a grid
    of code indices one-hot encoded, :func:`as_features`)."""
    z = as_features(z)
    z2 = pca_2d(z)
    colours = None if labels is None else labels.cpu()
    sc = ax.scatter(
        z2[:, 0], z2[:, 1], c=colours, cmap="tab10" if colours is not None else None, s=3, alpha=0.7
    )
    if labels is not None and (labels >= 0).any():
        ax.figure.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel(f"{site}1" if z.shape[1] <= 2 else "PC 1")
    ax.set_ylabel(f"{site}2" if z.shape[1] <= 2 else "PC 2")
    ax.set_title(
        f"posterior means E_q[{site} | x]" + (" (first two principal components)" if z.shape[1] > 2 else "")
    )


def plot_latent_scatter(
    z: torch.Tensor, labels: torch.Tensor | None, path: str | Path, site: str = "z"
) -> Path:
    """Posterior means at ``site`` coloured by label (PCA to 2D when the latent is larger), as a PNG."""
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    latent_scatter(z, labels, ax, site)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def show_grid(images: torch.Tensor, ax, nrow: int = 8, title: str | None = None) -> None:
    """Draw images (N, C, H, W) in [0, 1] as one grid on ``ax``."""
    ax.imshow(image_grid(images, nrow).permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)


@torch.no_grad()
def manifold_grid(decode, n: int = 20, device="cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode an n x n grid of 2D codes at the N(0, 1) quantiles 0.05..0.95 (Kingma & Welling
    2013, fig. 4)."""
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    zy, zx = torch.meshgrid(q.flip(0), q, indexing="ij")
    z = torch.stack([zx, zy], -1).reshape(-1, 2).to(device=device, dtype=dtype)
    return decode(z)


def save_rolls(rolls: Sequence[torch.Tensor], path: str | Path, titles: Sequence[str] = ()) -> Path:
    """Piano rolls (T_i, D), one panel each (time across, keys up), stacked in one PNG."""
    fig = Figure(figsize=(8, 1.4 * len(rolls)), layout="constrained")
    for i, roll in enumerate(rolls):
        ax = fig.add_subplot(len(rolls), 1, i + 1)
        ax.imshow(
            roll.detach().float().cpu().T,
            origin="lower",
            aspect="auto",
            cmap="gray_r",
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        ax.set_ylabel("key")
        if i < len(titles):
            ax.set_title(titles[i], fontsize=8)
    ax.set_xlabel("step")
    fig.savefig(path, dpi=100)
    return Path(path)
