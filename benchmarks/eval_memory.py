"""Peak memory of the K-sample evaluation as the number of datapoints N grows.

Two ways of computing the same report (ELBO, reconstruction, KL, log p(x), ESS per datapoint),
side by side, each in a fresh process per N so that its peak resident memory is its own:

- ``fold`` (pyrovae's ``estimators.evaluate_terms``): each chunk of particles is reduced to
  per-datapoint sums and log-sum-exps as it is computed; memory O(N);
- ``full``: the whole (K, N, 3) tensor of log-densities kept, then reduced (what
  ``evaluate_terms`` did before: 4 K N 3 bytes, 600 MB for 10,000 images at K = 5000).

The model is the default VAE (784-400-20) with its initial weights (memory does not depend on
training), on binary images of MNIST's shape. Peak RSS is read from ``ru_maxrss``; "growth" is
the peak minus the resident size once model and data are in memory.

    python benchmarks/eval_memory.py [--num-samples 1000] [--sizes 1000 10000 60000]
                                     [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import torch

CHILD = r"""
import json, resource, sys, time, torch
from pyrovae import estimators
from pyrovae.guides import MLPGuide
from pyrovae.models import VAE
mode, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[4]))
model, guide = VAE((1, 28, 28), 20, hidden=[400]).eval(), MLPGuide((1, 28, 28), 20, hidden=[400]).eval()
x = torch.empty(n, 1, 28, 28).bernoulli_(0.13)  # in place: no transient copy before the baseline
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def current():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
base = current()
t0 = time.perf_counter()
with torch.no_grad():
    if mode == "fold":
        out = estimators.evaluate_terms(model, guide, x, num_samples=k)
    else:
        stacked = chunks.map_terms(model, guide, x, num_samples=k,
            reduce=lambda t: torch.stack([t.log_lik, t.log_q - t.log_prior, t.log_weights], -1))
        lw = stacked[..., 2]
        out = {"elbo": lw.mean(0), "log_likelihood": estimators.iwae_from_log_weights(lw)}
print(json.dumps({"peak": rss(), "base": base, "seconds": time.perf_counter() - t0,
                  "log_px": out["log_likelihood"].mean().item()}))
"""


def run(mode: str, n: int, k: int, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(n), str(k), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 60000])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--append", help="also append the table to this markdown file")
    a = p.parse_args()
    k = a.num_samples
    lines = [
        f"### Evaluation memory against N ({time.strftime('%Y-%m-%d')})",
        "",
        f"CPU ({platform.machine()}, {a.threads} threads); torch {torch.__version__}. "
        f"Default VAE (784-400-20), K = {k}. Command: `python benchmarks/eval_memory.py --num-samples {k} "
        f"--sizes {' '.join(map(str, a.sizes))}`",
        "",
        "| N | K | full (K, N, 3): peak RSS (MB) | growth (MB) | fold (pyrovae): peak RSS (MB) | growth (MB) "
        "| (K, N, 3) tensor alone (MB) | seconds full / fold | same log p(x) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for n in a.sizes:
        full, fold = run("full", n, k, a.threads), run("fold", n, k, a.threads)
        same = abs(full["log_px"] - fold["log_px"]) < 1e-3
        lines.append(
            f"| {n} | {k} | {full['peak']:.0f} | {full['peak'] - full['base']:.0f} | {fold['peak']:.0f} | "
            f"{fold['peak'] - fold['base']:.0f} | {4 * k * n * 3 / 2**20:.0f} | "
            f"{full['seconds']:.1f} / {fold['seconds']:.1f} | {'yes' if same else 'no'} |"
        )
        print(lines[-1], flush=True)
    from report import emit

    emit("\n".join(lines) + "\n", a.append)


if __name__ == "__main__":
    main()
