"""Seconds per epoch and test ELBO: pyrovae `fit` (Pyro SVI) against a plain PyTorch loop.

Both train the same networks (the pytorch/examples VAE, 784-400-20, ReLU, Bernoulli
likelihood, Adam 1e-3, batch 128) from the same initial weights on dynamically
binarized MNIST held on the device, with the same single-sample Monte Carlo ELBO. The
plain loop writes that loss by hand with torch.distributions; pyrovae runs ``fit`` with
its defaults (the ELBO objective from the model's and guide's Pyro traces, captured as one
graph: see pyrovae.runtime.compile). Both are evaluated by the same estimator (pyrovae.estimators).

    python benchmarks/engine_vs_torch.py --epochs 10 [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import pyro
import torch
from speed import plain_loss  # noqa: E402 (benchmarks/ is on sys.path when run as a script)

import pyrovae
from pyrovae.data.batches import Batches
from pyrovae.data.splits import EVAL_BINARIZATION_SEED, load_split
from pyrovae.guides import MLPGuide
from pyrovae.inference import estimators
from pyrovae.models import VAE
from pyrovae.runtime.devices import resolve_device
from pyrovae.training.settings import TrainConfig


def plain_torch(model: VAE, guide: MLPGuide, train, epochs: int, batch_size: int, lr: float, seed: int):
    """The no-overhead reference: the same networks and loss (speed.plain_loss), no Pyro."""
    params = list(model.parameters()) + list(guide.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    batches = Batches(train, batch_size, seed=seed)
    times = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for x in batches.epoch(epoch):
            loss = plain_loss(model, guide, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-samples", type=int, default=100)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--append", help="append the table to this markdown file")
    a = p.parse_args()
    device = resolve_device(a.device)
    train = load_split("mnist", "train", pixels="dynamic", root=a.data_root, device=device)
    test = load_split("mnist", "test", pixels="dynamic", root=a.data_root, device=device)
    x_test = test.observe_fixed(EVAL_BINARIZATION_SEED)

    pyro.set_rng_seed(a.seed)
    model0, guide0 = VAE(train.shape, 20, hidden=[400]), MLPGuide(train.shape, 20, hidden=[400])
    rows = []
    for name in ("plain PyTorch", "pyrovae fit (defaults)"):
        model, guide = copy.deepcopy(model0).to(device), copy.deepcopy(guide0).to(device)
        pyro.set_rng_seed(a.seed)
        t_start = time.perf_counter()
        if name == "plain PyTorch":
            times = plain_torch(model, guide, train, a.epochs, a.batch_size, 1e-3, a.seed)
        else:
            cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=1e-3, log_every=100)
            result = pyrovae.fit(model, guide, train, config=cfg, seed=a.seed, device=device, progress=False)
            times = [r["seconds"] for r in result.metrics if r["kind"] == "epoch"]
        total = time.perf_counter() - t_start
        pyro.set_rng_seed(a.seed)
        elbo = estimators.elbo(model.eval(), guide.eval(), x_test, num_samples=a.eval_samples, data_chunk=500)
        mean, se = estimators.mean_and_stderr(elbo)
        rows.append((name, statistics.median(times), total, mean, se))
    ref = rows[0][1]
    lines = [
        f"### pyrovae fit vs plain PyTorch, {a.epochs} epochs ({time.strftime('%Y-%m-%d')})",
        "",
        f"Device: {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        "threads); "
        f"torch {torch.__version__}, pyro {pyro.__version__}, Python {platform.python_version()}.",
        f"Network 784-400-20 (ReLU, Bernoulli), Adam 1e-3, batch {a.batch_size}, dynamically binarized MNIST "
        f"(50,000 training images), test ELBO on the 10,000 test images with K = {a.eval_samples}.",
        f"Command: `python benchmarks/engine_vs_torch.py --epochs {a.epochs}`",
        "",
        "| loop | seconds / epoch (median) | ratio to plain | total seconds | test ELBO (nats) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, sec, total, mean, se in rows:
        lines.append(f"| {name} | {sec:.2f} | {sec / ref:.2f}x | {total:.1f} | {mean:.2f} +- {se:.2f} |")
    from report import emit

    emit("\n".join(lines) + "\n", a.append)


if __name__ == "__main__":
    main()
