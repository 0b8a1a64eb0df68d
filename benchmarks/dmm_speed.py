"""The deep Markov model's training speed: pyrovae against the loop of Pyro's DMM example.

Both train the same modules (``configs/chorales_dmm.toml``'s DMM and combiner guide, built from
one seed) on the same batches of the chorale rolls (``Batches`` with one seed: the same 20
chorales in each step). The Pyro way is the example's: ``pyro.module`` inside model and guide,
``SVI`` with ``Trace_ELBO`` and ``ClippedAdam`` (lr 3e-4, clip 10), each batch cut to its
longest chorale. pyrovae's is ``pyrovae.fit`` with the config's settings but a constant KL weight
(batches cut to their longest chorale rounded up to 8 steps), its loss eager (``compile =
"auto"`` for a sequence model) and captured (``"capture"``: a graph for each of the first 8 batch
lengths). Each row is seconds per epoch (12 steps): the first epoch, where captures happen, and
the median of the later ones; the ways alternate ``--repeats`` times in one process, and the
ratio is the median of paired ratios.

    python benchmarks/dmm_speed.py --threads 1 --append benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pyro
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam
from report import emit_measured

import pyrovae
from pyrovae import hooks
from pyrovae.data.batches import Batches
from pyrovae.run.config import load_config
from pyrovae.run.recipes import build, load_data
from pyrovae.runtime.threads import configure
from pyrovae.training.settings import TrainConfig

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "chorales_dmm.toml"


def fresh():
    config = load_config(CONFIG)
    train = load_data(config, "train")
    pyro.set_rng_seed(0)
    model, guide = build(config, train.shape)
    return config, train, model, guide


def pyro_epochs(epochs: int) -> list[float]:
    """Seconds per epoch of the example's loop: SVI, Trace_ELBO, ClippedAdam."""
    config, train, model, guide = fresh()
    cfg = config.train

    def model_fn(x, mask):
        pyro.module("dmm", model)
        model(x, mask)

    def guide_fn(x, mask):
        pyro.module("combiner", guide)
        guide(x, mask)

    pyro.clear_param_store()
    svi = SVI(model_fn, guide_fn, ClippedAdam({"lr": cfg.lr, "clip_norm": cfg.grad_clip}), Trace_ELBO())
    batches, out = Batches(train, cfg.batch_size, seed=0), []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for x, lengths in batches.epoch(epoch, labels=True):
            longest = int(lengths.max())
            svi.step(x[:, :longest], hooks.prefix_mask(lengths, longest))
        out.append(time.perf_counter() - t0)
    return out


def pyrovae_epochs(epochs: int, compile: str) -> list[float]:
    """Seconds per epoch of ``pyrovae.fit`` with the config's settings, from its step callbacks."""
    config, train, model, guide = fresh()
    per_epoch = -(-len(train) // config.train.batch_size)
    stamps = [time.perf_counter()]

    def at(row):
        if row["kind"] == "step" and row["step"] % per_epoch == 0:
            stamps.append(time.perf_counter())

    settings = {**config.train.__dict__, "epochs": epochs, "log_every": 1, "compile": compile}
    settings |= {"checkpoint_every": 10**9, "kl_schedule": "constant"}
    cfg = TrainConfig(**settings)
    pyrovae.fit(model, guide, train, config=cfg, seed=0, device="cpu", progress=False, callbacks=[at])
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--append", default=None)
    a = p.parse_args()
    configure(a.threads)
    ways = {
        "Pyro's example loop (SVI, Trace_ELBO, ClippedAdam)": lambda: pyro_epochs(a.epochs),
        "pyrovae.fit (auto: eager for sequences)": lambda: pyrovae_epochs(a.epochs, "auto"),
        "pyrovae.fit, captured (capture)": lambda: pyrovae_epochs(a.epochs, "capture"),
    }
    times = {name: [] for name in ways}
    for _ in range(a.repeats):
        for name, fn in ways.items():
            times[name].append(fn())
            print(name, [f"{s:.2f}" for s in times[name][-1]], flush=True)
    conditions = (
        f"the DMM of configs/chorales_dmm.toml on the 223 training chorales, batch 20, {a.epochs} epochs "
        f"per run, {a.repeats} runs of each alternated"
    )
    emit_measured(
        "cpu", conditions, f"python benchmarks/dmm_speed.py --threads {a.threads}", table(times), a.append
    )


def table(times: dict[str, list[list[float]]]) -> list[str]:
    """Rows of the first epoch's seconds, the later epochs' median and the speed against the first
    way's (the median of the paired ratios of later-epoch medians)."""
    later = lambda run: statistics.median(run[1:])  # noqa: E731
    base = next(iter(times.values()))
    out = [
        "| training loop | first epoch, s | later epochs, s (median) | speed vs Pyro's loop |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, runs in times.items():
        first = statistics.median(r[0] for r in runs)
        ratio = statistics.median(later(b) / later(r) for r, b in zip(runs, base))
        rest = statistics.median(s for r in runs for s in r[1:])
        out.append(f"| {name} | {first:.1f} | {rest:.2f} | {ratio:.2f}x |")
    return out


if __name__ == "__main__":
    main()
