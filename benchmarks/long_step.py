"""Where the hours of the long run go: its training step and evaluation chunk, pyrovae against a
hand-written PyTorch loop of the same networks, each at its steady rate.

The model is ``configs/long/mnist_vamp_iwae.toml``'s (the VampPrior paper's one-layer VAE:
two gated layers of 300 units each way, 40 latents, 500 pseudo-inputs) trained on the IWAE
bound with k = 5. Rows, pyrovae and the plain loop alternated ``--repeats`` times in one process
(medians; the ratio is the median of the paired ratios):

- training steps per second: ``pyrovae.fit`` as the config trains, timed from its step
  callbacks after ``--warmup`` steps (the capture and the first steps left out), against a plain
  loop that writes the same bound by hand (the encoder's Gaussian, the VampPrior as a mixture
  over the pseudo-inputs' Gaussians, the Bernoulli decoder, logsumexp over k) with the same
  modules, batches and Adam;
- evaluation seconds per datapoint at K = ``--samples``: the marginal time of ``evaluate_data``
  (``--points`` more datapoints less 5; the threads fixed as ``--threads`` fixes them) against the
  same estimate written by hand in the same chunks of 2500 particles of one datapoint; what a
  call costs once (the memory probe, the capture's trace) is its own row;
- the arithmetic of each, op by op under ``torch.profiler`` (self ms per step and per datapoint),
  so that what is not arithmetic is the wall time less the ops' total.

    python benchmarks/long_step.py --threads 1 --append benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from report import emit_measured
from torch.profiler import ProfilerActivity, profile

import pyrovae
from pyrovae.data.batches import Batches
from pyrovae.inference.scoring import evaluate_data
from pyrovae.run.config import load_config
from pyrovae.run.recipes import build, evaluation_data, load_data
from pyrovae.runtime.threads import configure
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


def plain_step(model, guide, train, cfg: TrainConfig) -> Callable[[], None]:
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

    return step


def plain_rate(a, prof=None) -> float:
    config, train, model, guide = fresh()
    step = plain_step(model, guide, train, config.train)
    for _ in range(a.warmup):
        step()
    with prof or nullcontext():
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        return a.steps / (time.perf_counter() - t0)


def pyrovae_rate(a, prof=None, **settings) -> float:
    """Steps per second between pyrovae's step ``warmup`` and its last, from its callbacks;
    ``settings`` override the config's training settings (``objective="elbo"``)."""
    config, train, model, guide = fresh()
    seen = {}

    def at(row):
        if row["kind"] == "step":
            seen[row["step"]] = time.perf_counter()
            if prof is not None and row["step"] == a.warmup:
                prof.start()

    cfg = TrainConfig(
        **{**config.train.__dict__, "max_steps": a.warmup + a.steps, "log_every": 1, **settings}
    )
    pyrovae.fit(model, guide, train, config=cfg, seed=0, device="cpu", progress=False, callbacks=[at])
    if prof is not None:
        prof.stop()
    last = max(seen)
    return (last - a.warmup) / (seen[last] - seen[a.warmup])


def eval_seconds(a) -> dict:
    """Marginal seconds per datapoint of pyrovae's evaluation and the plain one, and pyrovae's
    once-per-call cost (the intercept of the two lengths' line)."""
    config, train, model, guide = fresh()
    model.eval(), guide.eval()
    x = evaluation_data(config, "test", "cpu").head(a.points + 5).inputs(model)[0]

    def ours(n):
        t0 = time.perf_counter()
        evaluate_data(model, guide, x[:n], num_samples=a.samples, compile=a.compile)
        return time.perf_counter() - t0

    short, long = ours(5), ours(a.points + 5)
    t0 = time.perf_counter()
    plain_scores(model, guide, x[: a.points], a.samples)
    per = (long - short) / a.points
    return {"pyrovae": per, "plain": (time.perf_counter() - t0) / a.points, "once": short - 5 * per}


