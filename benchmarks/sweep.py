"""A 2-config x 3-seed MNIST sweep, run in parallel (the default workers) and one run after
another (``--workers 1``), with its wall times side by side and its comparison: across seeds,
and each seed's pair with the paired and the unpaired standard error of the difference.

The configs are the default VAE (784-400-20, Bernoulli, Adam 1e-3, batch 128) trained by the
ELBO and by the IWAE bound at k = 5, a few epochs each, evaluated by importance sampling on the
first test images.

    python benchmarks/sweep.py                       # this machine's row (about 15 minutes on 2 CPUs)
    python benchmarks/sweep.py --only parallel --workers 2 --device cuda   # two workers on one GPU
    python benchmarks/sweep.py --dry                 # toy sizes (the tests run this)
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pyrovae.run import compare

CONFIG = """
seed = 0
device = "{device}"
eval_samples = {eval_samples}
[data]
name = "mnist"
val_size = 10000
train_size = {train_size}
test_limit = {test_limit}
[model]
name = "vae"
latent_dim = 20
hidden = [400]
[guide]
name = "mlp"
hidden = [400]
[train]
epochs = {epochs}
batch_size = 128
lr = 1e-3
k = 5
[sweep]
grid = {{ "train.objective" = ["elbo", "iwae"] }}
seeds = {seeds}
"""

SIZES = {
    "full": dict(epochs=3, train_size=50000, test_limit=2000, eval_samples=1000),
    "dry": dict(epochs=1, train_size=256, test_limit=64, eval_samples=10),
}


def pyrovae(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "pyrovae", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"pyrovae {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_sweep")
    p.add_argument("--dry", action="store_true")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, help="the parallel sweep's workers (default: pyrovae's)")
    p.add_argument("--only", choices=["parallel", "serial"], help="run one of the two")
    args = p.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    sizes = SIZES["dry" if args.dry else "full"]
    config = out / "sweep.toml"
    config.write_text(CONFIG.format(device=args.device, seeds=args.seeds, **sizes))
    modes = {
        "parallel": [] if args.workers is None else ["--workers", str(args.workers)],
        "serial": ["--workers", "1"],
    }
    seconds, said = {}, {}
    for mode, flags in modes.items():
        if args.only not in (None, mode):
            continue
        start = time.perf_counter()
        said[mode] = pyrovae("sweep", str(config), "--dir", str(out / mode), *flags).stdout
        seconds[mode] = time.perf_counter() - start
    print(f"## Sweep: ELBO against IWAE (k = 5), {args.seeds} seeds ({'dry' if args.dry else 'MNIST'})\n")
    budget = f"{sizes['epochs']} epochs on {sizes['train_size']} training images"
    scored = f"IS at K = {sizes['eval_samples']} on the first {sizes['test_limit']} test images"
    print(f"{budget}; {scored}; device {args.device}\n")
    print("| mode | workers x threads | wall time (s) |\n| --- | --- | --- |")
    for mode, s in seconds.items():
        layout = next(line for line in said[mode].splitlines() if " to run on " in line).split(" to run on ")[
            1
        ]
        print(f"| {mode} | {layout} | {s:.1f} |")
    if len(seconds) == 2:
        print(f"\nserial / parallel: {seconds['serial'] / seconds['parallel']:.2f}x")
    shown = out / next(iter(seconds))
    print("\n" + compare.markdown(compare.study([str(shown)])) + "\n")
    paired_table(shown, args.seeds)
    print(f"\ncommand: python benchmarks/sweep.py{' --dry' * args.dry}; cores: {os.cpu_count()}")


def paired_table(folder: Path, seeds: int) -> None:
    """Each seed's IWAE run against its ELBO run: the paired and unpaired standard errors."""
    print("| seed | log p(x): iwae - elbo | paired se | unpaired se | unpaired / paired |")
    print("| --- | --- | --- | --- | --- |")
    for seed in range(seeds):
        pair = [compare.Scored.load(folder / f"objective={o},seed={seed}") for o in ("elbo", "iwae")]
        cell = compare.compare(pair)[1][f"log_likelihood - objective=elbo,seed={seed}"]
        ratio = cell.also / cell.spread if cell.spread > 0 else math.inf
        print(f"| {seed} | {cell.mean:+.3f} | {cell.spread:.3f} | {cell.also:.3f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
