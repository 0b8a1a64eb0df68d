"""The cost of a pair that does not broadcast over particles: run on repeated data.

Two two-site VAEs of the same sizes (a 2-D Student-t style code and a 6-D content code,
Bernoulli pixels), whose guides differ only in how the content head reads the style draw:
``broadcast`` expands the encoder feature to the draw's leading dims, ``pyro-style``
concatenates the (N, H) feature with the draw as Pyro's own examples write it, so that
pyrovae runs it on the data repeated K times (:mod:`pyrovae.inference.particles`). Both are
scored by ``pyrovae.estimators.log_likelihood`` with the same parameters and seed, and the
table gives the seconds of each (median of ``--repeats``), their ratio, and the largest
difference of the per-datapoint estimates (the same draws: 0 up to rounding).

    python benchmarks/particles.py [--num 100] [--samples 1000 5000] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))


class TwoSiteVAE(nn.Module):
    """style ~ StudentT(3, 0, 1)^2, content ~ N(0, I_6), x ~ Bernoulli(f(style, content))."""

    def __init__(self, pixels=784, hidden=256):
        super().__init__()
        self.dec = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, pixels))

    def forward(self, x):
        n = x.shape[0]
        with pyro.plate("data", n):
            s = pyro.sample("style", dist.StudentT(3.0, x.new_zeros(n, 2), 1.0).to_event(1))
            c = pyro.sample("content", dist.Normal(x.new_zeros(n, 6), 1.0).to_event(1))
            pyro.sample(
                "x", dist.Bernoulli(logits=self.dec(torch.cat([s, c], -1))).to_event(1), obs=x.flatten(1)
            )


class TwoSiteGuide(nn.Module):
    """q(style | x) q(content | x, style), Gaussian; ``broadcast`` or the Pyro-examples idiom."""

    def __init__(self, broadcast: bool, pixels=784, hidden=256):
        super().__init__()
        self.broadcast = broadcast
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU())
        self.style, self.content = nn.Linear(hidden, 4), nn.Linear(hidden + 2, 12)

    def forward(self, x):
        h = self.enc(x)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.style(h).chunk(2, -1)
            s = pyro.sample("style", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))
            h = h.expand(*s.shape[:-1], -1) if self.broadcast else h
            loc, raw = self.content(torch.cat([h, s], -1)).chunk(2, -1)
            pyro.sample("content", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def main() -> None:
    from report import emit_measured, row

    from pyrovae import estimators

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num", type=int, default=100, help="datapoints scored")
    p.add_argument("--samples", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--append")
    a = p.parse_args()
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(a.num, 1, 28, 28) * 0.3)
    model, fast = TwoSiteVAE(), TwoSiteGuide(True)
    slow = TwoSiteGuide(False)
    slow.load_state_dict(fast.state_dict())
    lines = [
        row(["K", "broadcast s", "pyro-style (repeated data) s", "ratio", "largest difference, nats"]),
        row(["---:"] * 5),
    ]
    for k in a.samples:
        seconds, values = {}, {}
        for name, guide in (("broadcast", fast), ("pyro-style", slow)):
            times = []
            for _ in range(a.repeats):
                pyro.set_rng_seed(1)
                start = time.perf_counter()
                values[name] = estimators.log_likelihood(model, guide, x, num_samples=k)
                times.append(time.perf_counter() - start)
            seconds[name] = statistics.median(times)
        diff = (values["broadcast"] - values["pyro-style"]).abs().max().item()
        ratio = seconds["pyro-style"] / seconds["broadcast"]
        lines.append(
            row(
                [
                    k,
                    f"{seconds['broadcast']:.2f}",
                    f"{seconds['pyro-style']:.2f}",
                    f"{ratio:.2f}",
                    f"{diff:.1e}",
                ]
            )
        )
    flags = f"--num {a.num} --samples {' '.join(map(str, a.samples))} --repeats {a.repeats}"
    conditions = f"{a.num} random binary 28x28 images, untrained two-site pair, median of {a.repeats}"
    emit_measured("cpu", conditions, f"python benchmarks/particles.py {flags}", lines, a.append)


if __name__ == "__main__":
    main()
