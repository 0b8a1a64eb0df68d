"""The cost of scoring a pair on repeated data instead of under a particle plate.

A pair whose code does not broadcast over a leading particle dim (a guide that concatenates an
(N, H) feature with a draw, as Pyro's examples write it) is scored by pyrovae on its data
repeated K times (:mod:`pyrovae.inference.particles`). To measure only that, the same
broadcasting pair, the two-stochastic-layer VAE of Burda et al. (2015, sec. 5: ``vae2`` with
``mlp2``, two latent sites, untrained), is scored both ways by
``pyrovae.estimators.log_likelihood``, with the same parameters and seed: under the plate (its
encoder run once per datapoint) and marked as not broadcasting (every layer run once per
particle). The table gives the seconds of each (median of ``--repeats``), their ratio, and the
largest difference of the per-datapoint estimates (the same draws: 0 up to rounding).

    python benchmarks/particles.py [--num 100] [--samples 1000 5000] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))


def timed(model, guide, x, k: int, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of ``repeats`` K-sample estimates of log p(x), and the last estimate."""
    from pyrovae import estimators

    times = []
    for _ in range(repeats):
        pyro.set_rng_seed(1)
        start = time.perf_counter()
        values = estimators.log_likelihood(model, guide, x, num_samples=k)
        times.append(time.perf_counter() - start)
    return statistics.median(times), values


def main() -> None:
    from report import emit_measured, row

    from pyrovae.inference import plates
    from pyrovae.registry import build_guide, build_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num", type=int, default=100, help="datapoints scored")
    p.add_argument("--samples", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--append")
    a = p.parse_args()
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(a.num, 1, 28, 28) * 0.3)
    model = build_model("vae2", x_shape=(1, 28, 28))
    plate = build_guide("mlp2", x_shape=(1, 28, 28), latent_dim=model.latent_dim)
    repeated = build_guide("mlp2", x_shape=(1, 28, 28), latent_dim=model.latent_dim)
    repeated.load_state_dict(plate.state_dict())
    plates.remember(model, plate, False)
    plates.remember(model, repeated, True)  # scored as a pair that does not broadcast
    header = ["K", "under the plate, s", "on repeated data, s", "ratio", "largest difference, nats"]
    lines = [row(header), row(["---:"] * 5)]
    for k in a.samples:
        fast, one = timed(model, plate, x, k, a.repeats)
        slow, other = timed(model, repeated, x, k, a.repeats)
        diff = (one - other).abs().max().item()
        lines.append(row([k, f"{fast:.2f}", f"{slow:.2f}", f"{slow / fast:.2f}", f"{diff:.1e}"]))
    flags = f"--num {a.num} --samples {' '.join(map(str, a.samples))} --repeats {a.repeats}"
    conditions = f"vae2 + mlp2 (untrained), {a.num} random binary 28x28 images, median of {a.repeats}"
    emit_measured("cpu", conditions, f"python benchmarks/particles.py {flags}", lines, a.append)


if __name__ == "__main__":
    main()
