"""Runs from configs: build, train, reload from a run directory, evaluate and draw.

A run directory holds ``config.json``, ``metrics.jsonl``, ``curves.png``,
``checkpoint.pt`` (latest) and ``best.pt`` (best validation ELBO), and is enough to
evaluate, sample from or resume the run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pyro
import torch

from . import checkpoint as ckpt_io
from . import clusters, distributed, estimators, hooks, plots, threads
from .checks import check_inputs  # noqa: F401 - also pyrovae.experiment.check_inputs
from .config import Config, config_from_dict
from .data import EVAL_BINARIZATION_SEED, Split, load_split
from .diagnostics import batched_posterior_means as posterior_means
from .errors import CheckpointError, ConfigError, NonFiniteError
from .hooks import code_site  # noqa: F401 - also pyrovae.experiment.code_site
from .labelled import keep_labels
from .registry import GUIDES, build_guide, build_model, fits, guides_for
from .train import FitResult, fit, model_inputs, resolve_device

CLASS_DRAWS = 16  #: binarizations of a dynamic split that q(c | x) is averaged over to classify


def build(config: Config, x_shape) -> tuple[Any, Any]:
    """The model and guide a config names, for images of shape ``x_shape``."""
    model = build_model(config.model.name, x_shape=tuple(x_shape), **config.model.options)
    guide_cls = GUIDES.get(config.guide.name)
    if guide_cls is not None and not fits(type(model), guide_cls):
        raise ConfigError(
            f"model {config.model.name!r} (latent sites {hooks.latent_sites(model)}, takes "
            f"{hooks.takes(model)}) does not fit guide {config.guide.name!r} (samples "
            f"{hooks.latent_sites(guide_cls)}, takes {hooks.takes(guide_cls)}); "
            f"guides that fit: {', '.join(guides_for(config.model.name)) or 'none'}"
        )
    guide = build_guide(
        config.guide.name, x_shape=tuple(x_shape), latent_dim=model.latent_dim, **config.guide.options
    )
    hooks.attach(model, guide)  # a VampPrior's guide; a guide that falls back on the model's prior network
    return model, guide


def load_data(config: Config, split: str, device="cpu") -> Split:
    d = config.data
    data = load_split(
        d.name, split, pixels=d.pixels, root=d.root, val_size=d.val_size, device=device, **d.source()
    )
    data = data.slice({"train": d.train_size, "val": d.val_limit, "test": d.test_limit}[split])
    if split == "train" and d.labelled is not None:  # semi-supervised: the other labels hidden
        data = keep_labels(data, d.labelled, config.seed)
    return data


def fit_config(
    config: Config, *, resume: bool = False, progress: bool | None = None, callbacks=()
) -> FitResult:
    """Train the run ``config`` describes into ``config.run_dir`` (or resume it). The whole
    config is checked first (:func:`pyrovae.configcheck.validate`): nothing is written or
    loaded for a config with a mistake."""
    from .configcheck import validate

    validate(config)
    device = resolve_device(distributed.device_for_rank(config.device))
    run_dir = Path(config.run_dir)
    pyro.set_rng_seed(config.seed)
    train_data = load_data(config, "train", device)
    val_data = (
        load_data(config, "val", device)
        if config.data.val_size != 0 or config.data.name == "binarized_mnist"
        else None
    )
    val_data = val_data if val_data is not None and len(val_data) > 0 else None  # own data: a tenth may be 0
    model, guide = build(config, train_data.shape)
    prior = getattr(model, "prior", None)
    if not resume and getattr(prior, "init", None) == "data":  # VampPrior pseudo-inputs from training images
        g = torch.Generator().manual_seed(config.seed)
        pick = torch.randperm(len(train_data), generator=g)[: prior.pseudo_inputs.shape[0]].to(
            train_data.images.device
        )
        prior.init_from(train_data.observe(pick).to(prior.pseudo_inputs.device))
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume and distributed.is_main():
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    record = {"config": config.to_dict(), "x_shape": list(train_data.shape)}
    return fit(
        model,
        guide,
        train_data,
        val_data,
        config=config.train,
        seed=config.seed,
        device=device,
        run_dir=run_dir,
        record=record,
        resume=resume,
        progress=progress,
        callbacks=callbacks,
    )


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
        raise CheckpointError(
            f"{run_dir} is not a run directory (no config.json); train one with `pyrovae fit`"
        )
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


def evaluate(
    run: Run,
    *,
    split: str = "test",
    num_samples: int | None = None,
    seed: int = 0,
    compile: str = "auto",
    max_rows: int | None = None,
    progress: bool | None = False,
) -> dict:
    """Per-datapoint ELBO (with its reconstruction and KL terms) and importance-sampled log p(x)
    on ``split`` of the run's dataset: :func:`evaluate_data` on one seeded binarization, with
    the run's description added."""
    data = load_data(run.config, split, run.device)
    images = data.observe_fixed(seed + EVAL_BINARIZATION_SEED)
    args = hooks.evaluation_inputs(run.model, images, data.labels)
    discrete = discrete_likelihood(run.model, run.config.data.pixels)
    out: dict[str, Any] = {
        "split": split,
        "dataset": run.config.data.name,
        "pixels": run.config.data.pixels,
        "step": run.checkpoint["step"],
        "device": str(run.device),
    }
    out.update(
        evaluate_data(
            run.model,
            run.guide,
            *args,
            images=images,
            num_samples=num_samples or run.config.eval_samples,
            seed=seed,
            compile=compile,
            max_rows=max_rows,
            bits_per_dim=discrete and len(args) == 1 + (hooks.takes(run.model) == "image,partial_label"),
            progress=progress,
        )
    )
    out.update(class_report_data(run.model, run.guide, data, seed))
    return {**out, "discrete": discrete}  # the likelihood's kind, whether or not bits/dim apply


