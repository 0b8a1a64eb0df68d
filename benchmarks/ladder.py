"""The deep top-down hierarchical VAE beside ``vae`` and ``vae2`` on dynamic MNIST, each trained
for the same wall-clock budget: test log p(x) by importance sampling, the ELBO, and the KL of
each of the ladder's layers.

Rows: ``configs/mnist_ladder.toml`` (8 layers of 7x7 x 2) and the same file with one and two
layers (``vae-w32``, ``vae2-w32``: the same width, cells, decoder and guide; with one layer the
ladder is a plain VAE, tests/test_ladder.py), the ladder with NVAE's stabilisers
(``ladder-nvae``: weight normalisation and spectral regularisation, lambda = 0.01), and the
MLPs ``configs/mnist_vae.toml`` (784-400-20) and ``configs/iwae_paper/2layer_vae_k1.toml``
(Burda et al. 2015's two-layer VAE), each trained for ``--minutes`` minutes (at most
``--epochs`` epochs; the epoch in progress finishes), then scored on the first ``--limit`` test
images with K = ``--samples``. The published rows (full schedules on GPUs) stand beside them:
LVAE 81.74 (Sønderby et al. 2016), IWAE 82.90 (Burda et al. 2015, table 1, two layers, k = 50),
NVAE 78.01 (Vahdat & Kautz 2020, table 2; no flows on MNIST, 400 epochs on two V100s, about 21
hours by its README).

    python benchmarks/ladder.py --minutes 10 --limit 1000 --samples 5000 --rows vae-w32 vae2-w32 ladder
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from report import emit_measured, row  # benchmarks/ is on sys.path when run as a script

from pyrovae.diagnostics import latent_activity
from pyrovae.run import experiment
from pyrovae.run.config import apply_overrides, config_from_dict, load_config
from pyrovae.run.evaluation import evaluate
from pyrovae.run.recipes import evaluation_data

ROOT = Path(__file__).resolve().parents[1]
#: row: (config, overrides)
ROWS = {
    "vae": ("mnist_vae.toml", []),
    "vae2": ("iwae_paper/2layer_vae_k1.toml", []),
    "vae-w32": ("mnist_ladder.toml", ["model.layers=1"]),
    "vae2-w32": ("mnist_ladder.toml", ["model.layers=2"]),
    "ladder": ("mnist_ladder.toml", []),
    "ladder-nvae": (  # with NVAE's weight normalisation and spectral regularisation (its MNIST lambda)
        "mnist_ladder.toml",
        ['model.norm="weight"', 'guide.norm="weight"', "model.spectral=0.01", "guide.spectral=0.01"],
    ),
}


def measure(name: str, a) -> tuple[str, str]:
    """The row of ``name`` and, for a ladder, the KL of each layer."""
    run_dir = Path(a.runs) / name
    path, overrides = ROWS[name]
    sets = [
        *overrides,
        f'run_dir="{run_dir}"',
        f'device="{a.device}"',
        f"train.epochs={a.epochs}",
        'data.pixels="dynamic"',
        *a.set,
    ]
    config = config_from_dict(apply_overrides(load_config(ROOT / "configs" / path).to_dict(), sets))
    start = time.perf_counter()
    over = lambda r: r["kind"] == "epoch" and time.perf_counter() - start > 60 * a.minutes
    result = experiment.fit_config(config, callbacks=[over], progress=False)
    minutes = (time.perf_counter() - start) / 60
    run = experiment.load_run(run_dir, which="last")
    data = evaluation_data(run.config, "test", run.device).head(a.limit)
    out = evaluate(run, data, num_samples=a.samples)
    fmt = lambda t: f"{t['mean']:.2f} +- {t['stderr']:.2f}"
    layers = ""
    if run.config.model.name == "ladder":
        act = latent_activity(run.model, run.guide, data.images, num_samples=4, warn_below=0)
        layers = ", ".join(f"{n} {float(v.kl_per_dim.sum()):.1f}" for n, v in act.items())
    cells = [name, f"{result.epoch} epochs, {minutes:.1f} min", fmt(out["log_likelihood"]), fmt(out["elbo"]),
             f"{out['kl']['mean']:.2f}"]  # fmt: skip
    return row(cells), layers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per row")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--limit", type=int, default=1000, help="test images scored")
    p.add_argument("--samples", type=int, default=5000, help="importance samples K")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--runs", default="runs/ladder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every row")
    p.add_argument("--append")
    a = p.parse_args()
    lines = [
        f"| model | training | test log p(x), K = {a.samples} | test ELBO | KL |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    notes = []
    for name in a.rows:
        line, layers = measure(name, a)
        lines.append(line)
        notes += [f"KL per layer of {name} (nats): {layers}"] if layers else []
        print(line, flush=True)
    lines += ["| LVAE (Sønderby et al. 2016; full schedule, GPU) | | -81.74 | | |",
              "| IWAE, 2 layers, k = 50 (Burda et al. 2015, table 1; full schedule) | | -82.90 | | |",
              "| NVAE (Vahdat & Kautz 2020, table 2; 400 epochs, two V100s) | | -78.01 | | |",
              "", *notes]  # fmt: skip
    rows = f" --rows {' '.join(a.rows)}" if a.rows != list(ROWS) else ""
    command = f"python benchmarks/ladder.py --minutes {a.minutes:g} --limit {a.limit} --samples {a.samples}"
    command += rows
    conditions = f"dynamic MNIST, {a.minutes:g} minutes of training per row, first {a.limit} test images"
    emit_measured(a.device, conditions, command, lines, a.append)


if __name__ == "__main__":
    main()
