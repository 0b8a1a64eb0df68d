"""Runs from configs: train one into its run directory, reload it from there, draw its figures.

A run directory (:class:`pyrovae.training.rundir.RunDir`) holds ``config.json``,
``metrics.jsonl``, ``curves.png``, ``checkpoint.pt`` (latest) and ``best.pt`` (best
validation ELBO), and is enough to evaluate, sample from or resume the run.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch

from pyrovae import hooks
from pyrovae.diagnostics import batched_posterior_means as posterior_means
from pyrovae.diagnostics import generate, plots
from pyrovae.diagnostics import rolls as rolls_of
from pyrovae.errors import CheckpointError, ConfigError
from pyrovae.hooks import Takes
from pyrovae.registry import search_paths
from pyrovae.run.callbacks import fit_callbacks
from pyrovae.run.config import Config, config_from_dict, with_module_folders
from pyrovae.run.configcheck import validate
from pyrovae.run.recipes import EvaluationData, build, evaluation_data, load_data
from pyrovae.runtime import distributed
from pyrovae.runtime.devices import resolve_device
from pyrovae.runtime.seeds import keeps_streams
from pyrovae.training import checkpoint as ckpt_io
from pyrovae.training.loop import FitResult, fit
from pyrovae.training.rundir import RunDir


@keeps_streams
def fit_config(
    config: Config,
    *,
    resume: bool = False,
    progress: bool | None = None,
    callbacks=(),
    device: torch.device | None = None,
) -> FitResult:
    """Train the run ``config`` describes into ``config.run_dir`` (or resume it). The whole
    config is checked first, the model and guide built once as it is checked
    (:func:`pyrovae.run.configcheck.validate`): nothing is written or loaded for a config with a
    mistake. ``curves.png`` (and with ``train.tensorboard`` TensorBoard events) are drawn by
    callbacks added to ``callbacks`` (:mod:`pyrovae.run.callbacks`). ``device``: the command's
    resolved device (by default resolved from ``config.device``)."""
    device = resolve_device(config.device) if device is None else device
    pyro.set_rng_seed(config.seed)
    model, guide = validate(config, device, meta=False)
    config = with_module_folders(config)  # where its import paths were found: the run records it
    if config.train.init_from is not None and not resume:
        start_from(model, guide, config.train.init_from, config.train.train_only)
    files = RunDir(config.run_dir)
    train_data = load_data(config, "train", device)
    val_data = (
        load_data(config, "val", device)
        if config.data.val_size != 0 or config.data.name == "binarized_mnist"
        else None
    )
    val_data = val_data if val_data is not None and len(val_data) > 0 else None  # own data: a tenth may be 0
    rows = hooks.data_init_rows(model)
    if not resume and rows:  # VampPrior pseudo-inputs from shuffled training images
        pick = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(config.seed))[:rows]
        hooks.init_from_data(model, train_data.observe(pick.to(train_data.images.device)))
    files.path.mkdir(parents=True, exist_ok=True)
    if not resume and distributed.is_main():
        files.config.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    with search_paths(config.paths):  # an objective named by import path
        return _fit(config, model, guide, train_data, val_data, files, device, resume, progress, callbacks)


def _fit(config, model, guide, train_data, val_data, files, device, resume, progress, callbacks) -> FitResult:
    record = {"config": config.to_dict(), "x_shape": list(train_data.shape)}
    shown = train_data if val_data is None else val_data
    attached = fit_callbacks(config, files.path, model, guide, shown)
    try:
        return fit(
            model,
            guide,
            train_data,
            val_data,
            config=config.train,
            seed=config.seed,
            device=device,
            run_dir=files.path,
            record=record,
            resume=resume,
            progress=progress,
            callbacks=[*callbacks, *attached],
        )
    finally:  # what a writer holds is sent, also when the run stops
        for callback in attached:
            if hasattr(callback, "close"):
                callback.close()


def start_from(model, guide, run_dir: str | Path, train_only: list[str]) -> None:
    """Load the parameters and buffers of the run in ``run_dir`` (its best.pt, else its latest
    checkpoint) into ``model`` and ``guide`` (``train.init_from``); those it lacks must be under
    ``train_only``, the part trained now (a learned prior after an autoencoder)."""
    files = RunDir(run_dir)
    path = files.best if files.best.exists() else files.checkpoint
    if not path.exists():
        raise CheckpointError(
            f"train.init_from = {str(run_dir)!r} holds no best.pt or checkpoint.pt: train that run first"
        )
    state = ckpt_io.load(path, map_location="cpu")
    for key, module in (("model", model), ("guide", guide)):
        try:
            missing, unexpected = module.load_state_dict(state[key], strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"{path} does not fit this run's {key}: {e}") from e
        new = [n for n in missing if not any(f"{key}.{n}".startswith(p + ".") for p in train_only)]
        if new or unexpected:
            raise CheckpointError(
                f"{path} does not fit this run's {key}: it lacks {new} (not under train.train_only = "
                f"{train_only}) and has {list(unexpected)} the {key} has not"
            )


@dataclass
class Run:
    """A trained run reloaded from its directory: its config, model and guide (in eval mode, on
    ``device``) and the checkpoint they came from."""

    config: Config
    model: Any
    guide: Any
    checkpoint: dict
    device: torch.device


#: the config keys ``fit --resume`` may change: how long and where a run goes on, never what it is
RESUMABLE = (
    "train.epochs",
    "train.max_steps",
    "train.log_every",
    "train.tensorboard",
    "train.mlflow",
    "train.mlflow_experiment",
    "data.root",
    "device",
    "run_dir",
)


def resumed_config(stored: Config, settings) -> Config:
    """The stored config of a run with ``settings`` (``--set`` and the flags) applied; a key
    outside :data:`RESUMABLE` is refused by name, since the checkpoint was made under its value."""
    new = stored.override(*settings)
    changed = changes(stored, new)
    refused = [k for k in changed if k not in RESUMABLE]
    longer = [k for k in ("train.epochs", "train.max_steps") if k in changed]
    if longer and stored.train.lr_schedule == "cosine":
        raise ConfigError(
            f'fit --resume cannot change {", ".join(longer)} of a run with train.lr_schedule = "cosine": '
            "its checkpoint holds a cosine that reaches zero at the stored length, and the rate would "
            "rise again after it; resume without it, or start a new run from this one (train.init_from)"
        )
    if refused:
        raise ConfigError(
            f"fit --resume cannot change {', '.join(refused)}: the checkpoint was trained under the "
            f"stored values; it may change {', '.join(RESUMABLE)} (or start a new run with the new config)"
        )
    return new


def changes(before: Config, after: Config) -> dict:
    """{dotted key: its value in ``after``} for each key the two configs set differently."""
    old, new = _flat(before.to_dict()), _flat(after.to_dict())
    keys = sorted(old.keys() | new.keys())
    return {k: json.loads(new[k]) if k in new else None for k in keys if old.get(k) != new.get(k)}


def _flat(raw: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in raw.items():
        if isinstance(v, dict) and k in ("model", "guide", "data", "train"):
            out |= _flat(v, f"{k}.")
        else:
            out[prefix + k] = json.dumps(v)
    return out


def record_resume(config: Config) -> dict:
    """Write the resumed ``config`` as the run's config.json and append a line to resumes.jsonl
    (the time and the keys changed); returns those keys' new values."""
    files = RunDir(config.run_dir)
    changed = {k: v for k, v in changes(read_config(config.run_dir), config).items() if k != "run_dir"}
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "overrides": changed}
    with open(files.resumes, "a") as f:
        f.write(json.dumps(line) + "\n")
    ckpt_io.atomic_write_text(files.config, json.dumps(config.to_dict(), indent=2) + "\n")
    return changed