def class_report(model, guide, args: Iterable[tuple], labels: torch.Tensor) -> dict:
    """For each discrete site of the guide, on labelled data: the classification error of the
    model's label site (semi-supervised), the clustering accuracy (Hungarian) of the others;
    q(c | x) averaged over the argument tuples ``args`` (draws of the same datapoints)."""
    probs, draws = {}, 0
    for a in args:
        for site, p in clusters.discrete_probs(guide, *a).items():
            probs[site] = p if site not in probs else probs[site] + p
        draws += 1
    known = labels >= 0
    if not probs or not known.any():
        return {}
    out = {}
    for site, p in probs.items():
        p, y = p[known] / draws, labels[known]
        if site == hooks.label_site(model):
            error = clusters.classification_error(p, y)
            out["classification_error"] = {"site": site, **error, "binarizations": draws}
        else:
            out.setdefault("cluster_accuracy", {})[site] = clusters.cluster_accuracy(p, y)
    return out


def class_report_data(model, guide, data: Split, seed: int = 0, draws: int = CLASS_DRAWS) -> dict:
    """:func:`class_report` on ``data``; with dynamic pixels, q(c | x) averaged over ``draws``
    seeded binarizations, the class of the grey image under the model's pixel process rather
    than of one draw of it (Pyro's ss-vae example classifies the grey image itself)."""
    draws = draws if data.pixels == "dynamic" else 1
    args = (
        hooks.evaluation_inputs(model, data.observe_fixed(seed + EVAL_BINARIZATION_SEED + i), data.labels)
        for i in range(draws)
    )
    return class_report(model, guide, args, data.labels)


def discrete_likelihood(model, pixels: str) -> bool:
    """Whether the model's log p(x) is a probability (a mass over discrete pixels), comparable
    across models and reported in bits/dim, rather than a density over grey levels."""
    likelihood = getattr(model, "likelihood", None)
    return getattr(likelihood, "discrete", pixels in ("dynamic", "static", "8bit"))


