"""Flow guides beside the diagonal Gaussian of the same encoder, on MNIST at a CPU budget.

Trains the default VAE (``configs/mnist_vae.toml``: 784-400-20, Bernoulli, dynamic
binarization) with ``guide.flow`` = none, iaf and householder (``--flows``), each for
``--epochs`` epochs from the same seed, then reports on the first ``--limit`` test images: the
ELBO and log p(x) from K = ``--samples`` importance samples, the share of datapoints whose
Pareto k-hat exceeds 0.7, the median seconds of a training epoch, and on the first
``--gap-points`` images the approximation and amortization gaps (Cremer et al. 2018, through
:func:`pyrovae.diagnostics.amortization_gap`, the local proposal of each guide's own family).
Prints a markdown table, with the published IAF figures (Kingma et al. 2016, table 1; their
ResNet VAE, 32 latents, far longer training) beneath it.

    python benchmarks/flows.py --epochs 10 --limit 1000 --gap-points 20 --append benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from report import emit_measured  # benchmarks/ is on sys.path when run as a script

from pyrovae.diagnostics import amortization_gap, psis_khat
from pyrovae.inference import estimators
from pyrovae.run import experiment
from pyrovae.run.config import apply_overrides, config_from_dict, load_config
from pyrovae.run.recipes import evaluation_data

ROOT = Path(__file__).resolve().parents[1]
#: Kingma et al. (2016), table 1: dynamically binarized MNIST, test ELBO and log p(x)
PAPER = [
    ("diagonal Gaussian", -84.08, -81.08),
    ("IAF, depth 2, width 320", -82.02, -79.77),
    ("IAF, depth 8, width 1920", -80.80, -79.10),
]


def measure(flow: str, a) -> dict:
    run_dir = Path(a.runs) / flow
    sets = [
        f'run_dir="{run_dir}"',
        f'device="{a.device}"',
        f"train.epochs={a.epochs}",
        f'guide.flow="{flow}"',
        *a.set,
    ]
    config = config_from_dict(
        apply_overrides(load_config(ROOT / "configs" / "mnist_vae.toml").to_dict(), sets)
    )
    experiment.fit_config(config, progress=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch = statistics.median(r["seconds"] for r in rows if r["kind"] == "epoch")
    run = experiment.load_run(run_dir, which="last")
    x, *cond = evaluation_data(run.config, "test", run.device).head(a.limit).inputs(run.model)
    torch.manual_seed(0)
    with torch.no_grad():
        lw = estimators.log_weights(run.model, run.guide, x, *cond, num_samples=a.samples).double().cpu()
    gaps = amortization_gap(run.model, run.guide, x[: a.gap_points], *(c[: a.gap_points] for c in cond),
                            steps=a.gap_steps, num_samples=a.samples)  # fmt: skip
    return {
        "elbo": estimators.mean_and_stderr(lw.mean(0)),
        "log_px": estimators.mean_and_stderr(estimators.iwae_from_log_weights(lw)),
        "k_hat_bad": float((psis_khat(lw) > 0.7).double().mean()),
        "approximation": float(gaps["approximation_gap"].mean()),
        "amortization": float(gaps["amortization_gap"].mean()),
        "epoch_seconds": epoch,
        "parameters": sum(p.numel() for p in run.guide.parameters()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--flows", nargs="+", default=["none", "iaf", "householder"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--limit", type=int, default=1000, help="test images")
    p.add_argument("--samples", type=int, default=5000, help="importance samples K")
    p.add_argument("--gap-points", type=int, default=20)
    p.add_argument("--gap-steps", type=int, default=1000)
    p.add_argument("--runs", default="runs/flows")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config settings (smaller data)"
    )
    p.add_argument("--append", help="append the table to this markdown file")
    a = p.parse_args()
    lines = [
        "| guide | ELBO | log p(x) | k-hat > 0.7 | approximation gap | amortization gap | s / epoch "
        "| guide parameters |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for flow in a.flows:
        r = measure(flow, a)
        lines.append(
            f"| mlp, flow = {flow} | {r['elbo'][0]:.2f} +- {r['elbo'][1]:.2f} | {r['log_px'][0]:.2f} +- "
            f"{r['log_px'][1]:.2f} | {100 * r['k_hat_bad']:.1f}% | {r['approximation']:.2f} | "
            f"{r['amortization']:.2f} | {r['epoch_seconds']:.1f} | {r['parameters']} |"
        )
        print(lines[-1], flush=True)
    lines += ["", "| published (Kingma et al. 2016, table 1) | ELBO | log p(x) |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {elbo:.2f} | {lp:.2f} |" for name, elbo, lp in PAPER]
    command = (
        f"python benchmarks/flows.py --flows {' '.join(a.flows)} --epochs {a.epochs} --limit {a.limit} "
        f"--samples {a.samples} --gap-points {a.gap_points} --gap-steps {a.gap_steps}"
    )
    emit_measured(a.device, f"{a.epochs} epochs, first {a.limit} MNIST test images", command, lines, a.append)


if __name__ == "__main__":
    main()
