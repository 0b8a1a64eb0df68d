"""What capturing an evaluation's chunks costs and saves, by the evaluation's number of chunks.

Times ``scoring.evaluate_data`` of the first N test images of a trained run at K samples,
eagerly (``compile = "none"``) and captured (``"capture"``: one capture per chunk shape, checked
against the eager call once), alternating, ``--repeats`` times each (median), at torch's threads
(timing-chosen threads off). A straight line through (chunks, eager - captured) gives the
capture's one-off cost (its intercept) and what it saves a chunk (its slope); their ratio is the
number of chunks from which capturing pays, ``pyrovae.inference.chunks.AUTO_CAPTURE_CHUNKS``.

    pyrovae fit configs/mnist_vae.toml --run-dir runs/mnist_vae     # once
    python benchmarks/capture_cost.py --run runs/mnist_vae [--limits 5 50 200] [--append RESULTS.md]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

os.environ["PYROVAE_TUNE_THREADS"] = "0"  # the compile modes alone, at fixed threads


def seconds(run, x, k: int, mode: str) -> float:
    from pyrovae.inference import scoring

    start = time.perf_counter()
    scoring.evaluate_data(run.model, run.guide, x, num_samples=k, compile=mode)
    return time.perf_counter() - start


def line_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ys on xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
    return my - slope * mx, slope


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/mnist_vae")
    p.add_argument("--limits", type=int, nargs="+", default=[5, 50, 200], help="test images per evaluation")
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--append")
    a = p.parse_args()

    import torch
    from report import emit_table  # benchmarks/ is on sys.path when run as a script

    from pyrovae.inference import chunks
    from pyrovae.run import experiment
    from pyrovae.run.recipes import evaluation_data

    run = experiment.load_run(a.run, device="cpu")
    every = evaluation_data(run.config, "test", "cpu").images
    lines = [
        "| images | chunks | eager s | captured s | eager - captured s |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    counts, saved = [], []
    for n in a.limits:
        x = every[:n]
        pc, dc = chunks.chunk_sizes(run.model, run.guide, (x,), {}, a.num_samples)
        count = math.ceil(n / dc) * math.ceil(a.num_samples / pc)
        times = {"none": [], "capture": []}
        for _ in range(a.repeats):
            for mode in times:
                times[mode].append(seconds(run, x, a.num_samples, mode))
        eager, captured = statistics.median(times["none"]), statistics.median(times["capture"])
        counts.append(count)
        saved.append(eager - captured)
        lines.append(f"| {n} | {count} | {eager:.2f} | {captured:.2f} | {eager - captured:+.2f} |")
    intercept, slope = line_fit(counts, saved)
    lines += [
        "",
        f"Capture's one-off cost {-intercept:.3f} s, saving {slope * 1e3:.2f} ms a chunk: it pays from "
        + (f"{-intercept / slope:.0f} chunks on" if slope > 0 else "no number of chunks")
        + f" (pyrovae.inference.chunks.AUTO_CAPTURE_CHUNKS = {chunks.AUTO_CAPTURE_CHUNKS}).",
    ]
    where = f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads), {a.run}"
    flags = f"--run {a.run} --limits {' '.join(map(str, a.limits))} --num-samples {a.num_samples}"
    emit_table(where, f"python benchmarks/capture_cost.py {flags} --repeats {a.repeats}", lines, a.append)


if __name__ == "__main__":
    main()
