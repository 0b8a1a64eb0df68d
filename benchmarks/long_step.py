"""Where the hours of the long run go: its training step and evaluation chunk, pyrovae against a
hand-written PyTorch loop of the same networks.

The model is ``configs/long/mnist_vamp_iwae.toml``'s (the VampPrior paper's one-layer VAE:
two gated layers of 300 units each way, 40 latents, 500 pseudo-inputs) trained on the IWAE
bound with k = 5. Rows:

- training steps per second: ``pyrovae.fit`` as the config trains (the marginal time of
  ``--steps`` steps: a fit of warm-up + steps less a fit of warm-up alone, so the capture and
  the thread probe are left out) against a plain loop that writes the same bound by hand (the
  encoder's Gaussian, the VampPrior as a mixture over the pseudo-inputs' Gaussians, the
  Bernoulli decoder, logsumexp over k) with the same modules, batches and Adam;
- evaluation seconds per datapoint at K = ``--samples``: ``evaluate_data`` against the same
  estimate written by hand, each in chunks of 2500 particles of one datapoint (pyrovae's CPU
  chunk);
- the busiest ops of pyrovae's step under ``torch.profiler``.

    python benchmarks/long_step.py --threads 1 --steps 200 --points 20 --append benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from profile_step import summarize  # benchmarks/ is on sys.path when run as a script
from report import emit_measured
from torch.profiler import ProfilerActivity, profile

import pyrovae
from pyrovae.data.batches import Batches
from pyrovae.inference.scoring import evaluate_data
from pyrovae.run.config import load_config
from pyrovae.run.recipes import build, evaluation_data, load_data
from pyrovae.training.settings import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "long" / "mnist_vamp_iwae.toml"
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def log_weights(model, guide, x: torch.Tensor, k: int, beta: float = 1.0) -> torch.Tensor:
    """(k, N) log p(x | z) + beta (log p(z) - log q(z | x)) at k draws z ~ q(z | x)."""
    loc = guide.params(x)[0]
    return log_weights_at(model, guide, x, torch.randn(k, *loc.shape, dtype=loc.dtype), beta)


def log_weights_at(model, guide, x: torch.Tensor, eps: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """The log weights of :func:`log_weights` at z = mu(x) + sigma(x) eps, written by hand: the
    VampPrior's log p(z) = logsumexp_c log N(z; mu(u_c), sigma(u_c)^2) - log C (Tomczak & Welling
    2018, eq. 9) by two matrix products, as any careful hand-written version would."""
    loc, scale = guide.params(x)
    k = eps.shape[0]
    z = loc + scale * eps
    log_q = (-0.5 * eps * eps - scale.log() - HALF_LOG_2PI).sum(-1)
    ploc, pscale = guide.params(model.prior.inputs())
    prec = pscale.pow(-2)
    quad = (z * z) @ prec.T - 2 * z @ (ploc * prec).T + (ploc * ploc * prec).sum(-1)
    comp = -0.5 * quad - pscale.log().sum(-1) - loc.shape[-1] * HALF_LOG_2PI
    log_p = torch.logsumexp(comp, -1) - math.log(ploc.shape[0])
    logits = model.net(z).reshape(k, x.shape[0], -1)
    target = x.reshape(1, x.shape[0], -1).expand_as(logits)
    log_lik = -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
    return log_lik + beta * (log_p - log_q)


def fresh(seed: int = 14):
    config = load_config(CONFIG)
    train = load_data(config, "train")
    pyro.set_rng_seed(seed)
    model, guide = build(config, train.shape)
    return config, train, model, guide


def fit_seconds(steps: int, train, model, guide, cfg: TrainConfig) -> float:
    cfg = TrainConfig(**{**cfg.__dict__, "max_steps": steps, "log_every": steps})
    t0 = time.perf_counter()
    pyrovae.fit(model, guide, train, config=cfg, seed=0, device="cpu", progress=False)
    return time.perf_counter() - t0


def train_rates(a) -> dict:
    config, train, model, guide = fresh()
    cfg = config.train
    marginal = fit_seconds(a.warmup + a.steps, train, model, guide, cfg)
    config, train, model, guide = fresh()
    marginal -= fit_seconds(a.warmup, train, model, guide, cfg)
    config, train, model, guide = fresh()
    opt = torch.optim.Adam([*model.parameters(), *guide.parameters()], lr=cfg.lr)
    batches = itertools.chain.from_iterable(
        Batches(train, cfg.batch_size).epoch(e) for e in itertools.count()
    )

    def step():
        lw = log_weights(model, guide, next(batches), cfg.k)
        loss = -(torch.logsumexp(lw, 0) - math.log(cfg.k)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    return {"pyrovae": a.steps / marginal, "plain": a.steps / (time.perf_counter() - t0)}


def eval_rates(a) -> dict:
    config, train, model, guide = fresh()
    model.eval(), guide.eval()
    x = evaluation_data(config, "test", "cpu").head(a.points).inputs(model)[0]
    evaluate_data(model, guide, x[:1], num_samples=a.samples, compile="none")  # warm
    t0 = time.perf_counter()
    evaluate_data(model, guide, x, num_samples=a.samples, compile=a.compile)
    ours = (time.perf_counter() - t0) / a.points
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(a.points):
            lw = torch.cat([log_weights(model, guide, x[i : i + 1], 2500) for _ in range(a.samples // 2500)])
            torch.logsumexp(lw, 0)
    return {"pyrovae": ours, "plain": (time.perf_counter() - t0) / a.points}


def busiest(a) -> list[tuple]:
    config, train, model, guide = fresh()
    prof = profile(activities=[ProfilerActivity.CPU])

    def start(row):
        if row["kind"] == "step" and row["step"] == a.warmup:
            prof.start()

    cfg = TrainConfig(**{**config.train.__dict__, "max_steps": a.warmup + 20, "log_every": a.warmup})
    pyrovae.fit(model, guide, train, config=cfg, device="cpu", progress=False, callbacks=[start])
    prof.stop()
    return summarize(prof, 20, top=10)["top"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--points", type=int, default=20, help="test images timed")
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument(
        "--compile", default="capture", help="how pyrovae's chunks run (a long evaluation captures)"
    )
    p.add_argument("--append", help="append the tables to this markdown file")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    train, evals, top = train_rates(a), eval_rates(a), busiest(a)
    lines = [
        "| loop | training steps / s | evaluation, s / datapoint (K = %d) |" % a.samples,
        "| --- | ---: | ---: |",
        f"| hand-written PyTorch | {train['plain']:.2f} | {evals['plain']:.3f} |",
        f"| pyrovae | {train['pyrovae']:.2f} | {evals['pyrovae']:.3f} |",
        f"| pyrovae / hand-written | {train['pyrovae'] / train['plain']:.2f} | "
        f"{evals['plain'] / evals['pyrovae']:.2f} (speed) |",
        "",
        "| pyrovae's busiest ops in a training step | calls / step | self ms / step |",
        "| --- | ---: | ---: |",
        *[f"| `{key[:60]}` | {calls:.1f} | {us / 1000:.2f} |" for key, calls, us in top],
    ]
    command = (
        f"python benchmarks/long_step.py --threads {a.threads} --steps {a.steps} --points {a.points} "
        f"--samples {a.samples} --compile {a.compile}"
    )
    about = f"the long run's model ({CONFIG.relative_to(ROOT)}), batch 100, k = 5"
    emit_measured("cpu", about, command, lines, a.append)


if __name__ == "__main__":
    main()
