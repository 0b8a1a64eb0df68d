"""The callbacks ``pyrovae fit`` attaches to :func:`pyrovae.fit` (which knows none of them):
``curves.png`` redrawn at each epoch row, and with ``train.tensorboard = true`` (or
``pyrovae fit --tensorboard``) TensorBoard events.

:class:`TensorBoardWriter` writes every metrics row as scalars (``step/loss``,
``step/beta``, ``step/lr``, ``epoch/val_elbo``, ...) and, each epoch, grids of samples from
the prior and of reconstructions (originals beside E[x | z] at the posterior mean) into
``RUN_DIR/tensorboard``; ``tensorboard --logdir RUN_DIR`` shows them. With ``train.mlflow`` the
rows go to MLflow too (:mod:`pyrovae.run.tracking`). Images are drawn on a
forked, fixed random stream (the same prior draws every epoch; training's stream unchanged).
Needs the ``tensorboard`` package (``pip install "pyrovae[tensorboard]"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pyrovae import hooks
from pyrovae.diagnostics import batched_posterior_means
from pyrovae.diagnostics.plots import image_grid, plot_curves
from pyrovae.errors import ConfigError
from pyrovae.run import tracking
from pyrovae.runtime import distributed
from pyrovae.training.rundir import RunDir
from pyrovae.training.runfiles import read_metrics

IMAGES = 32  #: images in each grid


def _summary_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError(
            'train.tensorboard needs the tensorboard package: pip install "pyrovae[tensorboard]" '
            "(or pip install tensorboard), or set train.tensorboard = false"
        ) from e
    return SummaryWriter(log_dir=str(log_dir))


class TensorBoardWriter:
    """Metrics rows as scalars; sample and reconstruction grids at each epoch row."""

    def __init__(self, run_dir: str | Path, model: Any, guide: Any, images: torch.Tensor | None = None):
        self.log_dir = RunDir(run_dir).tensorboard
        self.writer = _summary_writer(self.log_dir)
        self.model, self.guide, self.images = model, guide, None if images is None else images[:IMAGES]

    def __call__(self, row: dict) -> bool:
        step = int(row["step"])
        for key, value in row.items():
            if (
                key not in ("kind", "step")
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
            ):
                self.writer.add_scalar(f"{row['kind']}/{key}", value, step)
        if row["kind"] == "epoch":
            for tag, grid in self.grids().items():
                self.writer.add_image(tag, grid, step)
        self.writer.flush()
        return False

    @torch.no_grad()
    def grids(self) -> dict[str, torch.Tensor]:
        """Samples and reconstructions for a model with ``sample``/``decode`` and one argument."""
        m = self.model
        if not hooks.can_draw(m):
            return {}
        device = next((p.device for p in hooks.owner_modules(m)[0].parameters()), torch.device("cpu"))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            out = {"samples": image_grid(m.sample(IMAGES), 8)}
            if self.images is not None:
                x = self.images
                recon = m.decode(batched_posterior_means(self.guide, x, site=hooks.code_site(m)))
                out["reconstructions"] = image_grid(torch.stack([x, recon], 1).reshape(-1, *x.shape[1:]), 8)
        return out

    def close(self) -> None:
        self.writer.close()


class Curves:
    """Redraws ``curves.png`` from ``metrics.jsonl`` at each epoch row."""

    def __init__(self, run_dir: str | Path):
        self.files = RunDir(run_dir)

    def __call__(self, row: dict) -> bool:
        if row["kind"] == "epoch":
            plot_curves(read_metrics(self.files.path), self.files.curves)
        return False


def fit_callbacks(config, run_dir, model, guide, split) -> list:
    """On the main rank: :class:`Curves`, with ``train.tensorboard`` a :class:`TensorBoardWriter`
    reconstructing the first images of ``split``, and with ``train.mlflow`` an
    :class:`~pyrovae.run.tracking.MLflowLogger` (``config``: the run's Config); on the other ranks none."""
    if not distributed.is_main():
        return []
    attached: list = [Curves(run_dir)]
    train = config.train
    if train.tensorboard:
        images = split.slice(IMAGES).observe_fixed(config.seed)
        attached.append(TensorBoardWriter(run_dir, model, guide, images))
    if train.mlflow:
        uri = tracking.resolve_uri(train.mlflow)
        attached.append(tracking.MLflowLogger(run_dir, config.to_dict(), uri, train.mlflow_experiment))
    return attached
