"""One rank under torchrun against no torchrun: the same fit and the same evaluation.

Trains configs/mnist_vae.toml for ``--steps`` steps (the loss eager, as DDP runs it) and
evaluates the first ``--limit`` test images at K = ``--num-samples``, once in this process and
once in one torchrun worker (``--nproc-per-node 1``) that joins a process group of one (NCCL
on CUDA, Gloo on CPU), so that its gradients go through DistributedDataParallel's all-reduce
and its evaluation through the sharded path. Same seed, same draws: prints the largest
differences in the logged losses, the final parameters and the evaluation's log p(x) and
ELBO, and whether they agree.

    python benchmarks/torchrun_check.py [--device cuda] [--steps 300] [--limit 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  #: relative difference below which two figures agree (the draws are the same)


def fit_and_evaluate(args, run_dir: Path) -> dict:
    """Train and evaluate in this process (inside a process group when torchrun made one)."""
    import torch

    from pyrovae.run import evaluation, experiment
    from pyrovae.run.config import load_config
    from pyrovae.runtime import distributed

    config = load_config(ROOT / "configs" / "mnist_vae.toml")
    config = config.replace(
        run_dir=str(run_dir),
        device=args.device,
        data=dataclasses.replace(config.data, test_limit=args.limit, val_limit=args.limit),
        train=dataclasses.replace(
            config.train, max_steps=args.steps, log_every=10, checkpoint_every=10**9, compile="none"
        ),  # eager in both: under a process group the loss runs eagerly (DDP)
    )
    start = time.perf_counter()
    experiment.fit_config(config, progress=False)
    run = experiment.load_run(run_dir, which="last", device=args.device)
    report = evaluation.evaluate(run, num_samples=args.num_samples)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    params = {
        f"{part}.{k}": v.double().cpu()
        for part in ("model", "guide")
        for k, v in run.checkpoint[part].items()
    }
    torch.save(params, run_dir / "params.pt")
    return {
        "losses": [r["loss"] for r in rows if r["kind"] == "step"],
        "log_likelihood": report["log_likelihood"]["mean"],
        "elbo": report["elbo"]["mean"],
        "ranks": distributed.world()[1],
        "process_group": distributed.active(),
        "backend": torch.distributed.get_backend() if distributed.active() else None,
        "seconds": time.perf_counter() - start,
    }


def worker(args) -> None:
    from pyrovae.runtime import distributed

    distributed.init_from_env(args.device, single=True)
    out = fit_and_evaluate(args, Path(args.run_dir))
    Path(args.run_dir, "result.json").write_text(json.dumps(out))
    distributed.shutdown()


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def compare(single: dict, ranked: dict, one: Path, other: Path) -> dict:
    import torch

    p, q = torch.load(one / "params.pt"), torch.load(other / "params.pt")
    losses = [relative(a, b) for a, b in zip(single["losses"], ranked["losses"])]
    out = {
        "backend": ranked["backend"],
        "process_group": ranked["process_group"],
        "loss_rows": len(losses),
        "max_loss_rel_diff": max(losses, default=float("nan")),
        "max_param_abs_diff": max((p[k] - q[k]).abs().max().item() for k in p),
        "log_likelihood": [single["log_likelihood"], ranked["log_likelihood"]],
        "elbo": [single["elbo"], ranked["elbo"]],
        "seconds": [single["seconds"], ranked["seconds"]],
    }
    out["agree"] = bool(
        ranked["process_group"]
        and len(single["losses"]) == len(ranked["losses"]) > 0
        and out["max_loss_rel_diff"] < TOLERANCE
        and relative(*out["log_likelihood"]) < TOLERANCE
        and relative(*out["elbo"]) < TOLERANCE
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--limit", type=int, default=1000, help="test (and validation) images")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--json", help="also write the comparison to this file")
    p.add_argument("--append", help="also append the result to this markdown file")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory() as tmp:
        one, other = Path(tmp, "single"), Path(tmp, "torchrun")
        single = fit_and_evaluate(args, one)
        flags = f"--steps {args.steps} --limit {args.limit} --num-samples {args.num_samples}"
        flags += f" --device {args.device}"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "1",
            __file__,
        ]
        env = {**os.environ, "PYROVAE_DIST_TIMEOUT": "120"}
        subprocess.run([*cmd, "--worker", "--run-dir", str(other), *flags.split()], env=env, check=True)
        ranked = json.loads((other / "result.json").read_text())
        out = compare(single, ranked, one, other)
    from report import emit  # benchmarks/ is on sys.path when run as a script

    emit(
        f"One rank under torchrun ({out['backend']}) against one process, {args.device}: "
        f"{out['loss_rows']} logged losses, largest relative difference {out['max_loss_rel_diff']:.2e}; "
        f"final parameters differ by at most {out['max_param_abs_diff']:.2e}; "
        f"log p(x) {out['log_likelihood'][0]:.4f} and {out['log_likelihood'][1]:.4f}, "
        f"ELBO {out['elbo'][0]:.4f} and {out['elbo'][1]:.4f} "
        f"(K = {args.num_samples}, {args.limit} test images): {'agree' if out['agree'] else 'DIFFER'}. "
        f"Command: `python benchmarks/torchrun_check.py --steps {args.steps} --limit {args.limit} "
        f"--num-samples {args.num_samples}`\n",
        args.append,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
