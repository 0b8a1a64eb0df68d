"""Where a training step's time goes: kernel launches, host syncs and the busiest ops per step.

Profiles ``--steps`` steps (after ``--warmup``) of the plain PyTorch loop and of ``pyrovae.fit``
with its defaults (``benchmarks/speed.py``'s rows ``plain`` and ``pyrovae``) on one network and
batch with ``torch.profiler``, and prints per step: kernel launches (``cudaLaunchKernel`` and
kin; one ``cudaGraphLaunch`` replays a whole captured graph), host syncs (device-to-host reads:
``aten::_local_scalar_dense``, ``cudaStreamSynchronize``, ``cudaDeviceSynchronize``), ATen ops
called, and the top ops by self time. The ``pyrovae`` window also holds the one metrics read
and the end of ``fit`` (its last checkpoint is off: no run directory).

    python benchmarks/profile_step.py [--device cuda] [--net examples] [--batch 128] [--steps 20] [--append F]
"""

from __future__ import annotations

import argparse
import itertools
import json

import pyro
import speed  # benchmarks/ is on sys.path when run as a script
import torch
from torch.profiler import ProfilerActivity, profile

LAUNCHES = (
    "cudaLaunchKernel",
    "cuLaunchKernel",
    "cudaLaunchKernelExC",
    "cuLaunchKernelEx",
    "cudaGraphLaunch",
)
SYNCS = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize")


def _self_time(e) -> float:
    """Self time in microseconds on the device where there is one, else on the host."""
    device = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
    return device or e.self_cpu_time_total


def summarize(prof, steps: int, top: int = 12) -> dict:
    """Per-step counts and the ``top`` ops by self time from a finished profile."""
    events = prof.key_averages()
    count = lambda names: sum(e.count for e in events if e.key in names)  # noqa: E731
    busiest = sorted(events, key=_self_time, reverse=True)[:top]
    return {
        "launches_per_step": count(LAUNCHES) / steps,
        "graph_launches_per_step": count(("cudaGraphLaunch",)) / steps,
        "syncs_per_step": count(SYNCS) / steps,
        "aten_ops_per_step": sum(e.count for e in events if e.key.startswith("aten::")) / steps,
        "top": [(e.key, e.count / steps, _self_time(e) / steps) for e in busiest],
    }


def activities(device: torch.device) -> list:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


def profile_plain(net: str, batch: int, a, device: torch.device) -> dict:
    from pyrovae.data.batches import Batches

    model, guide = speed.build(net, device)
    train = speed.training_split(net, a, device)
    batches = itertools.chain.from_iterable(Batches(train, batch).epoch(e) for e in itertools.count())
    opt = torch.optim.Adam([*model.parameters(), *guide.parameters()], lr=1e-3)

    def step():
        loss = speed.plain_loss(model, guide, next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    speed.time_steps(step, a.warmup, device)
    with profile(activities=activities(device)) as prof:
        speed.time_steps(step, a.steps, device)
    return summarize(prof, a.steps)


def profile_fit(net: str, batch: int, a, device: torch.device) -> dict:
    """``fit`` with its defaults; the profiler starts at the metrics row after the warm-up steps."""
    import pyrovae
    from pyrovae.training.settings import TrainConfig

    model, guide = speed.build(net, device)
    train = speed.training_split(net, a, device)
    prof = profile(activities=activities(device))

    def start(row):
        if row["kind"] == "step" and row["step"] == a.warmup:
            speed._sync(device)
            prof.start()

    cfg = TrainConfig(max_steps=a.warmup + a.steps, batch_size=batch, log_every=a.warmup)
    pyrovae.fit(model, guide, train, config=cfg, device=device, progress=False, callbacks=[start])
    speed._sync(device)
    prof.stop()
    return summarize(prof, a.steps)


def main() -> None:
    from pyrovae.runtime.devices import resolve_device

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--net", default="examples", choices=list(speed.NETS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root")
    p.add_argument("--json", help="also write the per-step counts to this file")
    p.add_argument("--append", help="also append the table to this markdown file")
    a = p.parse_args()
    device = resolve_device(a.device)
    pyro.set_rng_seed(0)
    results = {
        "plain": profile_plain(a.net, a.batch, a, device),
        "pyrovae": profile_fit(a.net, a.batch, a, device),
    }
    lines = [
        f"Device: {device}; torch {torch.__version__}; {a.net} network, batch {a.batch}, {a.steps} steps "
        f"after {a.warmup}. Command: `python benchmarks/profile_step.py --net {a.net} --batch {a.batch}`",
        "",
        "| loop | kernel launches / step | graph launches / step | host syncs / step | ATen ops / step |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['launches_per_step']:.1f} | {r['graph_launches_per_step']:.1f} | "
            f"{r['syncs_per_step']:.2f} | {r['aten_ops_per_step']:.0f} |"
        )
    from report import emit

    emit("\n".join(lines) + "\n", a.append)
    for name, r in results.items():
        print(f"\n{name}: busiest ops per step (self time, us)")
        for key, calls, us in r["top"]:
            print(f"  {key[:60]:<60} {calls:8.1f} calls {us:10.1f} us")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({k: {n: v for n, v in r.items() if n != "top"} for k, r in results.items()}, f)


if __name__ == "__main__":
    main()
