"""The MNIST quadrant task of Sohn et al. (2015), as in Pyro's CVAE tutorial: predict the hidden
quadrants of a test digit from its 1, 2 or 3 visible ones.

For each number of visible quadrants it trains the deterministic baseline (`quadrant_baseline`)
and the CVAE (`quadrant_cvae` with the `quadrant_recognition` guide, its generation network
started from the baseline), then prints, per test image in nats: the baseline's -log p(y | x)
(exact: no latent variable), the CVAE's -ELBO and the CVAE's -log p(y | x) estimated by
importance sampling through the recognition network with K samples (mean +- standard error),
beside the figures of Pyro's tutorial (whose CVAE figure is a negative ELBO). The tutorial's
layout (bottom-left quadrant visible, then top-left, then top-right), networks 500-500 and
200 latents; Adam 1e-3, batch 128, early stopping after 3 epochs without a better validation
loss. The tutorial scores grey-scale targets with the Bernoulli cross-entropy; here the
images are dynamically binarized, which leaves a predictor's expected loss unchanged (the
cross-entropy is linear in the target) and makes it a log-likelihood.

    python benchmarks/cvae_quadrants.py --epochs 30 [--quadrants 1 2 3] [--num-samples 5000]
        [--train-size N] [--test-limit N] [--plots DIR] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import pyro
import torch

import pyrovae
from pyrovae.diagnostics import plots
from pyrovae.inference.scoring import evaluate_data
from pyrovae.run.config import Component, Config, DataConfig
from pyrovae.run.recipes import build, evaluation_data, load_data
from pyrovae.runtime.devices import resolve_device
from pyrovae.training.settings import TrainConfig

#: Pyro's CVAE tutorial, -log p(y | x) of the baseline and -ELBO of the CVAE, for 1 / 2 / 3 quadrants
PYRO_TUTORIAL = {1: (100.4, 71.8), 2: (61.9, 51.0), 3: (25.4, 24.2)}


def run(
    quadrants: int,
    *,
    epochs: int,
    num_samples: int,
    train_size: int | None = None,
    val_limit: int | None = None,
    test_limit: int | None = None,
    hidden=(500, 500),
    latent_dim: int = 200,
    batch_size: int = 128,
    lr: float = 1e-3,
    early_stopping: int | None = 3,
    seed: int = 0,
    device: str = "auto",
    plots_dir: Path | None = None,
    init_from_baseline: bool = True,
) -> dict:
    """Train baseline and CVAE for ``quadrants`` visible quadrants; the row of the table."""
    data = DataConfig(train_size=train_size, val_limit=val_limit, test_limit=test_limit)
    train_cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, early_stopping=early_stopping)
    configs = {
        "baseline": Config(
            model=Component("quadrant_baseline", {"quadrants": quadrants, "hidden": list(hidden)}),
            guide=Component("none"),
            data=data,
            train=train_cfg,
            seed=seed,
            device=device,
        ),
        "cvae": Config(
            model=Component(
                "quadrant_cvae", {"quadrants": quadrants, "hidden": list(hidden), "latent_dim": latent_dim}
            ),
            guide=Component("quadrant_recognition", {"hidden": list(hidden)}),
            data=data,
            train=train_cfg,
            seed=seed,
            device=device,
        ),
    }
    dev = resolve_device(device)
    train, val = (load_data(configs["cvae"], s, dev) for s in ("train", "val"))
    row: dict = {"quadrants": quadrants}
    models = {}
    for name, cfg in configs.items():
        pyro.set_rng_seed(seed)
        model, guide = build(cfg, train.shape)
        if name == "cvae" and init_from_baseline:
            model.init_from(models["baseline"][0])
        t0 = time.perf_counter()
        result = pyrovae.fit(
            model, guide, train, val, config=cfg.train, seed=seed, device=dev, progress=False
        )
        vals = [r["val_elbo"] for r in result.metrics if r["kind"] == "epoch"]
        row[name] = {
            "epochs": result.epoch,
            "seconds": time.perf_counter() - t0,
            "val_first": vals[0],
            "val_best": max(vals),
        }
        models[name] = (model.eval(), guide.eval())
    images = evaluation_data(configs["cvae"], "test", dev).images
    args = models["cvae"][0].inputs(images)
    base = evaluate_data(*models["baseline"], *args, images=images, num_samples=1, bits_per_dim=False)
    cvae = evaluate_data(*models["cvae"], *args, images=images, num_samples=num_samples, bits_per_dim=False)
    row["baseline"]["nll"] = -base["log_likelihood"]["mean"], base["log_likelihood"]["stderr"]
    row["cvae"]["neg_elbo"] = -cvae["elbo"]["mean"], cvae["elbo"]["stderr"]
    row["cvae"]["nll"] = -cvae["log_likelihood"]["mean"], cvae["log_likelihood"]["stderr"]
    row["cvae"]["eval_seconds"] = cvae["seconds"]
    row["test_images"], row["num_samples"] = images.shape[0], num_samples
    if plots_dir is not None:
        Path(plots_dir).mkdir(parents=True, exist_ok=True)
        row["plot"] = str(
            plots.save_completions(
                models["cvae"][0], *(a[:8] for a in args), Path(plots_dir) / f"completions_q{quadrants}.png"
            )
        )
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| visible quadrants | baseline -log p(y\\|x) | CVAE -ELBO | CVAE -log p(y\\|x), importance-sampled "
        "| epochs (baseline, CVAE) | Pyro tutorial: baseline / CVAE -ELBO |",
        "| ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        b, c = r["baseline"], r["cvae"]
        tb, tc = PYRO_TUTORIAL[r["quadrants"]]
        lines.append(
            f"| {r['quadrants']} | {b['nll'][0]:.2f} +- {b['nll'][1]:.2f} | {c['neg_elbo'][0]:.2f} +- "
            f"{c['neg_elbo'][1]:.2f} | {c['nll'][0]:.2f} +- {c['nll'][1]:.2f} (K = {r['num_samples']}) | "
            f"{b['epochs']}, {c['epochs']} | {tb} / {tc} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quadrants", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--train-size", type=int)
    p.add_argument("--test-limit", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--plots")
    p.add_argument("--append")
    a = p.parse_args()
    rows = [
        run(
            q,
            epochs=a.epochs,
            num_samples=a.num_samples,
            train_size=a.train_size,
            test_limit=a.test_limit,
            device=a.device,
            plots_dir=a.plots,
        )
        for q in a.quadrants
    ]
    header = (
        f"Device: {resolve_device(a.device)} ({platform.machine()}, {torch.get_num_threads()} "
        f"threads); torch {torch.__version__}, pyro {pyro.__version__}. Command: `python "
        f"benchmarks/cvae_quadrants.py --epochs {a.epochs} --num-samples {a.num_samples}"
        f"{f' --train-size {a.train_size}' if a.train_size else ''}"
        f"{f' --test-limit {a.test_limit}' if a.test_limit else ''}`; {rows[0]['test_images']} test images."
    )
    from report import emit  # benchmarks/ is on sys.path when run as a script

    emit("\n".join([header, "", table(rows)]) + "\n", a.append)


if __name__ == "__main__":
    main()
