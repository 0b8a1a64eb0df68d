"""The reference for pyrovae's M2: the recipe of Pyro's ss-vae tutorial and example, written
here in plain Pyro (``TraceEnum_ELBO``, ``config_enumerate``, a second ``SVI`` for the
classifier's auxiliary loss), trained and scored on this machine beside pyrovae's figures.

The recipe, as the tutorial and its example script describe it: grey pixels in [0, 1] scored
by a Bernoulli (cross-entropy on grey targets, not a density); networks 784-500-10 (classifier),
[784, 10]-500-[50, 50] (q(z | x, y), scale exp) and [50, 10]-500-784 (decoder), softplus;
Adam 4.2e-4; the first 50,000 training images for training (``--labels`` of them labelled,
balanced over classes), the last 10,000 for validation; one labelled batch every
int(50,000 / labels) batches until the labelled set is used up (so each label once an epoch),
each labelled batch taking two steps: the ELBO with y observed, then ``aux`` times
-log q(y | x) (eq. 9 of Kingma et al. 2014). The batch divides the number of labels (100 for
100 labels, as the example asserts). Reported: test error of argmax q(y | x) at the last
epoch and at the epoch of best validation error (the example's report), and ms per step.

    python benchmarks/pyro_m2.py --labels 100 --epochs 50
    python benchmarks/pyro_m2.py --labels 3000 --epochs 50 --batch-size 200
"""

from __future__ import annotations

import argparse
import platform
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam
from torch import nn

from pyrovae.data.labelled import keep_labels
from pyrovae.data.splits import load_split

TRAIN = 50_000  #: training images (the other 10,000 of MNIST's training set validate)


def cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[a, b] along the last dim, their batch dims broadcast (y enumerated has its own dim)."""
    batch = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(batch + a.shape[-1:]), b.expand(batch + b.shape[-1:])], -1)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.Softplus()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


class M2(nn.Module):
    """Kingma et al. (2014), M2: y ~ Cat(1/10), z ~ N(0, I), x ~ Bernoulli(decoder(z, y)); guide
    q(y | x) (enumerated where y is unobserved) and q(z | x, y)."""

    def __init__(self, d: int = 784, classes: int = 10, z_dim: int = 50, hidden: int = 500):
        super().__init__()
        self.classes, self.z_dim = classes, z_dim
        self.classifier = mlp([d, hidden, classes])
        self.encoder = mlp([d + classes, hidden, 2 * z_dim])
        self.decoder = mlp([z_dim + classes, hidden, d])

    def model(self, xs, ys=None):
        pyro.module("m2", self)
        n = xs.shape[0]
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(xs.new_zeros(n, self.z_dim), 1.0).to_event(1))
            prior = dist.OneHotCategorical(logits=xs.new_zeros(n, self.classes))
            ys = pyro.sample("y", prior, obs=ys)
            logits = self.decoder(cat(z, ys))
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=self.classifier(xs)))
            loc, log_scale = self.encoder(cat(xs, ys)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    def classify_model(self, xs, ys, aux: float):
        """The auxiliary term: ``aux`` times log q(y | x) on labelled data (eq. 9)."""
        pyro.module("m2", self)
        with pyro.plate("data", xs.shape[0]), pyro.poutine.scale(scale=aux):
            pyro.sample("y_aux", dist.OneHotCategorical(logits=self.classifier(xs)), obs=ys)

    def classify_guide(self, xs, ys, aux: float):
        pass

    @torch.no_grad()
    def error(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return (self.classifier(x).argmax(-1) != y).float().mean().item()


def splits(labels: int, seed: int):
    """(labelled x, one-hot y), unlabelled x, (val x, y), (test x, y): grey pixels, flattened."""
    train = keep_labels(load_split("mnist", "train", pixels="continuous", val_size=10_000), labels, seed)
    flat = lambda s: s.values().flatten(1)
    x, known = flat(train), train.labels >= 0
    one_hot = nn.functional.one_hot(train.labels[known], 10).to(x)
    val = load_split("mnist", "val", pixels="continuous", val_size=10_000)
    test = load_split("mnist", "test", pixels="continuous")
    return (x[known], one_hot), x[~known], (flat(val), val.labels), (flat(test), test.labels)


def epoch(svi, aux, labelled, unlabelled, batch: int, interval: int, g: torch.Generator) -> int:
    """One epoch of the example's schedule; returns the number of optimizer steps."""
    (xl, yl), xu = labelled, unlabelled
    lb = [i for i in torch.randperm(len(xl), generator=g).split(batch)]
    ub = [i for i in torch.randperm(len(xu), generator=g).split(batch)]
    seen_l = seen_u = steps = 0
    for i in range(len(lb) + len(ub)):
        if i % interval == 1 and seen_l < len(lb):
            idx, seen_l = lb[seen_l], seen_l + 1
            svi.step(xl[idx], yl[idx])
            aux.step(xl[idx], yl[idx])
            steps += 2
        else:
            idx, seen_u = ub[seen_u], seen_u + 1
            svi.step(xu[idx])
            steps += 1
    return steps