def read_config(run_dir: str | Path) -> Config:
    """The config a run directory was trained from (its ``config.json``)."""
    path = RunDir(run_dir).config
    if not path.exists():
        raise CheckpointError(
            f"{run_dir} is not a run directory (no config.json); train one with `pyrovae fit`"
        )
    return config_from_dict(json.loads(path.read_text()))


def load_run(run_dir: str | Path, which: str = "best", device: str | torch.device | None = None) -> Run:
    """Rebuild model and guide from ``run_dir`` alone; ``which`` is "best" (falls back to the
    latest when the run had no validation split) or "last"."""
    files = RunDir(run_dir)
    if which not in ("best", "last"):
        raise CheckpointError(f"unknown checkpoint {which!r}; use best or last")
    dev = resolve_device(device or "auto")
    if which == "best" and files.best.exists():
        state, path = ckpt_io.load(files.best, map_location=dev), files.best
    else:  # the newest readable checkpoint, as `fit --resume` takes it
        if not files.has_checkpoint():
            read_config(run_dir)  # not a run directory at all: says so
        state, path = ckpt_io.load_latest(run_dir, map_location=dev)
        if path != files.checkpoint:
            warnings.warn(f"{files.checkpoint} could not be read; using {path}", RuntimeWarning, stacklevel=2)
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