@torch.no_grad()
def plain_scores(model, guide, x: torch.Tensor, samples: int) -> torch.Tensor:
    """log p(x) of each datapoint, K = ``samples`` in chunks of 2500 particles, by hand."""
    out = []
    for i in range(x.shape[0]):
        lw = torch.cat([log_weights(model, guide, x[i : i + 1], 2500) for _ in range(samples // 2500)])
        out.append(torch.logsumexp(lw, 0) - math.log(samples))
    return torch.cat(out)


def aten_ms(fn: Callable[[], object]) -> float:
    """Total self milliseconds of the aten ops ``fn()`` runs."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::")) / 1000


def arithmetic(a) -> list[str]:
    """Self ms of each op per training step, plain against pyrovae, their totals, and the total
    per datapoint evaluated (pyrovae's the marginal one, as in :func:`eval_seconds`)."""
    short = argparse.Namespace(**{**vars(a), "steps": min(a.steps, 30)})
    tables = []
    for rate in (plain_rate, pyrovae_rate):
        prof = profile(activities=[ProfilerActivity.CPU])
        rate(short, prof)
        tables.append({e.key: e.self_cpu_time_total / 1000 / short.steps for e in prof.key_averages()})
    ops = {k for t in tables for k in t if k.startswith("aten::")}
    keys = sorted(ops, key=lambda k: -max(t.get(k, 0.0) for t in tables))[:8]
    total = [sum(t.get(k, 0.0) for k in ops) for t in tables]
    config, _, model, guide = fresh()
    model.eval(), guide.eval()
    n = min(a.points, 10)
    x = evaluation_data(config, "test", "cpu").head(n + 5).inputs(model)[0]
    ours = lambda m: aten_ms(
        lambda: evaluate_data(model, guide, x[:m], num_samples=a.samples, compile=a.compile)
    )  # noqa: E731
    per = [aten_ms(lambda: plain_scores(model, guide, x[:n], a.samples)) / n, (ours(n + 5) - ours(5)) / n]
    return [
        "| op (self ms / training step) | hand-written | pyrovae |",
        "| --- | ---: | ---: |",
        *[f"| `{k}` | {tables[0].get(k, 0.0):.2f} | {tables[1].get(k, 0.0):.2f} |" for k in keys],
        f"| all aten ops, ms / training step | {total[0]:.2f} | {total[1]:.2f} |",
        f"| all aten ops, ms / datapoint evaluated | {per[0]:.1f} | {per[1]:.1f} |",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--points", type=int, default=30, help="test images timed beyond the first 5")
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=3, help="alternations of the two loops")
    p.add_argument(
        "--compile", default="capture", help="how pyrovae's chunks run (a long evaluation captures)"
    )
    p.add_argument("--append", help="append the tables to this markdown file")
    a = p.parse_args()
    configure(a.threads)  # as `--threads` fixes them: no thread tuning inside the timings
    train = [(plain_rate(a), pyrovae_rate(a), pyrovae_rate(a, objective="elbo")) for _ in range(a.repeats)]
    evals = [eval_seconds(a) for _ in range(a.repeats)]
    med = statistics.median
    steps = {"plain": med(t[0] for t in train), "pyrovae": med(t[1] for t in train)}
    elbo = med(t[2] for t in train)
    per = {k: med(e[k] for e in evals) for k in ("plain", "pyrovae", "once")}
    lines = [
        f"| loop | training steps / s | evaluation, s / datapoint (K = {a.samples}) |",
        "| --- | ---: | ---: |",
        f"| hand-written PyTorch | {steps['plain']:.2f} | {per['plain']:.4f} |",
        f"| pyrovae | {steps['pyrovae']:.2f} | {per['pyrovae']:.4f} |",
        f"| pyrovae / hand-written (speed, paired median) | {med(t[1] / t[0] for t in train):.3f} | "
        f"{med(e['plain'] / e['pyrovae'] for e in evals):.3f} |",
        f"| pyrovae, once per call (memory probe, capture) | | {per['once']:.2f} s |",
        f"| pyrovae on the ELBO instead (k = 1; IWAE k = 5 takes {elbo / steps['pyrovae']:.2f}x its step) "
        f"| {elbo:.2f} | |",
        "",
        *arithmetic(a),
    ]
    command = (
        f"python benchmarks/long_step.py --threads {a.threads} --steps {a.steps} --warmup {a.warmup} "
        f"--points {a.points} "
        f"--samples {a.samples} --repeats {a.repeats} --compile {a.compile}"
    )
    about = f"the long run's model ({CONFIG.relative_to(ROOT)}), batch 100, k = 5"
    emit_measured("cpu", about, command, lines, a.append)


if __name__ == "__main__":
    main()
