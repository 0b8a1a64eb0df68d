"""Training speed of the same VAE trained several ways, as ratios to a plain PyTorch loop.

Rows: ``plain`` (hand-written loss, data as one tensor on the device: the reference),
``plain:softplus`` (the same with the Bernoulli log-density written as pyrovae writes it),
``naive`` (what most users start from: a torchvision DataLoader with ToTensor, Pyro's
``SVI`` with the global param store and ``pyro.optim.Adam``), ``pyrovae`` (``fit``
with its default settings) and ``pyrovae:MODE`` (``fit`` with ``train.compile = MODE``:
none, inductor, and cudagraphs on CUDA; see ``pyrovae.runtime.compile``). Networks: ``examples``
(pytorch/examples, 784-400-20, ReLU)
and ``iwae`` (Burda et al. 2015, 784-200-200-50, tanh) on dynamically binarized MNIST, and
``resnet32`` (a ResNet VAE, 64 latents, encoder widths 32-64, decoder 64-32, one residual block
per scale, discretized logistic mixture of 5) on 10,000 synthetic 8-bit 3x32x32 images held as
uint8 on the device (the ``naive`` row is MNIST-only); batch 128 and 1024; Adam 1e-3. Each
combination runs in its own process (so its peak memory is its own): ``--warmup`` steps, then
the median over ``--repeats`` windows of ``--steps``.

    python benchmarks/speed.py [--nets examples iwae] [--batches 128 1024] [--append benchmarks/RESULTS.md]
    python benchmarks/speed.py --nets resnet32 --batches 128 --rows plain pyrovae pyrovae:none
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

NETS = {
    "examples": dict(latent_dim=20, hidden=[400], activation="relu"),
    "iwae": dict(latent_dim=50, hidden=[200, 200], activation="tanh"),
    "resnet32": dict(latent_dim=64),
}
ROWS = (
    "plain",
    "plain:softplus",
    "naive",
    "pyrovae",
    "pyrovae:none",
    "pyrovae:inductor",
    "pyrovae:cudagraphs",
)


def build(net: str, device):
    from pyrovae.guides import MLPGuide, ResNetGuide
    from pyrovae.models import VAE

    o = NETS[net]
    if net == "resnet32":
        lik = dict(likelihood="discretized_logistic_mixture", components=5)
        model = VAE((3, 32, 32), 64, decoder="resnet", channels=[64, 32], blocks=1, **lik).to(device)
        return model, ResNetGuide((3, 32, 32), 64, channels=[32, 64], blocks=1).to(device)
    model = VAE((1, 28, 28), o["latent_dim"], hidden=o["hidden"], activation=o["activation"]).to(device)
    guide = MLPGuide((1, 28, 28), o["latent_dim"], hidden=o["hidden"], activation=o["activation"]).to(device)
    return model, guide


def plain_loss(model, guide, x: torch.Tensor, softplus: bool = False) -> torch.Tensor:
    """-ELBO per datapoint, single-sample Monte Carlo, written with torch.distributions only;
    with ``softplus`` the Bernoulli log-density is written x l - softplus(l), as pyrovae does."""
    from torch.distributions import Bernoulli, Normal

    loc, scale = guide.params(x)
    q = Normal(loc, scale)
    z = q.rsample()
    logits = model.net(z)
    if model.likelihood.name != "bernoulli":  # the same likelihood module, called directly
        log_lik = model.likelihood(logits).log_prob(x)
    elif softplus:
        log_lik = (x * logits - torch.nn.functional.softplus(logits)).flatten(1).sum(-1)
    else:
        log_lik = Bernoulli(logits=logits).log_prob(x).flatten(1).sum(-1)
    return -(log_lik + Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z).sum(-1)).mean()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_split(net: str, a, device):
    """Dynamically binarized MNIST, or for ``resnet32`` 10,000 random 8-bit 3x32x32 images (uint8)."""
    from pyrovae.data.splits import Split, load_split

    if net != "resnet32":
        return load_split("mnist", "train", root=a.data_root, device=device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10000, 3, 32, 32), dtype=torch.uint8, generator=g)
    return Split(images, torch.full((10000,), -1), "8bit").to(device)


def time_steps(step, n: int, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / n


def one(row: str, net: str, batch: int, a) -> dict:
    """Seconds per step (median window) and peak memory of one combination, in this process."""
    import pyro

    from pyrovae.data.batches import Batches
    from pyrovae.data.splits import data_root, torchvision_dataset
    from pyrovae.runtime.devices import resolve_device

    device = resolve_device(a.device)
    pyro.set_rng_seed(0)
    model, guide = build(net, device)
    if row.startswith("plain"):
        train = training_split(net, a, device)
        batches = itertools.chain.from_iterable(Batches(train, batch).epoch(e) for e in itertools.count())
        opt = torch.optim.Adam([*model.parameters(), *guide.parameters()], lr=1e-3)

        def step():
            loss = plain_loss(model, guide, next(batches), softplus=row == "plain:softplus")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    elif row == "naive":
        import torchvision
        from pyro.infer import SVI, Trace_ELBO

        pyro.settings.set(module_local_params=False)  # the global param store, as in Pyro's tutorial
        ds = torchvision_dataset("mnist", data_root(a.data_root), train=True)
        ds.transform = torchvision.transforms.ToTensor()
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True)
        batches = itertools.chain.from_iterable(loader for _ in itertools.count())

        def model_fn(x):
            pyro.module("decoder", model)
            return model(x)

        def guide_fn(x):
            pyro.module("encoder", guide)
            return guide(x)

        svi = SVI(model_fn, guide_fn, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

        def step():
            images, _ = next(batches)
            svi.step(torch.bernoulli(images.to(device)))
    else:  # pyrovae, with its defaults or with train.compile = the part after the colon
        import pyrovae
        from pyrovae.training.settings import TrainConfig

        train = training_split(net, a, device)
        marks: list[float] = []
        options = {} if row == "pyrovae" else {"compile": row.split(":")[1]}
        cfg = TrainConfig(
            max_steps=a.warmup + a.steps * a.repeats, batch_size=batch, log_every=a.steps, **options
        )
        pyrovae.fit(
            model,
            guide,
            train,
            config=cfg,
            device=device,
            progress=False,
            callbacks=[lambda r: r["kind"] == "step" and marks.append(time.perf_counter())],
        )
        windows = [(b - c) / a.steps for c, b in zip(marks, marks[1:])][a.warmup // a.steps - 1 :]
        assert len(windows) == a.repeats
        return _result(windows, device)
    time_steps(step, a.warmup, device)
    return _result([time_steps(step, a.steps, device) for _ in range(a.repeats)], device)


def _result(windows: list[float], device) -> dict:
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "seconds_per_step": statistics.median(windows),
        "peak_mb": peak,
        "device": str(device),
        "memory": "CUDA max allocated" if device.type == "cuda" else "process peak RSS",
    }


def measure(
    row: str, net: str, batch: int, passthrough: list[str], jsonl: str | None, tree: str | None = None
) -> dict:
    """One combination in its own process; a failure is recorded (its last line), not raised.
    With ``tree`` (a checkout, see ``report.in_checkout``), that checkout's pyrovae and its own
    copy of this script run it."""
    from report import in_checkout  # benchmarks/ is on sys.path when run as a script

    script = __file__ if tree in (None, "installed") else os.path.join(tree, "benchmarks", "speed.py")
    cmd = in_checkout(tree, [script, "--one", row, net, str(batch), *passthrough])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode == 0:
        result = json.loads(out.stdout.strip().splitlines()[-1])
    else:
        print(out.stderr, file=sys.stderr, flush=True)
        last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        result = {"error": last[:300]}
    if jsonl:
        with open(jsonl, "a") as f:
            f.write(json.dumps({"row": row, "net": net, "batch": batch, **result}) + "\n")
    return result


TABLE_HEADER = (
    "| network | batch | loop | steps / s | seconds / epoch | time vs plain | peak memory (MB) "
    "| memory vs plain |",
    "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
)  #: the rows of :func:`table_rows` go under these two lines


def table_rows(net: str, batch: int, results: dict[str, dict]) -> list[str]:
    """Markdown rows of one network and batch, as ratios to ``plain`` (or the first row that ran)."""
    ok = {row: r for row, r in results.items() if "error" not in r}
    ref = ok.get("plain", next((r for row, r in ok.items() if row.startswith("plain")), None))
    ref = ref or next(iter(ok.values()), None)
    lines = []
    for row, r in results.items():
        if "error" in r:
            lines.append(f"| {net} | {batch} | {row} | failed: {r['error'].replace('|', '/')} | | | | |")
            continue
        sps = r["seconds_per_step"]
        lines.append(
            f"| {net} | {batch} | {row} | {1 / sps:.1f} | {sps * -(-50000 // batch):.2f} | "
            f"{sps / ref['seconds_per_step']:.2f}x | {r['peak_mb']:.0f} | "
            f"{r['peak_mb'] / ref['peak_mb']:.2f}x |"
        )
    return lines


def main() -> None:
    from pyrovae.runtime.devices import resolve_device

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--batches", nargs="+", type=int, default=[128, 1024])
    p.add_argument(
        "--rows", nargs="+", choices=list(ROWS), help="default: all (pyrovae:cudagraphs on CUDA only)"
    )
    p.add_argument("--steps", type=int, default=50, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root")
    p.add_argument("--append")
    p.add_argument("--jsonl", help="also append each combination's result to this file as it finishes")
    p.add_argument(
        "--tree",
        action="append",
        help="measure each row with this checkout's pyrovae (repeatable: before/after side by side)",
    )
    p.add_argument("--one", nargs=3, metavar=("ROW", "NET", "BATCH"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.rows is None:
        a.rows = [r for r in ROWS if r != "pyrovae:cudagraphs" or "cuda" in str(resolve_device(a.device))]
    if a.warmup < a.steps or a.warmup % a.steps:
        p.error(
            "--warmup must be a positive multiple of --steps (fit's timing marks come every --steps steps)"
        )
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], int(a.one[2]), a)))
        return
    passthrough = [
        "--steps",
        str(a.steps),
        "--repeats",
        str(a.repeats),
        "--warmup",
        str(a.warmup),
        "--device",
        a.device,
    ] + (["--data-root", a.data_root] if a.data_root else [])
    lines = list(TABLE_HEADER)
    device = memory = None
    for net, batch in itertools.product(a.nets, a.batches):
        results = {}
        for row in [r for r in a.rows if r != "naive" or net != "resnet32"]:
            for tree in a.tree or [None]:  # the trees in alternation, row by row
                label = row if tree is None else f"{row} [{tree}]"
                results[label] = measure(row, net, batch, passthrough, a.jsonl, tree)
                if "error" not in results[label]:
                    device, memory = results[label]["device"], results[label]["memory"]
        lines += table_rows(net, batch, results)
        print("\n".join(lines[-len(results) :]), flush=True)
    header = [
        f"Device: {device} ({platform.machine()}, {torch.get_num_threads()} threads); torch "
        f"{torch.__version__}; "
        f"memory = {memory}. Median of {a.repeats} windows of {a.steps} steps after {a.warmup} "
        "warm-up steps; "
        f"seconds / epoch = seconds per step x steps in 50,000 images.",
        f"Command: `python benchmarks/speed.py --steps {a.steps} --repeats {a.repeats} --warmup {a.warmup}"
        + "".join(f" --tree {t}" for t in a.tree or [])
        + "".join(f" --{k} {' '.join(map(str, v))}" for k, v in (("nets", a.nets), ("batches", a.batches)))
        + f" --rows {' '.join(a.rows)}`",
        "",
    ]
    from report import emit  # benchmarks/ is on sys.path when run as a script

    print()
    emit("\n".join(header + lines) + "\n", a.append)


if __name__ == "__main__":
    main()