@torch.no_grad()
def reconstructions(run: Run, x: torch.Tensor) -> torch.Tensor:
    """Originals and their reconstructions E[x | z] at posterior means
    (:func:`pyrovae.diagnostics.generate.reconstructions`), interleaved row by row for a grid."""
    recon = generate.reconstructions(run.model, run.guide, x).reshape(x.shape)
    return torch.stack([x, recon], 1).reshape(-1, *x.shape[1:])


FIGURE_PARTS = ("samples", "reconstructions", "latent")


@keeps_streams
def draw_figures(
    run: Run,
    run_dir: str | Path,
    *,
    data: EvaluationData | None = None,
    num: int = 64,
    split: str = "test",
    latent_points: int = 5000,
    seed: int = 0,
    parts: tuple[str, ...] = FIGURE_PARTS,
    site: str | None = None,
) -> list[Path]:
    """The figures ``parts`` names, of the evaluation ``data`` (by default ``split`` binarized at
    ``seed``), in ``run_dir``: samples.png, reconstructions.png, latent.png (the posterior means
    at ``site``: by default the model's code site, else the guide's last latent site; named in
    the figure's title) and (2-D codes) manifold.png; a quadrant model draws completions.png, a
    label-conditioned one a row of samples per class. A model without ``sample`` / ``decode``
    is drawn by running it (:mod:`pyrovae.diagnostics.generate`)."""
    files = RunDir(run_dir)
    data = evaluation_data(run.config, split, run.device, seed) if data is None else data
    pyro.set_rng_seed(seed)
    x = data.images
    paths = []
    if hooks.can_complete(run.model):  # a quadrant model: visible part, completions, truth
        if "samples" in parts:
            args = hooks.inputs(run.model, x[:8])
            paths.append(plots.save_completions(run.model, *args, files.figure("completions")))
        return paths
    if hooks.takes(run.model) == Takes.SEQUENCE:
        return sequence_figures(run, files, x, data.labels, parts)
    if hooks.is_conditional(run.model):  # a label-conditioned model: a row of samples per class
        if "samples" in parts:
            rows = [run.model.sample(8, condition=c) for c in range(hooks.num_classes(run.model))]
            paths.append(plots.save_grid(torch.cat(rows), files.figure("samples"), nrow=8))
        return paths
    if "samples" in parts:
        images = generate.prior_images(run.model, num, x.shape[1:], run.device)
        paths.append(plots.save_grid(images, files.figure("samples")))
    if "reconstructions" in parts:
        grid = reconstructions(run, x[: num // 2])
        paths.append(plots.save_grid(grid, files.figure("reconstructions"), nrow=8))
    if "latent" in parts:
        n = min(latent_points, x.shape[0])
        names = generate.site_names(run.model, run.guide, x)
        site = site or (hooks.code_site(run.model) if hasattr(run.model, "latent_sites") else names[-1])
        if site not in names:
            raise ConfigError(f"no latent site {site!r}; this run's latent sites are {names}")
        z = posterior_means(run.guide, x[:n], site=site)
        paths.append(plots.plot_latent_scatter(z, data.labels[:n], files.figure("latent"), site))
        if z.is_floating_point() and z.dim() == 2 and z.shape[-1] == 2 and hasattr(run.model, "decode"):
            grid = plots.manifold_grid(run.model.decode, 20, run.device)
            paths.append(plots.save_grid(grid, files.figure("manifold"), nrow=20))
    return paths


def sequence_figures(run: Run, files: RunDir, x: torch.Tensor, lengths: torch.Tensor, parts) -> list[Path]:
    """A sequence model's figures: samples.png, eight rolls from the prior as long as the median
    sequence, and reconstructions.png, four sequences each above its reconstruction (no latent
    scatter: its latents are per time step; asked for it alone, a ConfigError says so)."""
    if tuple(parts) == ("latent",):
        raise ConfigError(
            "a sequence model has latents per time step, not one code per datapoint to scatter; "
            "see its rolls: pyrovae sample / reconstruct RUN_DIR"
        )
    paths = []
    if "samples" in parts:
        steps = int(lengths.float().median())
        rolls = rolls_of.sequence_samples(run.model, 8, steps, x.shape[-1], run.device)
        paths.append(
            plots.save_rolls(list(rolls), files.figure("samples"), [f"prior draw {i + 1}" for i in range(8)])
        )
    if "reconstructions" in parts:
        args = hooks.inputs(run.model, x[:4], lengths[:4])
        recon = rolls_of.sequence_reconstructions(run.model, run.guide, *args)
        pairs = [r[: int(n)] for i, n in enumerate(lengths[:4]) for r in (args[0][i], recon[i])]
        titles = [f"{what} {i + 1}" for i in range(4) for what in ("sequence", "reconstruction")]
        paths.append(plots.save_rolls(pairs, files.figure("reconstructions"), titles))
    return paths
