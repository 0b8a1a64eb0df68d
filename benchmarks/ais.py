"""Importance sampling against annealed importance sampling (AIS) on a trained run, and BDMC
bounds on data simulated from its model (Wu et al. 2017, tables 1-2, do the same for VAEs).

Rows: IS at each K of ``--is-samples`` and AIS (from q(z|x), ``--chains`` chains) at each T of
``--steps`` on the first ``--limit`` test images: mean log p(x) over the images, its standard
error, the seconds and the seconds per image; then BDMC on ``--bdmc`` simulated datapoints at
each T: forward (lower) and reverse (upper) bounds, their gap, and the IS estimate at the
largest K on the same data. Run a fresh default VAE with ``--train`` (configs/mnist_vae.toml).

    python benchmarks/ais.py --run runs/mnist_vae --limit 100 --steps 100 1000 --bdmc 20
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from pyrovae.inference import ais, bidirectional, estimators
from pyrovae.run import experiment
from pyrovae.run.config import apply_overrides, config_from_dict, load_config
from pyrovae.run.recipes import evaluation_data

ROOT = Path(__file__).resolve().parents[1]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def row(name: str, values: torch.Tensor, seconds: float, n: int) -> str:
    mean, stderr = estimators.mean_and_stderr(values.double().cpu())
    return f"| {name} | {mean:.3f} | {stderr:.3f} | {seconds:.1f} | {1000 * seconds / n:.1f} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/mnist_vae")
    p.add_argument("--train", action="store_true", help="fit configs/mnist_vae.toml into --run first")
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, default=100, help="test images")
    p.add_argument("--is-samples", type=int, nargs="+", default=[100, 1000, 5000])
    p.add_argument("--steps", type=int, nargs="*", default=[100, 1000], help="T of AIS on the test images")
    p.add_argument("--bdmc-steps", type=int, nargs="*", help="T of BDMC (default: --steps)")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--adapt-chains", type=int, default=4, help="chains of the step-size adaptation pass")
    p.add_argument("--adapt-rounds", type=int, default=3, help="adaptation transitions per temperature")
    p.add_argument("--bdmc", type=int, default=20, help="simulated datapoints (0: none)")
    p.add_argument("--compile", default="auto", help="how the path's densities run (pyrovae.runtime.compile)")
    p.add_argument("--append", help="append the tables to this markdown file")
    a = p.parse_args()
    if a.train:
        raw = load_config(ROOT / "configs" / "mnist_vae.toml").to_dict()
        config = config_from_dict(apply_overrides(raw, [f'run_dir="{a.run}"', f'device="{a.device}"']))
        experiment.fit_config(config, progress=False)
    run = experiment.load_run(a.run, which="last")
    x, *cond = evaluation_data(run.config, "test", run.device).head(a.limit).inputs(run.model)
    n = x.shape[0]
    lines = [
        "| estimator | mean log p(x) | stderr | seconds | ms per image |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for k in a.is_samples:
        torch.manual_seed(0)
        ll, s = timed(lambda: estimators.log_likelihood(run.model, run.guide, x, *cond, num_samples=k))
        lines.append(row(f"IS, K = {k}", ll, s, n))
        print(lines[-1], flush=True)
    for t in a.steps:
        torch.manual_seed(0)
        r, s = timed(lambda: ais.ais_log_likelihood(
            run.model, run.guide, x, *cond, num_steps=t, num_chains=a.chains, compile=a.compile,
            adapt_chains=a.adapt_chains, adapt_rounds=a.adapt_rounds, progress=False))  # fmt: skip
        lines.append(
            row(
                f"AIS, T = {t}, S = {a.chains} (acceptance {r.acceptance.mean():.2f}; by band "
                f"{' '.join(f'{b:.2f}' for b in r.acceptance_bands.mean(1))})",
                r.log_likelihood,
                s,
                n,
            )
        )
        print(lines[-1], flush=True)
    if a.bdmc:
        lines += [
            "",
            "| BDMC, T | lower | upper | gap | IS on the same data | seconds |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for t in a.steps if a.bdmc_steps is None else a.bdmc_steps:
            torch.manual_seed(0)
            b, s = timed(lambda: bidirectional.bdmc(
                run.model, run.guide, x, *cond, num_datapoints=a.bdmc, num_steps=t, num_chains=a.chains,
                importance_samples=max(a.is_samples), compile=a.compile,
                adapt_chains=a.adapt_chains, adapt_rounds=a.adapt_rounds))  # fmt: skip
            parts = (b.sandwich.lower, b.sandwich.upper, b.sandwich.gap, b.importance)
            stats = [estimators.mean_and_stderr(v.double().cpu()) for v in parts]
            cells = [f"{mean:.3f} +- {stderr:.3f}" for mean, stderr in stats]
            lines.append(f"| {t} | " + " | ".join(cells) + f" | {s:.1f} |")
            print(lines[-1], flush=True)
    device = (
        torch.cuda.get_device_name()
        if run.device.type == "cuda"
        else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    )
    ints = " ".join
    flags = (
        f"--run {a.run} --limit {a.limit} --is-samples {ints(map(str, a.is_samples))} "
        f"--steps {ints(map(str, a.steps))} --chains {a.chains} --adapt-chains {a.adapt_chains} "
        f"--adapt-rounds {a.adapt_rounds} --bdmc {a.bdmc}"
        + ("" if a.bdmc_steps is None else f" --bdmc-steps {ints(map(str, a.bdmc_steps))}")
        + ("" if a.compile == "auto" else f" --compile {a.compile}")
    )
    from report import emit_table  # benchmarks/ is on sys.path when run as a script

    where = f"{device}, torch {torch.__version__}; {n} test images of {a.run}"
    emit_table(where, f"python benchmarks/ais.py {flags}", lines, a.append)


if __name__ == "__main__":
    main()