def run(a) -> str:
    pyro.set_rng_seed(a.seed)
    pyro.enable_validation(False)
    pyro.clear_param_store()
    labelled, unlabelled, val, test = splits(a.labels, a.seed)
    batch = a.batch_size or min(a.labels, 200)
    if a.labels % batch:
        raise SystemExit(f"--batch-size {batch} must divide --labels {a.labels} (the example's rule)")
    m2, opt = M2(), Adam({"lr": a.lr})
    svi = SVI(m2.model, config_enumerate(m2.guide, "parallel"), opt, loss=TraceEnum_ELBO(max_plate_nesting=1))
    aux = SVI(lambda x, y: m2.classify_model(x, y, a.aux), lambda x, y: None, opt, loss=Trace_ELBO())
    g = torch.Generator().manual_seed(a.seed)
    best_val, at_best, steps, start = 2.0, None, 0, time.perf_counter()
    for e in range(a.epochs):
        steps += epoch(svi, aux, labelled, unlabelled, batch, TRAIN // a.labels, g)
        v, t = m2.error(*val), m2.error(*test)
        if v < best_val:
            best_val, at_best = v, (e + 1, t)
        print(f"epoch {e + 1}: validation error {100 * v:.2f}%, test error {100 * t:.2f}%", flush=True)
    minutes = (time.perf_counter() - start) / 60
    training = (
        f"{a.epochs} epochs, {steps} steps, {minutes:.1f} min ({60_000 * minutes / steps:.1f} ms / step)"
    )
    best = f"{100 * at_best[1]:.2f}% (epoch {at_best[0]}, validation {100 * best_val:.2f}%)"
    cells = [str(a.labels), str(batch), f"{a.aux:g}", training, f"{100 * t:.2f}%", best]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, help="default: the labels, at most 200")
    p.add_argument("--aux", type=float, default=46.0, help="the auxiliary loss multiplier (the example's 46)")
    p.add_argument("--lr", type=float, default=4.2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--append", help="append the table to this markdown file")
    a = p.parse_args()
    line = run(a)
    from report import emit_table  # benchmarks/ is on sys.path when run as a script

    threads = f"{platform.machine()}, {torch.get_num_threads()} threads"
    where = f"cpu ({threads}), torch {torch.__version__}, pyro {pyro.__version__}"
    flags = f"--labels {a.labels} --epochs {a.epochs} --aux {a.aux:g} --lr {a.lr:g} --seed {a.seed}"
    flags += f" --batch-size {a.batch_size}" if a.batch_size else ""
    header = [
        "| labels | batch | aux | training | test error, last epoch | test error at best validation |",
        "| ---: | ---: | ---: | --- | ---: | --- |",
    ]
    emit_table(where, f"python benchmarks/pyro_m2.py {flags}", [*header, line], a.append)


if __name__ == "__main__":
    main()
