"""Speed on a shared machine: pyrovae and a plain PyTorch loop, idle and beside busy processes.

Kinds: ``eval`` (pyrovae's K-sample evaluation, ``scoring.evaluate_data``, of the first ``--limit``
test images of a trained default VAE), ``eval:plain`` (the same arithmetic written in plain
PyTorch: encoder, K reparameterized draws per image in chunks of the same rows, decoder,
Bernoulli and Gaussian log-densities, logsumexp), ``eval:python`` (the estimator a notebook
calls, ``pyrovae.estimators.log_likelihood``, with no tuner passed), ``train`` (``--steps`` steps of
``pyrovae.fit``, defaults) and ``train:plain`` (the same steps in a hand-written loop,
``benchmarks/speed.py``'s ``plain``). Each runs in its own process, while 0, 1 and 2 other
processes spin on a core each (``--busy``), in each setting: ``default`` (pyrovae: threads
chosen by timing, ``pyrovae.runtime.threads.Tuner``; plain: torch's threads), ``all cores`` (pyrovae with
torch's threads fixed, ``PYROVAE_TUNE_THREADS=0``), ``1 thread`` (``OMP_NUM_THREADS=1``) and
``passive`` (``OMP_WAIT_POLICY=PASSIVE``). Prints seconds (the median of ``--repeats`` timed runs
after a warm-up) and each one's slowdown against the same run on the idle machine. ``--pairs N``
instead alternates pyrovae's default and one thread N times (``--kinds``: default eval and train)
and prints their ratios, side by side under the same load. ``--profile`` instead counts, under
``torch.profiler``, the ATen calls of each evaluation and the time inside them and outside
(Python, Pyro's bookkeeping).

    pyrovae fit configs/mnist_vae.toml --run-dir runs/mnist_vae     # once
    python benchmarks/contention.py --run runs/mnist_vae [--busy 0 1 2] [--pairs N | --profile] [--append F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

KINDS = ("eval", "eval:plain", "eval:python", "train", "train:plain")
SETTINGS = {
    "default": {},
    "all cores": {"PYROVAE_TUNE_THREADS": "0"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}
PLAIN_SETTINGS = ("default", "1 thread", "passive")  #: a plain loop has no timed threads to turn off


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


def timed(fn, profile: bool) -> dict:
    """Seconds of ``fn()``; with ``profile``, also its ATen calls and the seconds inside them."""
    if not profile:
        start = time.perf_counter()
        fn()
        return {"seconds": time.perf_counter() - start}
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    with profiler(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    inside = sum(e.self_cpu_time_total for e in events) / 1e6
    return {"seconds": seconds, "calls": sum(e.count for e in events), "inside": inside}


def one(kind: str, a) -> dict:
    """Seconds of one run of ``kind`` in this process (after a warm-up where it has one)."""
    import dataclasses

    from pyrovae.inference import scoring
    from pyrovae.inference.chunks import CPU_ROWS
    from pyrovae.run import experiment
    from pyrovae.run.recipes import evaluation_data

    run = experiment.load_run(a.run, device="cpu")
    if kind.startswith("eval"):
        config = run.config.replace(data=dataclasses.replace(run.config.data, test_limit=a.limit))
        run = dataclasses.replace(run, config=config)
        x = evaluation_data(run.config, "test", "cpu").images
        from pyrovae import estimators

        fn = {
            "eval": lambda: scoring.evaluate_data(run.model, run.guide, x, num_samples=a.num_samples),
            "eval:plain": lambda: plain_eval(run, x, a.num_samples, CPU_ROWS),
            "eval:python": lambda: estimators.log_likelihood(
                run.model, run.guide, x, num_samples=a.num_samples
            ),
        }[kind]
        fn()  # warm-up: allocator, caches
        if a.profile:
            return timed(fn, True)
        return {"seconds": statistics.median(timed(fn, False)["seconds"] for _ in range(a.repeats))}
    import speed  # benchmarks/ is on sys.path when run as a script

    args = argparse.Namespace(data_root=None, warmup=a.steps, steps=a.steps, repeats=a.repeats, device="cpu")
    row = "plain" if kind == "train:plain" else "pyrovae"
    return {"seconds": speed.one(row, "examples", 128, args)["seconds_per_step"] * a.steps}


def measure(kind: str, setting: str, a) -> dict | None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PYROVAE_TUNE_THREADS")}
    cmd = [sys.executable, __file__, "--one", kind, "--run", a.run, "--limit", str(a.limit)]
    cmd += ["--num-samples", str(a.num_samples), "--steps", str(a.steps), "--repeats", str(a.repeats)]
    cmd += ["--profile"] * a.profile
    out = subprocess.run(cmd, env={**env, **SETTINGS[setting]}, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def slowdown_table(results: dict, a) -> list[str]:
    """Seconds and slowdown against the idle machine, a row per kind and setting."""
    cell = lambda r, idle: (
        "failed"
        if r is None
        else f"{r['seconds']:.2f}"
        + (  # noqa: E731
            f" ({r['seconds'] / idle['seconds']:.1f}x)" if idle else ""
        )
    )
    lines = [
        "| kind | threads | " + " | ".join(f"{b} busy: s (vs idle)" for b in a.busy) + " |",
        "| --- | --- |" + " ---: |" * len(a.busy),
    ]
    for kind, setting in dict.fromkeys((k, s) for k, s, _ in results):
        idle = results[kind, setting, a.busy[0]]
        cells = [cell(results[kind, setting, b], idle) for b in a.busy]
        lines.append(f"| {kind} | {setting} | " + " | ".join(cells) + " |")
    return lines


def profile_table(results: dict) -> list[str]:
    """Per evaluation: seconds, ATen calls, microseconds inside each, seconds outside them."""
    lines = [
        "| kind | threads | busy | s | ATen calls | µs inside a call | s outside calls |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (kind, setting, busy), r in results.items():
        if r is None:
            lines.append(f"| {kind} | {setting} | {busy} | failed | | | |")
            continue
        per = r["inside"] / r["calls"] * 1e6
        row = f"| {kind} | {setting} | {busy} | {r['seconds']:.2f} | {r['calls']} | {per:.0f}"
        lines.append(row + f" | {r['seconds'] - r['inside']:.2f} |")
    return lines


@contextmanager
def beside(busy: int):
    """``busy`` other processes spinning on a core each while the block runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        yield
    finally:
        for s in spinners:
            s.kill()


