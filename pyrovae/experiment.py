"""Runs from configs: build, train, reload from a run directory, evaluate and draw.

A run directory holds ``config.json``, ``metrics.jsonl``, ``curves.png``,
``checkpoint.pt`` (latest) and ``best.pt`` (best validation ELBO), and is enough to
evaluate, sample from or resume the run.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import pyro.poutine as poutine
import torch

from . import checkpoint as ckpt_io
from . import estimators, plots
from .config import Config, config_from_dict
from .data import EVAL_BINARIZATION_SEED, Split, load_split
from .errors import CheckpointError
from .registry import build_guide, build_model
from .sites import LATENT
from .train import FitResult, fit, resolve_device


def build(config: Config, x_shape) -> tuple[Any, Any]:
    """The model and guide a config names, for images of shape ``x_shape``."""
    model = build_model(config.model.name, x_shape=tuple(x_shape), **config.model.options)
    guide = build_guide(config.guide.name, x_shape=tuple(x_shape), latent_dim=model.latent_dim,
                        **config.guide.options)
    return model, guide


def load_data(config: Config, split: str, device="cpu") -> Split:
    d = config.data
    data = load_split(d.name, split, pixels=d.pixels, root=d.root, val_size=d.val_size, device=device)
    return data.slice({"train": d.train_size, "val": d.val_limit, "test": d.test_limit}[split])


def train(config: Config, *, resume: bool = False, progress: bool | None = None) -> FitResult:
    """Train the run ``config`` describes into ``config.run_dir`` (or resume it)."""
    device = resolve_device(config.device)
    run_dir = Path(config.run_dir)
    pyro.set_rng_seed(config.seed)
    train_data = load_data(config, "train", device)
    val_data = load_data(config, "val", device) if config.data.val_size > 0 or config.data.name == "binarized_mnist" else None
    model, guide = build(config, train_data.shape)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    record = {"config": config.to_dict(), "x_shape": list(train_data.shape)}
    return fit(model, guide, train_data, val_data, config=config.train, seed=config.seed, device=device,
               run_dir=run_dir, record=record, resume=resume, progress=progress)


@dataclass
class Run:
    config: Config
    model: Any
    guide: Any
    checkpoint: dict
    device: torch.device


def read_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.json); train one with `pyrovae fit`")
    return config_from_dict(json.loads(path.read_text()))


def load_run(run_dir: str | Path, which: str = "best", device: str | None = None) -> Run:
    """Rebuild model and guide from ``run_dir`` alone; ``which`` is "best" (falls back to the
    latest when the run had no validation split) or "last"."""
    run_dir = Path(run_dir)
    name = {"best": "best.pt", "last": "checkpoint.pt"}.get(which)
    if name is None:
        raise CheckpointError(f"unknown checkpoint {which!r}; use best or last")
    path = run_dir / name
    if which == "best" and not path.exists():
        path = run_dir / "checkpoint.pt"
    dev = resolve_device(device or "auto")
    state = ckpt_io.load(path, map_location=dev)
    record = state["record"]
    config = config_from_dict(record["config"])
    model, guide = build(config, record["x_shape"])
    try:
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path} does not match the model its config describes: {e}") from e
    model.to(dev).eval()
    guide.to(dev).eval()
    return Run(config, model, guide, state, dev)


def evaluate(run: Run, *, split: str = "test", num_samples: int | None = None, seed: int = 0) -> dict:
    """Per-datapoint ELBO on ``split``: mean and standard error, with the reconstruction and KL terms."""
    data = load_data(run.config, split, run.device)
    x = data.observe_fixed(seed + EVAL_BINARIZATION_SEED)
    k = num_samples or run.config.eval_samples
    pyro.set_rng_seed(seed)
    terms = estimators.elbo_terms(run.model, run.guide, x, num_samples=k, data_chunk=max(1, 50_000 // k),
                                  particle_chunk=min(k, 50_000))
    dims = x[0].numel()
    out: dict[str, Any] = {"split": split, "num_datapoints": x.shape[0], "num_samples": k,
                           "dataset": run.config.data.name, "pixels": run.config.data.pixels,
                           "step": run.checkpoint["step"]}
    for key, values in terms.items():
        mean, se = estimators.mean_and_stderr(values)
        out[key] = {"mean": mean, "stderr": se}
    if run.config.data.pixels != "continuous":  # bits/dim needs a discrete likelihood
        out["elbo_bits_per_dim"] = -out["elbo"]["mean"] / (dims * math.log(2.0))
    return out


@torch.no_grad()
def posterior_means(guide, x: torch.Tensor, site: str = LATENT) -> torch.Tensor:
    """E_q[z | x] read off the guide's distribution at ``site``."""
    tr = poutine.trace(guide).get_trace(x)
    return tr.nodes[site]["fn"].mean


@torch.no_grad()
def reconstructions(run: Run, x: torch.Tensor) -> torch.Tensor:
    """Originals and E[x | z], z = E_q[z | x], interleaved row by row for a grid."""
    recon = run.model.decode(posterior_means(run.guide, x))
    return torch.stack([x, recon], 1).reshape(-1, *x.shape[1:])


def draw_report(run: Run, run_dir: str | Path, *, num: int = 64, split: str = "test",
                latent_points: int = 5000, seed: int = 0) -> list[Path]:
    """samples.png, reconstructions.png, latent.png and (2D latents) manifold.png in ``run_dir``."""
    run_dir = Path(run_dir)
    pyro.set_rng_seed(seed)
    data = load_data(run.config, split, run.device)
    x = data.observe_fixed(seed + EVAL_BINARIZATION_SEED)
    paths = [plots.save_grid(run.model.sample(num), run_dir / "samples.png"),
             plots.save_grid(reconstructions(run, x[:num // 2]), run_dir / "reconstructions.png", nrow=8)]
    n = min(latent_points, x.shape[0])
    z = torch.cat([posterior_means(run.guide, x[i:i + 1000]) for i in range(0, n, 1000)])
    paths.append(plots.plot_latent_scatter(z, data.labels[:n], run_dir / "latent.png"))
    if run.model.latent_dim == 2:
        paths.append(plots.save_grid(plots.manifold_grid(run.model.decode, 20, run.device),
                                     run_dir / "manifold.png", nrow=20))
    return paths