def evaluate_data(
    model,
    guide,
    x: torch.Tensor,
    *condition: torch.Tensor,
    images: torch.Tensor | None = None,
    num_samples: int = 5000,
    seed: int = 0,
    compile: str = "auto",
    max_rows: int | None = None,
    bits_per_dim: bool = True,
    progress: bool | None = False,
) -> dict:
    """ELBO, reconstruction, KL and importance-sampled log p(x) of the datapoints ``x`` (for a
    conditional model, ``model(x, *condition)``: log p(x | condition), or log p(y | x) for a
    structured-output model) from one pass of K = ``num_samples`` samples each: mean and
    standard error over datapoints, in nats (and bits per dimension, for discrete pixels),
    with the importance ESS and the seconds taken. The data (``images`` when the arguments are
    derived from images) are checked first (:class:`~pyrovae.errors.DataError`); a non-finite
    result is a :class:`~pyrovae.errors.NonFiniteError`. Chunks hold ``max_rows``
    particle-datapoint pairs (default: sized from free memory, see
    :func:`pyrovae.estimators.chunk_rows`) and run through ``compile`` (see :mod:`pyrovae.compile`);
    on CPU, timing the chunks chooses the threads (:class:`pyrovae.threads.Tuner`, reported as
    ``threads``; torch's setting is restored after). Inside a torch.distributed process group
    each rank evaluates a contiguous part of the datapoints with its own draws, and every rank
    gets the gathered result. ``progress`` shows a bar with an ETA over the chunks (rank 0)."""
    args = check_inputs(model, guide, x, *condition, images=images, num_samples=num_samples)
    rank, world = distributed.world()
    if world > x.shape[0]:
        raise ConfigError(f"{x.shape[0]} datapoints cannot be shared among {world} ranks")
    sizes = distributed.shard_sizes(x.shape[0], world)
    pyro.set_rng_seed(
        distributed.rank_seed(seed, rank)
    )  # under torch.distributed: this rank's part, own draws
    t0 = time.perf_counter()
    # the data were checked once above, not at every chunk; CPU threads chosen by timing chunks
    with pyro.validation_enabled(False), threads.Tuner(enabled=x.device.type == "cpu") as tuner:
        terms = estimators.evaluate_terms(
            model,
            guide,
            *(distributed.shard(a, rank, world) for a in args),
            num_samples=num_samples,
            compile=compile,
            max_rows=max_rows,
            progress=bool(progress) and rank == 0 and "evaluate",
            tuner=tuner,
        )
    terms = {k: distributed.gather_rows(v, sizes) for k, v in terms.items()}
    seconds = float(distributed.all_max(torch.tensor(time.perf_counter() - t0, device=x.device)))
    if not all(torch.isfinite(v).all() for v in terms.values()):
        raise NonFiniteError(
            "the evaluation gave non-finite values: the model or guide produces NaN or inf on "
            "these data (check their parameters, e.g. with pyrovae.train.diagnose_nonfinite)"
        )
    out: dict[str, Any] = {"num_datapoints": x.shape[0], "num_samples": num_samples, "seconds": seconds}
    out["threads"] = tuner.threads  # the CPU threads its chunks ended with
    for key in ("elbo", "reconstruction", "kl", "log_likelihood"):
        mean, se = estimators.mean_and_stderr(terms[key])
        out[key] = {"mean": mean, "stderr": se}
    out["ess"] = {"mean": terms["ess"].mean().item(), "min": terms["ess"].min().item()}
    out["discrete"] = bits_per_dim
    # bits/dim = -log2 p(x) / D (Salimans et al. 2017, sec. 3); uniform over 256 levels is 8
    if bits_per_dim:
        nats_per_bit_dim = x[0].numel() * math.log(2.0)
        out["elbo_bits_per_dim"] = -out["elbo"]["mean"] / nats_per_bit_dim
        out["log_likelihood_bits_per_dim"] = -out["log_likelihood"]["mean"] / nats_per_bit_dim
        out["log_likelihood_bits_per_dim_stderr"] = out["log_likelihood"]["stderr"] / nats_per_bit_dim
    return out


@torch.no_grad()
def reconstructions(run: Run, x: torch.Tensor) -> torch.Tensor:
    """Originals and E[x | z], z = E_q[z | x] at the code site, interleaved row by row for a grid."""
    recon = run.model.decode(posterior_means(run.guide, x, site=code_site(run.model)))
    return torch.stack([x, recon], 1).reshape(-1, *x.shape[1:])


REPORT_PARTS = ("samples", "reconstructions", "latent")


def draw_report(
    run: Run,
    run_dir: str | Path,
    *,
    num: int = 64,
    split: str = "test",
    latent_points: int = 5000,
    seed: int = 0,
    parts: tuple[str, ...] = REPORT_PARTS,
) -> list[Path]:
    """The figures ``parts`` names, in ``run_dir``: samples.png, reconstructions.png, latent.png
    and (2-D codes) manifold.png; a quadrant model draws completions.png, a label-conditioned
    one a row of samples per class."""
    run_dir = Path(run_dir)
    pyro.set_rng_seed(seed)
    data = load_data(run.config, split, run.device)
    x = data.observe_fixed(seed + EVAL_BINARIZATION_SEED)
    paths = []
    if hooks.can_complete(run.model):  # a quadrant model: visible part, completions, truth
        if "samples" in parts:
            args = model_inputs(run.model, x[:8])
            paths.append(plots.save_completions(run.model, *args, run_dir / "completions.png"))
        return paths
    if hooks.is_conditional(run.model):  # a label-conditioned model: a row of samples per class
        if "samples" in parts:
            rows = [run.model.sample(8, condition=c) for c in range(hooks.num_classes(run.model))]
            paths.append(plots.save_grid(torch.cat(rows), run_dir / "samples.png", nrow=8))
        return paths
    if "samples" in parts:
        paths.append(plots.save_grid(run.model.sample(num), run_dir / "samples.png"))
    if "reconstructions" in parts:
        grid = reconstructions(run, x[: num // 2])
        paths.append(plots.save_grid(grid, run_dir / "reconstructions.png", nrow=8))
    if "latent" in parts:
        n = min(latent_points, x.shape[0])
        z = posterior_means(run.guide, x[:n], site=code_site(run.model))
        paths.append(plots.plot_latent_scatter(z, data.labels[:n], run_dir / "latent.png"))
        if z.shape[-1] == 2:
            grid = plots.manifold_grid(run.model.decode, 20, run.device)
            paths.append(plots.save_grid(grid, run_dir / "manifold.png", nrow=20))
    return paths
