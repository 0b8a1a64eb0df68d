"""How much of the gap between importance sampling and AIS refined proposals close.

On a trained run's first ``--limit`` test images: log p(x) by importance sampling with K =
``--samples`` draws from the guide and from proposals refined per datapoint by each of
``--steps`` (:func:`pyrovae.diagnostics.refine.refined_log_likelihood`), with the mean Pareto
k-hat, the share above 0.7 and the seconds; and AIS at T = ``--ais-steps`` (S = 16 chains) on
the same images as the reference the refinement is measured against.

    python benchmarks/refine.py --run runs/mnist_vae --limit 100 --steps 100 500 --ais-steps 1000
"""

from __future__ import annotations

import argparse
import time

import torch
from report import emit_measured  # benchmarks/ is on sys.path when run as a script
from report import row as table_row

from pyrovae.diagnostics import refined_log_likelihood
from pyrovae.inference import ais, estimators
from pyrovae.run import experiment
from pyrovae.run.recipes import evaluation_data


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/mnist_vae")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--steps", type=int, nargs="+", default=[100, 500])
    p.add_argument("--ais-steps", type=int, default=1000)
    p.add_argument("--append")
    return p.parse_args()


def row(label, lp, k_hat, seconds, n, reference=None) -> str:
    mean, stderr = estimators.mean_and_stderr(lp.double().cpu())
    closed = (
        "" if reference is None else f"{100 * (mean - reference[0]) / (reference[1] - reference[0]):.0f}%"
    )
    khat = "" if k_hat is None else f"{k_hat.mean():.2f} | {100 * (k_hat > 0.7).double().mean():.1f}%"
    cells = [
        label,
        f"{mean:.3f} +- {stderr:.3f}",
        khat or " | ",
        closed,
        f"{seconds:.1f}",
        f"{1000 * seconds / n:.0f}",
    ]
    return table_row(cells)


def main() -> None:
    a = arguments()
    run = experiment.load_run(a.run, which="last")
    x, *cond = evaluation_data(run.config, "test", run.device).head(a.limit).inputs(run.model)
    n = x.shape[0]
    torch.manual_seed(0)
    began = time.perf_counter()
    r = ais.ais_log_likelihood(
        run.model, run.guide, x, *cond, num_steps=a.ais_steps, num_chains=16, progress=False
    )
    ais_seconds = time.perf_counter() - began
    lines = [
        "| proposal | mean log p(x) | mean k-hat | k-hat > 0.7 | IS-to-AIS gap closed | seconds "
        "| ms per image |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    refined = {}
    for steps in a.steps:
        torch.manual_seed(0)
        refined[steps] = refined_log_likelihood(
            run.model, run.guide, x, *cond, steps=steps, num_samples=a.samples, data_chunk=a.limit
        )
    first = refined[a.steps[0]]
    reference = (
        estimators.mean_and_stderr(first.log_likelihood.double())[0],
        r.log_likelihood.double().mean().item(),
    )
    lines.append(
        row(f"q(z|x), K = {a.samples}", first.log_likelihood, first.k_hat, first.seconds, n, reference)
    )
    for steps, f in refined.items():
        label = f"refined by {steps} steps, K = {a.samples}"
        lines.append(row(label, f.refined_log_likelihood, f.refined_k_hat, f.refined_seconds, n, reference))
    lines.append(row(f"AIS, T = {a.ais_steps}, S = 16", r.log_likelihood, None, ais_seconds, n, reference))
    for line in lines:
        print(line, flush=True)
    command = (
        f"python benchmarks/refine.py --run {a.run} --limit {a.limit} --samples {a.samples} "
        f"--steps {' '.join(map(str, a.steps))} --ais-steps {a.ais_steps}"
    )
    device = "cpu" if run.device.type == "cpu" else str(run.device)
    emit_measured(device, f"first {n} test images of {a.run}", command, lines, a.append)


if __name__ == "__main__":
    main()