def pairs_table(a) -> list[str]:
    """pyrovae's default against one thread, measured in alternation ``--pairs`` times."""
    lines = [
        f"| kind | busy | default s | 1 thread s | default / 1 thread, median of {a.pairs} pairs (range) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for busy in a.busy:
        with beside(busy):
            for kind in a.kinds or ["eval", "train"]:
                runs = [(measure(kind, "default", a), measure(kind, "1 thread", a)) for _ in range(a.pairs)]
                runs = [(d["seconds"], o["seconds"]) for d, o in runs if d and o]
                ratios = sorted(d / o for d, o in runs)
                print(kind, busy, runs, flush=True)
                med = statistics.median
                lines.append(
                    f"| {kind} | {busy} | {med(d for d, _ in runs):.2f} | {med(o for _, o in runs):.2f} | "
                    f"{med(ratios):.2f} ({ratios[0]:.2f} to {ratios[-1]:.2f}) |"
                )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/mnist_vae")
    p.add_argument("--limit", type=int, default=20, help="test images of the evaluation")
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--steps", type=int, default=200, help="training steps timed (after as many to warm up)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per process (median)")
    p.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="spinning processes beside")
    p.add_argument("--kinds", nargs="+", choices=KINDS, help="default: all (--profile: the evaluations)")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), help="default: all (--profile: 2)")
    p.add_argument("--profile", action="store_true", help="ATen calls and time inside them, per evaluation")
    p.add_argument("--pairs", type=int, help="default against 1 thread, alternated N times (ratios)")
    p.add_argument("--one", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--append")
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a)))
        return
    kinds = a.kinds or (["eval", "eval:plain"] if a.profile else list(KINDS))
    settings = a.settings or (["all cores", "1 thread"] if a.profile else list(SETTINGS))
    results: dict[tuple, dict | None] = {}
    for busy in [] if a.pairs else a.busy:
        with beside(busy):
            for kind in kinds:
                for setting in settings:
                    if kind.endswith(":plain") and setting not in PLAIN_SETTINGS and not a.profile:
                        continue
                    results[kind, setting, busy] = measure(kind, setting, a)
                    print(kind, setting, busy, results[kind, setting, busy], flush=True)
    from report import emit_table  # benchmarks/ is on sys.path when run as a script

    where = f"CPU ({platform.machine()}, {os.cpu_count()} cores), {a.limit} test images of {a.run}"
    flags = f"--run {a.run} --limit {a.limit} --num-samples {a.num_samples} --steps {a.steps}"
    flags += f" --repeats {a.repeats}" + " --profile" * a.profile
    flags += f" --pairs {a.pairs}" * bool(a.pairs) + f" --busy {' '.join(map(str, a.busy))}"
    flags += f" --kinds {' '.join(a.kinds)}" * bool(a.kinds)
    quoted = [f"'{s}'" if " " in s else s for s in a.settings or []]
    flags += f" --settings {' '.join(quoted)}" * bool(quoted)
    lines = pairs_table(a) if a.pairs else profile_table(results) if a.profile else slowdown_table(results, a)
    emit_table(where, f"python benchmarks/contention.py {flags}", lines, a.append)


if __name__ == "__main__":
    main()
