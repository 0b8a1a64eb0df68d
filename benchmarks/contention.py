"""Speed on a shared machine: pyrovae and a plain PyTorch loop, idle and beside busy processes.

Kinds: ``eval`` (pyrovae's K-sample evaluation, ``experiment.evaluate_data``, of the first ``--limit``
test images of a trained default VAE), ``eval:plain`` (the same arithmetic written in plain
PyTorch: encoder, K reparameterized draws per image in chunks of the same rows, decoder,
Bernoulli and Gaussian log-densities, logsumexp), ``train`` (``--steps`` steps of
``pyrovae.fit``, defaults) and ``train:plain`` (the same steps in a hand-written loop,
``benchmarks/speed.py``'s ``plain``). Each runs in its own process, with torch's default
threads, with one thread, and with ``OMP_WAIT_POLICY=PASSIVE``, while 0, 1 and 2 other
processes spin on a core each (``--busy``). Prints seconds and each one's slowdown against
the same run on the idle machine.

    pyrovae fit configs/mnist_vae.toml --run-dir runs/mnist_vae     # once
    python benchmarks/contention.py --run runs/mnist_vae [--busy 0 1 2] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

KINDS = ("eval", "eval:plain", "train", "train:plain")
SETTINGS = {"default": {}, "1 thread": {"OMP_NUM_THREADS": "1"}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def plain_eval(run, x, k: int, rows: int):
    """log p(x) per image by K-sample importance sampling, written directly in PyTorch."""
    import math

    import torch
    import torch.nn.functional as F

    guide, decoder = run.guide, run.model.net
    per = max(1, rows // x.shape[0])  # particles per chunk: the same pairs per chunk as pyrovae's
    out = []
    with torch.no_grad():
        loc, scale = guide.params(x)
        flat = x.flatten(1)
        for start in range(0, k, per):
            kk = min(per, k - start)
            eps = torch.randn(kk, *loc.shape)
            z = loc + scale * eps
            logits = decoder(z).flatten(2)
            log_px = (flat * logits - F.softplus(logits)).sum(-1)
            log_pz = -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
            log_q = -0.5 * (eps**2).sum(-1) - scale.log().sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
            out.append(log_px + log_pz - log_q)
    lw = torch.cat(out)
    return torch.logsumexp(lw, 0) - math.log(k)


def one(kind: str, a) -> float:
    """Seconds of one run of ``kind`` in this process (after a warm-up where it has one)."""
    import dataclasses

    from pyrovae import experiment
    from pyrovae.chunks import CPU_ROWS
    from pyrovae.data import EVAL_BINARIZATION_SEED

    run = experiment.load_run(a.run, device="cpu")
    if kind.startswith("eval"):
        config = run.config.replace(data=dataclasses.replace(run.config.data, test_limit=a.limit))
        run = dataclasses.replace(run, config=config)
        x = experiment.load_data(run.config, "test", "cpu").observe_fixed(EVAL_BINARIZATION_SEED)
        fn = (
            (lambda: experiment.evaluate_data(run.model, run.guide, x, num_samples=a.num_samples))
            if kind == "eval"
            else (lambda: plain_eval(run, x, a.num_samples, CPU_ROWS))
        )
        fn()  # warm-up: capture, allocator
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    import speed  # benchmarks/ is on sys.path when run as a script

    args = argparse.Namespace(data_root=None, warmup=a.steps, steps=a.steps, repeats=1, device="cpu")
    row = "plain" if kind == "train:plain" else "pyrovae"
    return speed.one(row, "examples", 128, args)["seconds_per_step"] * a.steps


def measure(kind: str, setting: str, a) -> float | None:
    env = {**os.environ, **SETTINGS[setting]}
    cmd = [sys.executable, __file__, "--one", kind, "--run", a.run, "--limit", str(a.limit)]
    cmd += ["--num-samples", str(a.num_samples), "--steps", str(a.steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/mnist_vae")
    p.add_argument("--limit", type=int, default=20, help="test images of the evaluation")
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--steps", type=int, default=200, help="training steps timed (after as many to warm up)")
    p.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="spinning processes beside")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--one", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--append")
    a = p.parse_args()
    if a.one:
        print(json.dumps({"seconds": one(a.one, a)}))
        return
    seconds: dict[tuple, float | None] = {}
    for busy in a.busy:
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            for kind in a.kinds:
                for setting in a.settings:
                    seconds[kind, setting, busy] = measure(kind, setting, a)
                    print(kind, setting, busy, seconds[kind, setting, busy], flush=True)
        finally:
            for s in spinners:
                s.kill()
    cell = lambda s, idle: "failed" if s is None else f"{s:.2f} ({s / idle:.1f}x)" if idle else f"{s:.2f}"  # noqa: E731
    lines = [
        "| kind | threads | " + " | ".join(f"{b} busy: s (vs idle)" for b in a.busy) + " |",
        "| --- | --- |" + " ---: |" * len(a.busy),
    ]
    for kind in a.kinds:
        for setting in a.settings:
            idle = seconds.get((kind, setting, a.busy[0]))
            cells = [cell(seconds[kind, setting, b], idle) for b in a.busy]
            lines.append(f"| {kind} | {setting} | " + " | ".join(cells) + " |")
    from report import emit_table  # benchmarks/ is on sys.path when run as a script

    where = f"CPU ({platform.machine()}, {os.cpu_count()} cores), {a.limit} test images of {a.run}"
    flags = f"--run {a.run} --limit {a.limit} --num-samples {a.num_samples} --steps {a.steps}"
    emit_table(where, f"python benchmarks/contention.py {flags}", lines, a.append)


if __name__ == "__main__":
    main()
