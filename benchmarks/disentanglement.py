"""VAE, beta-VAE, beta-TCVAE, FactorVAE, InfoVAE and WAE (stochastic and deterministic encoder)
side by side on a dataset with ground-truth factors, at a CPU budget: each one's
disentanglement metrics, test ELBO and log p(x), AIS log p(x) and active units.

Each row trains ``configs/mnist_vae.toml``'s VAE (784-400, Bernoulli) with ``--latent`` latents
on ``--data`` (default ``mnist_factors``) for ``--epochs`` epochs from the same seed, with its
objective's settings, then scores the first ``--limit`` test images: MIG, DCI, FactorVAE score
(5 repeats) and SAP from posterior means (:func:`pyrovae.run.diagnose.disentanglement_scores`),
ELBO and log p(x) from K = ``--samples`` importance samples (none for a deterministic encoder,
whose q has no density), AIS log p(x) annealed from the prior (which needs no density of q) on
``--ais`` of them (evenly spaced; beside it, the importance-sampled figure on the same images)
with ``--ais-steps`` steps and 16 chains, and active units. ``--reuse`` scores the runs this
script trained before in ``--runs`` again instead of retraining them (training is seeded and
deterministic on one CPU process, so a retrained row repeats its figures).

    python benchmarks/disentanglement.py --epochs 10 --limit 2000 --samples 5000 --ais 100 --ais-steps 500
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from report import emit_measured, row  # benchmarks/ is on sys.path when run as a script

from pyrovae.diagnostics import latent_activity
from pyrovae.inference import ais, estimators, weights
from pyrovae.run import experiment
from pyrovae.run.config import apply_overrides, config_from_dict, load_config
from pyrovae.run.diagnose import disentanglement_scores
from pyrovae.run.recipes import evaluation_data

ROOT = Path(__file__).resolve().parents[1]
#: the rows: a label and the [train] settings that make them
ROWS = {
    "VAE": ['train.objective="elbo"'],
    "beta-VAE (beta = 4)": ['train.objective="elbo"', "train.beta=4.0"],
    "beta-TCVAE (TC weight 6, stratified)": [
        'train.objective="tcvae"',
        "train.tc_weight=6.0",
        'train.tc_sampling="mss"',
    ],
    "FactorVAE (gamma 10, D 6 x 1000)": ['train.objective="factorvae"', "train.factor_gamma=10.0"],
    "FactorVAE, same-batch permutation (gamma 10)": [
        'train.objective="factorvae"',
        "train.factor_gamma=10.0",
        'train.factor_permute="same"',
    ],
    "InfoVAE (alpha 0, lambda 100)": [
        'train.objective="infovae"',
        "train.mmd_alpha=0.0",
        "train.mmd_lambda=100.0",
    ],
    "WAE (lambda 10)": ['train.objective="wae"', "train.wae_lambda=10.0"],
    "WAE, deterministic encoder (lambda 10)": [
        'train.objective="wae"',
        "train.wae_lambda=10.0",
        "guide.deterministic=true",
    ],
}


def likelihoods(run, x: tuple, a) -> list[str]:
    """The cells test ELBO, test log p(x) (K importance samples) and AIS log p(x) from the prior."""
    cells, fmt, same = ["none (point mass)"] * 2, lambda m: f"{m[0]:.2f} +- {m[1]:.2f}", ""
    every = max(1, len(x[0]) // max(a.ais, 1))  # the AIS images: every so many of the scored ones
    if not weights.guide_point_masses(run.model, run.guide, x):
        torch.manual_seed(0)
        with torch.no_grad():
            lw = estimators.log_weights(run.model, run.guide, *x, num_samples=a.samples).double().cpu()
        lp = estimators.iwae_from_log_weights(lw)
        cells = [fmt(estimators.mean_and_stderr(lw.mean(0))), fmt(estimators.mean_and_stderr(lp))]
        same = f" (IS: {estimators.mean_and_stderr(lp[::every][: a.ais])[0]:.2f})"
    if a.ais:
        torch.manual_seed(0)
        r = ais.ais_log_likelihood(
            run.model,
            run.guide,
            *(t[::every][: a.ais] for t in x),
            num_steps=a.ais_steps,
            num_chains=16,
            initial="prior",
        )
        cells.append(fmt(estimators.mean_and_stderr(r.log_likelihood.detach().double().cpu())) + same)
    return cells


def measure(label: str, sets: list[str], a) -> str:
    tag = "-det" * ("deterministic" in label) + "-same" * ("same-batch" in label)
    run_dir = Path(a.runs) / (label.split(" ")[0].lower().rstrip(",") + tag)
    common = [
        f'run_dir="{run_dir}"',
        f'device="{a.device}"',
        f"train.epochs={a.epochs}",
        f'data.name="{a.data}"',
        f"model.latent_dim={a.latent}",
        "guide.hidden=[400]",
        *a.set,
    ]
    raw = apply_overrides(load_config(ROOT / "configs" / "mnist_vae.toml").to_dict(), common + sets)
    if not (a.reuse and (run_dir / "checkpoint.pt").exists()):
        experiment.fit_config(config_from_dict(raw), progress=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch = statistics.median(r["seconds"] for r in rows if r["kind"] == "epoch")
    run = experiment.load_run(run_dir, which="last")
    data = evaluation_data(run.config, "test", run.device).head(a.limit)
    x = data.inputs(run.model)
    d = disentanglement_scores(run, data)
    active = latent_activity(run.model, run.guide, *x, warn_below=0)["z"].num_active
    cells = [
        label,
        f"{d['mig']:.3f}",
        f"{d['dci_disentanglement']:.3f} / {d['dci_completeness']:.3f} / {d['dci_informativeness']:.3f}",
        f"{d['factor_vae']['mean']:.3f} +- {d['factor_vae']['stderr']:.3f}",
        f"{d['sap']:.3f}",
        *likelihoods(run, x, a),
        f"{active} of {a.latent}",
        f"{epoch:.1f}",
    ]
    return row(cells)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="mnist_factors")
    p.add_argument("--latent", type=int, default=10)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--limit", type=int, default=2000, help="test images scored")
    p.add_argument("--samples", type=int, default=5000, help="importance samples K")
    p.add_argument("--ais", type=int, default=100, help="test images of the AIS column (0: none)")
    p.add_argument("--ais-steps", type=int, default=500, help="AIS steps T, from the prior")
    p.add_argument("--reuse", action="store_true", help="score runs this script trained before in --runs")
    p.add_argument("--rows", nargs="+", default=list(ROWS), help="labels of ROWS to run")
    p.add_argument("--runs", default="runs/disentanglement")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config settings (smaller data)"
    )
    p.add_argument("--append")
    a = p.parse_args()
    annealed = f" AIS log p(x) from p(z), {a.ais} images (IS on them) |" if a.ais else ""
    lines = [
        "| objective | MIG | DCI D / C / I | FactorVAE score | SAP | test ELBO | test log p(x) |"
        f"{annealed} active units | s / epoch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * bool(a.ais) + " ---: | ---: |",
    ]
    for label in a.rows:
        lines.append(measure(label, ROWS[label], a))
        print(lines[-1], flush=True)
    command = (
        f"python benchmarks/disentanglement.py --data {a.data} --latent {a.latent} --epochs {a.epochs} "
        f"--limit {a.limit} --samples {a.samples} --ais {a.ais} --ais-steps {a.ais_steps}"
    )
    conditions = f"{a.data}, {a.epochs} epochs, first {a.limit} test images"
    emit_measured(a.device, conditions, command, lines, a.append)


if __name__ == "__main__":
    main()
