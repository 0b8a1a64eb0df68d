"""The VQ-VAE on MNIST at a CPU budget, binary and 8-bit: reconstruction, the bound with the
uniform prior and with the learned (transformer) prior in nats and bits/dim, the codebook's
perplexity and use on the test set, and samples from both priors.

For each pixel mode the autoencoder trains from ``configs/mnist_vqvae.toml`` (binary, dynamic
binarization) or ``configs/mnist8bit_vqvae.toml`` (8-bit grey levels, discretized logistic
mixture) for ``--epochs`` epochs, then its prior from the matching ``*_prior.toml`` for
``--prior-epochs`` epochs with the autoencoder held fixed; both are scored on the 10,000 test
images (the bound is exact for the point-mass guide: one pass, no sampling), and 64 samples of
each are drawn into ``<figures>/vqvae_<pixels>_<prior>.png`` (``--figures``, by default
``benchmarks/figures``). ``--minutes`` bounds each of the four trainings in wall-clock time as
well (the epoch in progress finishes; the GPU programme's ``vqvae`` stage uses it), ``--set``
overrides every config, and ``--reuse`` scores runs this script trained before in ``--runs``.

    python benchmarks/vqvae.py --epochs 20 --prior-epochs 10
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from report import emit_measured, row  # benchmarks/ is on sys.path when run as a script

from pyrovae.blocks.quantize import VectorQuantizer
from pyrovae.diagnostics import plots
from pyrovae.run import experiment
from pyrovae.run.config import apply_overrides, config_from_dict, load_config
from pyrovae.run.evaluation import evaluate
from pyrovae.run.recipes import evaluation_data

ROOT = Path(__file__).resolve().parents[1]
MODES = {"binary": "mnist_vqvae", "8bit": "mnist8bit_vqvae"}  #: pixel mode -> the autoencoder's config


def train(config: str, run_dir: Path, sets: list[str], a) -> float:
    """Train ``configs/<config>.toml`` into ``run_dir`` (unless reused); the median seconds per epoch."""
    raw = apply_overrides(
        load_config(ROOT / "configs" / f"{config}.toml").to_dict(),
        [f'run_dir="{run_dir}"', f'device="{a.device}"', *sets, *a.set],
    )
    if not (a.reuse and (run_dir / "checkpoint.pt").exists()):
        start = time.perf_counter()
        budget = math.inf if a.minutes is None else 60 * a.minutes
        over = lambda r: r["kind"] == "epoch" and time.perf_counter() - start > budget
        experiment.fit_config(config_from_dict(raw), callbacks=[over], progress=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["seconds"] for r in rows if r["kind"] == "epoch")


@torch.no_grad()
def codebook_use(run, x: torch.Tensor) -> tuple[float, int]:
    """The perplexity of the test codes' frequencies and the number of codes they use."""
    q = run.model.quantizer
    codes = torch.cat([q.nearest(run.guide.encode(x[i : i + 1000])) for i in range(0, len(x), 1000)])
    counts = q.usage(codes)
    return VectorQuantizer.perplexity(counts).item(), int((counts > 0).sum())


def score(run_dir: Path, name: str, figures: Path) -> dict:
    run = experiment.load_run(run_dir)
    out = evaluate(run)
    torch.manual_seed(0)
    path = figures / f"vqvae_{name}.png"
    plots.save_grid(run.model.sample(64), path)
    x = evaluation_data(run.config, "test", run.device).images
    perplexity, used = codebook_use(run, x)
    return {**out, "perplexity": perplexity, "used": used, "codes": run.model.quantizer.num_codes}


def measure(mode: str, a) -> str:
    config, runs = MODES[mode], Path(a.runs)
    ae, prior = runs / config, runs / f"{config}_prior"
    ae_epoch = train(config, ae, [f"train.epochs={a.epochs}"], a)
    prior_epoch = train(
        f"{config}_prior", prior, [f"train.epochs={a.prior_epochs}", f'train.init_from="{ae}"'], a
    )
    figures = Path(a.figures)
    figures.mkdir(parents=True, exist_ok=True)
    uniform, learned = score(ae, f"{mode}_uniform", figures), score(prior, f"{mode}_learned", figures)
    fmt = lambda t: f"{t['mean']:.2f} +- {t['stderr']:.2f}"
    bits = lambda o: f"{o['elbo_bits_per_dim']:.4f}"
    grid = math.prod(experiment.load_run(ae).model.grid)
    return row(
        [
            mode,
            fmt(uniform["reconstruction"]),
            f"{fmt(uniform['elbo'])} ({bits(uniform)})",
            f"{fmt(learned['elbo'])} ({bits(learned)})",
            f"{uniform['kl']['mean']:.1f} / {learned['kl']['mean']:.1f}",
            f"{uniform['perplexity']:.1f}, {uniform['used']} of {uniform['codes']} ({grid} positions)",
            f"{ae_epoch:.1f} / {prior_epoch:.1f}",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=20, help="epochs of the autoencoder")
    p.add_argument("--prior-epochs", type=int, default=10, help="epochs of the learned prior")
    p.add_argument("--minutes", type=float, help="wall-clock budget of each training (as well as the epochs)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every config")
    p.add_argument("--figures", default=ROOT / "benchmarks" / "figures", help="folder of the sample grids")
    p.add_argument("--reuse", action="store_true", help="score runs this script trained before in --runs")
    p.add_argument("--runs", default="runs/vqvae")
    p.add_argument("--device", default="cpu")
    p.add_argument("--append")
    a = p.parse_args()
    lines = [
        "| pixels | log p(x \\| e_c) | bound, uniform prior (bits/dim) | bound, learned prior (bits/dim) "
        "| -log p(c): uniform / learned | test perplexity, codes used | s / epoch: AE / prior |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in a.modes:
        lines.append(measure(mode, a))
        print(lines[-1], flush=True)
    command = f"python benchmarks/vqvae.py --epochs {a.epochs} --prior-epochs {a.prior_epochs}"
    command += f" --minutes {a.minutes:g}" if a.minutes is not None else ""
    budget = f" (each at most {a.minutes:g} min)" if a.minutes is not None else ""
    conditions = f"MNIST test set (10,000), {a.epochs} epochs of the autoencoder, "
    conditions += f"{a.prior_epochs} of the prior{budget}"
    emit_measured(a.device, conditions, command, lines, a.append)


if __name__ == "__main__":
    main()
