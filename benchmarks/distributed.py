"""Data-parallel throughput: 1 and 2 ranks (Gloo on CPU, NCCL on CUDA) training the default VAE.

Each row launches ``torchrun --standalone --nproc-per-node W`` on this script's worker,
which trains configs/mnist_vae.toml (784-400-20, batch ``--batch`` per rank) with
``pyrovae.fit`` for ``--steps`` steps and times the steady state (from step 50 on, after
capture and warm-up), and reports datapoints per second. On CPU the ranks share the
machine's cores: one rank gets all of them as threads, W ranks one share each. The
all-reduce volume per step is the parameter count of model and guide times 4 bytes; a ring
all-reduce sends and receives 2 (W - 1) / W of it per rank.

    python benchmarks/distributed.py [--device cpu] [--steps 400] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 50  #: steps before timing starts


def worker(args) -> None:
    import dataclasses

    import torch

    from pyrovae.run import experiment, recipes
    from pyrovae.run.config import load_config
    from pyrovae.runtime import distributed

    distributed.init_from_env(args.device)
    rank, world = distributed.world()
    config = load_config(ROOT / "configs" / "mnist_vae.toml")
    config = config.replace(
        run_dir=args.run_dir,
        device=args.device,
        train=dataclasses.replace(
            config.train,
            max_steps=args.steps,
            batch_size=args.batch,
            log_every=WARMUP,
            compile=args.compile,
            checkpoint_every=10**9,
        ),
    )
    marks: dict[int, float] = {}

    def clock(row):
        if row["kind"] == "step":
            if torch.cuda.is_available() and args.device != "cpu":
                torch.cuda.synchronize()
            marks[row["step"]] = time.perf_counter()

    result = experiment.fit_config(config, progress=False, callbacks=[clock])
    first, last = WARMUP, max(marks)
    seconds = marks[last] - marks[first]
    model, guide = recipes.build(config, (1, 28, 28))
    params = sum(p.numel() for m in (model, guide) for p in m.parameters())
    allreduce_ms = None
    if world > 1:  # the all-reduce alone: one flat tensor of every parameter, as DDP's buckets add up to
        import torch.distributed as dist

        flat = torch.zeros(params, device=next(model.parameters()).device if args.device != "cpu" else "cpu")
        for _ in range(5):
            dist.all_reduce(flat)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(50):
            dist.all_reduce(flat)
        if flat.is_cuda:
            torch.cuda.synchronize()
        allreduce_ms = (time.perf_counter() - t0) / 50 * 1000
    if rank == 0:
        print(
            "RESULT "
            + json.dumps(
                {
                    "world": world,
                    "steps": last - first,
                    "seconds": seconds,
                    "datapoints_per_s": (last - first) * args.batch * world / seconds,
                    "compile": result.compile,
                    "params": params,
                    "allreduce_ms": allreduce_ms,
                    "threads": torch.get_num_threads(),
                }
            ),
            flush=True,
        )
    distributed.shutdown()


def launch(world: int, args, compile_mode: str) -> dict:
    cores = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // world))}
    with tempfile.TemporaryDirectory() as run_dir:
        worker = (
            f"--worker --run-dir {run_dir} --steps {args.steps} --batch {args.batch} --device {args.device}"
        )
        torchrun = f"-m torch.distributed.run --standalone --nproc-per-node {world}"
        cmd = [sys.executable, *torchrun.split(), __file__, *worker.split(), "--compile", compile_mode]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=128, help="datapoints per rank per step")
    p.add_argument("--compile", default="auto")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--append", help="also append the table to this markdown file")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from report import emit

    rows = []
    for world in args.ranks:
        for mode in ("auto", "none") if world == 1 else ("none",):
            rows.append((world, mode, launch(world, args, mode)))
    base = rows[0][2]["datapoints_per_s"]
    params = rows[0][2]["params"]
    device = args.device if args.device == "cpu" else f"{args.device} ({args.device})"
    lines = [
        f"### Data-parallel throughput ({device}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; `python benchmarks/distributed.py --device {args.device} --steps "
        f"{args.steps}`)",
        "",
        f"Default VAE (784-400-20), {args.batch} datapoints per rank per step, steps "
        f"{WARMUP}..{args.steps} timed. "
        f"All-reduce per step: {params:,} parameters = {params * 4 / 2**20:.2f} MiB (float32).",
        "",
        "| ranks | loss | threads per rank | global batch | ms / step | all-reduce alone, ms | "
        "datapoints / s | vs 1 rank |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for world, mode, r in rows:
        how = "captured graph" if r["compile"] == "capture" else "eager" + (" under DDP" if world > 1 else "")
        step_ms = 1000 * r["seconds"] / r["steps"]
        ar = "" if r["allreduce_ms"] is None else f"{r['allreduce_ms']:.2f}"
        lines.append(
            f"| {world} | {how} | {r['threads']} | {args.batch * world} | {step_ms:.2f} | {ar} | "
            f"{r['datapoints_per_s']:,.0f} | {r['datapoints_per_s'] / base:.2f}x |"
        )
    emit("\n".join(lines) + "\n", args.append)


if __name__ == "__main__":
    main()
