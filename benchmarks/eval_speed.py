"""Speed of the K = 5000 importance-sampled evaluation against the device's matrix-product rate.

Times ``pyrovae evaluate`` (``evaluation.evaluate``: ELBO, reconstruction, KL, log p(x) and
ESS from one pass) on a trained run, counts the pass's floating-point operations with
``torch.utils.flop_counter`` (a probe of one datapoint, scaled), measures the rate of the
same matrix products on this device (the decoder's linear layers at the chunk's row count)
and prints: seconds, chunk rows, achieved GFLOP/s, matmul GFLOP/s, the matmul floor
(FLOPs / matmul rate) and the time as a multiple of that floor.

    pyrovae fit configs/mnist_vae.toml          # once, if runs/mnist_vae is missing
    python benchmarks/eval_speed.py --run runs/mnist_vae [--num-samples 5000] [--limit N] [--max-rows R]
                                    [--compile auto|none|...] [--append benchmarks/RESULTS.md] [--json F]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import time
from pathlib import Path

import pyro
import torch
from torch.utils.flop_counter import FlopCounterMode

from pyrovae.inference import chunks, weights
from pyrovae.run.evaluation import evaluate
from pyrovae.run.experiment import load_run
from pyrovae.run.recipes import evaluation_data


def pass_flops(model, guide, x1: torch.Tensor, k: int) -> float:
    """FLOPs of K particles for one datapoint: intercept (guide) + K x slope (model), from two probes."""
    counts = []
    for p in (64, 128):
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            weights.log_prob_terms(model, guide, x1, num_samples=p)
        counts.append(fc.get_total_flops())
    slope = (counts[1] - counts[0]) / 64
    return counts[0] - 64 * slope + k * slope


def matmul_rate(model, rows: int, device: torch.device, repeats: int = 20) -> float:
    """FLOP/s of ``rows`` x in @ in x out products for every linear layer of ``model``, median of runs."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(rows, m.in_features, device=device) for m in layers]
    flops = sum(2 * rows * m.in_features * m.out_features for m in layers)

    def run():
        for m, h in zip(layers, inputs):
            torch.addmm(m.bias, h, m.weight.t())

    run()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return flops / sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/mnist_vae")
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--limit", type=int, help="evaluate only the first N test images (and scale nothing)")
    p.add_argument("--device", default=None, help="default: the run's device")
    p.add_argument(
        "--max-rows", type=int, help="particle-datapoint pairs per chunk (default: from free memory)"
    )
    p.add_argument("--compile", default="auto", help="how chunks run (pyrovae.runtime.compile modes)")
    p.add_argument("--append")
    p.add_argument("--json", help="also write the figures to this file")
    a = p.parse_args()
    run = load_run(a.run, device=a.device)
    if a.limit:
        run = dataclasses.replace(
            run, config=run.config.replace(data=dataclasses.replace(run.config.data, test_limit=a.limit))
        )
    device, k = run.device, a.num_samples
    data = evaluation_data(run.config, "test", device)  # loaded once: the sizes below and the evaluation
    x = data.images
    with pyro.validation_enabled(False):
        row_bytes = chunks.bytes_per_row(run.model, run.guide, (x,), {})
        rows = a.max_rows or chunks.chunk_rows(device, row_bytes)
        total_flops = x.shape[0] * pass_flops(run.model, run.guide, x[:1], k)
    rate = matmul_rate(run.model, rows, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    report = evaluate(run, data, num_samples=k, compile=a.compile, max_rows=a.max_rows)
    seconds = report["seconds"]
    peak = (
        torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ) / 2**20
    floor = total_flops / rate
    header = (
        f"Device: {device} ({platform.machine()}, {torch.get_num_threads()} threads); torch "
        f"{torch.__version__}, "
        f"pyro {pyro.__version__}. Command: `python benchmarks/eval_speed.py --run {a.run} "
        f"--num-samples {k}{f' --limit {a.limit}' if a.limit else ''}"
        f"{f' --max-rows {a.max_rows}' if a.max_rows else ''}"
        f"{f' --compile {a.compile}' if a.compile != 'auto' else ''}`"
    )
    lines = [
        "| images | K | chunk rows | bytes / row | seconds | TFLOP | achieved GFLOP/s | matmul GFLOP/s "
        "| matmul floor (s) | time / floor | peak memory (MB) | log p(x) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {x.shape[0]} | {k} | {rows} | {row_bytes:.0f} | {seconds:.1f} | {total_flops / 1e12:.1f} | "
        f"{total_flops / seconds / 1e9:.0f} | {rate / 1e9:.0f} | {floor:.1f} | {seconds / floor:.2f}x "
        f"| {peak:.0f} | "
        f"{report['log_likelihood']['mean']:.2f} +- {report['log_likelihood']['stderr']:.2f} |",
    ]
    from report import emit  # benchmarks/ is on sys.path when run as a script

    emit("\n".join([header, "", *lines]) + "\n", a.append)
    if a.json:
        figures = dict(images=x.shape[0], k=k, seconds=seconds, floor_seconds=floor, matmul_gflops=rate / 1e9)
        figures.update(log_likelihood=report["log_likelihood"], device=str(device), torch=torch.__version__)
        Path(a.json).write_text(json.dumps(figures))


if __name__ == "__main__":
    main()
