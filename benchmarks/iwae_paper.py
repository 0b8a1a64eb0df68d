"""One row of Burda et al. (2015), table 1, on a budget: train, then test log-likelihood at K = 5000.

Trains the config ``configs/iwae_paper/{layers}layer_{kind}_k{k}.toml`` (the paper's
architecture, batch 20, Adam eps 1e-4, the paper's learning-rate schedule from epoch 0)
for at most ``--epochs`` epochs or ``--minutes`` minutes of training, whichever ends
first, then evaluates the 10,000 test images with K = 5000 importance samples each and
prints (and with ``--append``, appends) a markdown row beside the paper's value.

    python benchmarks/iwae_paper.py --layers 1 --kind iwae --k 5 --minutes 30 --append benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import pyro
import torch

from pyrovae.run import evaluation, experiment
from pyrovae.run.config import apply_overrides, config_from_dict, load_config

PAPER_NLL = {
    (1, "vae", 1): 86.76,
    (1, "iwae", 5): 85.54,
    (1, "iwae", 50): 84.78,
    (2, "vae", 1): 85.33,
    (2, "iwae", 5): 83.89,
    (2, "iwae", 50): 82.90,
}
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "iwae_paper"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, choices=[1, 2], default=1)
    p.add_argument("--kind", choices=["vae", "iwae"], default="iwae")
    p.add_argument("--k", type=int, choices=[1, 5, 50], default=5)
    p.add_argument("--epochs", type=int, default=3280, help="epoch budget (the paper: 3280)")
    p.add_argument("--minutes", type=float, help="wall-clock budget for training")
    p.add_argument("--eval-samples", type=int, default=5000)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--run-dir")
    p.add_argument("--append", help="append the row to this markdown file")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (smoke runs)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    name = f"{a.layers}layer_{a.kind}_k{a.k}"
    cfg = config_from_dict(apply_overrides(load_config(CONFIGS / f"{name}.toml").to_dict(), a.set))
    cfg = cfg.replace(
        device=a.device,
        run_dir=a.run_dir or cfg.run_dir,
        eval_samples=a.eval_samples,
        train=dataclasses.replace(cfg.train, epochs=a.epochs),
    )
    start = time.perf_counter()

    def budget(row: dict) -> bool:
        return (
            a.minutes is not None and row["kind"] == "epoch" and time.perf_counter() - start > 60 * a.minutes
        )

    result = experiment.fit_config(cfg, callbacks=[budget], progress=False)
    train_seconds = time.perf_counter() - start
    run = experiment.load_run(cfg.run_dir, which="last", device=a.device)
    report = evaluation.evaluate(run, num_samples=a.eval_samples)
    nll, se = -report["log_likelihood"]["mean"], report["log_likelihood"]["stderr"]
    paper = PAPER_NLL.get((a.layers, a.kind, a.k))
    row = (
        f"| {a.layers} | {a.kind.upper()} | {a.k} | {result.epoch} | {train_seconds / 60:.1f} | "
        f"{nll:.2f} +- {se:.2f} | {-report['elbo']['mean']:.2f} | "
        f"{paper if paper is not None else 'table 1'} | {report['seconds']:.0f} |"
    )
    header = [
        f"Device: {run.device} ({platform.machine()}, {torch.get_num_threads()} threads); torch "
        f"{torch.__version__}, "
        f"pyro {pyro.__version__}. Command: `python benchmarks/iwae_paper.py --layers {a.layers} "
        f"--kind {a.kind} "
        f"--k {a.k} --epochs {a.epochs}{f' --minutes {a.minutes:g}' if a.minutes else ''}"
        f"{f' --threads {a.threads}' if a.threads else ''}{' --set ' + ' '.join(a.set) if a.set else ''}`",
        "",
        "| layers | objective | k | epochs trained | training minutes | test -log p(x), K = 5000 "
        "(nats) | test -ELBO "
        "| paper -log p(x) | K = 5000 evaluation seconds |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    from report import emit  # benchmarks/ is on sys.path when run as a script

    emit("\n".join(header + [row]) + "\n", a.append)


if __name__ == "__main__":
    main()
