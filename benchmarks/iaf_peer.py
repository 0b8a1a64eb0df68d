"""pyrovae's IAF guide beside pythae's (``pip install pythae==0.1.2``), and what makes them differ.

Every row trains the default VAE's networks (784-400-20, ReLU, Bernoulli decoder; dynamically
binarized MNIST) with ``pyrovae.fit`` for ``--epochs`` epochs (batch 128, Adam at ``--lr``), from the
same initial encoder and decoder weights at each seed, on the same batches; only the guide's
head differs:

- ``pythae``: pythae 0.1.2's own ``IAF`` (its ``VAE_IAF``'s flow: affine MADE blocks
  z' = exp(s) z + m, sequential order, the order flipped between blocks, no context) after its
  encoder's N(mu, exp(log_var)) head, written here as a Pyro guide (its flow as a Pyro transform);
  ``pythae-diag``: the same head without the flow (pythae's VAE);
- pyrovae's ``PosteriorFlow`` IAF: ``gated`` (z' = s z + (1 - s) m, s = sigmoid) or ``affine``,
  conditioned on 32 encoder outputs (``+ctx``) or not, its networks' order ``random`` (Pyro's
  default) or ``sequential``; ``diag``: no flow.

Each trained pair is scored on the first ``--limit`` test images (one binarization) with
K = ``--samples`` importance samples: ELBO and log p(x), and each row's difference from the
``pythae`` row paired by datapoint, averaged over ``--seeds`` seeds (standard error over
datapoints, combined over seeds).

    python benchmarks/iaf_peer.py --epochs 5 --seeds 0 1 --limit 2000 --samples 1000
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from pythae.models.normalizing_flows import IAF, IAFConfig
from report import emit_measured  # benchmarks/ is on sys.path when run as a script
from torch import nn

import pyrovae
from pyrovae.blocks.flows import PosteriorFlow
from pyrovae.inference import estimators
from pyrovae.run.config import apply_overrides, config_from_dict, load_config
from pyrovae.run.recipes import build, evaluation_data, load_data
from pyrovae.training.settings import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
#: name -> (gated, context, order) of pyrovae's IAF; None: no flow
OURS = {
    "gated+ctx": (True, 32, "random"),
    "affine+ctx": (False, 32, "random"),
    "gated": (True, 0, "random"),
    "affine": (False, 0, "random"),
    "affine, sequential": (False, 0, "sequential"),
    "diag": None,
}


class PythaeFlow(TransformModule):
    """pythae's IAF (its sampling direction, ``inverse``) as a Pyro transform: y = f(z0) with its
    log |det|, and the other way by its ``forward`` (one pass per variable)."""

    domain = codomain = constraints.real_vector
    bijective = True

    def __init__(self, flow: IAF):
        super().__init__(cache_size=1)
        self.flow, self._ladj = flow, None

    def _run(self, fn, x):
        o = fn(x.reshape(-1, x.shape[-1]))
        return o.out.reshape(x.shape), o.log_abs_det_jac.reshape(x.shape[:-1])

    def _call(self, x):
        y, self._ladj = self._run(self.flow.inverse, x)
        return y

    def _inverse(self, y):
        x, ladj = self._run(self.flow.forward, y)
        self._ladj = -ladj
        return x

    def log_abs_det_jacobian(self, x, y):
        return self._ladj


class PythaeGuide(nn.Module):
    """pythae's VAE encoder head N(mu, exp(log_var)) (``Encoder_VAE_MLP``'s, at width 400), then
    with ``flow`` pythae's IAF of ``depth`` MADE blocks of ``width`` x ``layers``."""

    def __init__(self, flow: bool, latent: int = 20, depth: int = 2, width: int = 320, layers: int = 2):
        super().__init__()
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(784, 400), nn.ReLU())
        self.embedding, self.log_var = nn.Linear(400, latent), nn.Linear(400, latent)
        config = IAFConfig(
            input_dim=(latent,), n_made_blocks=depth, n_hidden_in_made=layers, hidden_size=width
        )
        self.iaf = PythaeFlow(IAF(config)) if flow else None

    def forward(self, x):
        h = self.hidden(x)
        q = dist.Normal(self.embedding(h), torch.exp(0.5 * self.log_var(h))).to_event(1)
        if self.iaf is not None:
            q = dist.TransformedDistribution(q, [self.iaf])
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", q)


def linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def guide_for(name: str, start: nn.Module, latent: int = 20) -> nn.Module:
    """The guide of row ``name`` with ``start``'s (pyrovae's diagonal guide's) encoder weights."""
    first, out = linears(start.encoder)
    if name.startswith("pythae"):
        guide = PythaeGuide(flow=name == "pythae")
        with torch.no_grad():
            guide.hidden[1].load_state_dict(first.state_dict())
            for layer, rows in (
                (guide.embedding, slice(0, latent)),
                (guide.log_var, slice(latent, 2 * latent)),
            ):
                layer.weight.copy_(out.weight[rows])
                layer.bias.copy_(out.bias[rows])
        return guide
    if OURS[name] is None:
        return start
    gated, context, order = OURS[name]
    head = PosteriorFlow(latent, "iaf", 2, (320, 320), context, gated=gated, order=order)
    guide = pyrovae.guides.MLPGuide((1, 28, 28), latent, flow="iaf", flow_context=context)
    guide.head = head
    new_first, new_out = linears(guide.encoder)
    with torch.no_grad():
        new_first.load_state_dict(first.state_dict())
        new_out.weight[: 2 * latent].copy_(out.weight)
        new_out.bias[: 2 * latent].copy_(out.bias)
    return guide


def measure(name: str, seed: int, a) -> dict:
    sets = [f"seed={seed}", 'device="cpu"', f"train.epochs={a.epochs}", *a.set]
    config = config_from_dict(
        apply_overrides(load_config(ROOT / "configs" / "mnist_vae.toml").to_dict(), sets)
    )
    train, val = load_data(config, "train"), load_data(config, "val")
    pyro.set_rng_seed(seed)
    model, start = build(config, train.shape)
    torch.manual_seed(1000 + seed)  # the flows' own initial weights
    guide = guide_for(name, start)
    cfg = TrainConfig(epochs=a.epochs, batch_size=128, lr=a.lr)
    t0 = time.perf_counter()
    pyrovae.fit(model, guide, train, val, config=cfg, seed=seed, device="cpu", progress=False)
    seconds = time.perf_counter() - t0
    model.eval(), guide.eval()
    x, *cond = evaluation_data(config, "test", "cpu").head(a.limit).inputs(model)
    torch.manual_seed(0)
    with torch.no_grad():
        lw = estimators.log_weights(model, guide, x, *cond, num_samples=a.samples).double()
    return {"elbo": lw.mean(0), "log_px": estimators.iwae_from_log_weights(lw), "seconds": seconds}


def paired(diffs: list[torch.Tensor]) -> tuple[float, float]:
    """Mean over seeds of the per-seed mean differences, with the standard error over datapoints
    combined over seeds (independent draws per seed)."""
    means = [float(d.mean()) for d in diffs]
    ses = [float(d.std() / math.sqrt(d.numel())) for d in diffs]
    return sum(means) / len(means), math.sqrt(sum(s * s for s in ses)) / len(ses)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", default=["pythae", "pythae-diag", *OURS])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--limit", type=int, default=2000, help="test images")
    p.add_argument("--samples", type=int, default=1000, help="importance samples K")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config settings")
    p.add_argument("--append", help="append the table to this markdown file")
    a = p.parse_args()
    torch.set_num_threads(1)
    results = {(r, s): measure(r, s, a) for s in a.seeds for r in a.rows}
    lines = [
        "| guide | log p(x) | ELBO | log p(x) - pythae's (paired) | ELBO - pythae's (paired) | training, s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in a.rows:
        cells = []
        for key in ("log_px", "elbo"):
            means = [float(results[r, s][key].mean()) for s in a.seeds]
            cells.append(f"{sum(means) / len(means):.2f}")
        for key in ("log_px", "elbo"):
            if r == "pythae" or "pythae" not in a.rows:
                cells.append("")
                continue
            d, se = paired([results[r, s][key] - results["pythae", s][key] for s in a.seeds])
            cells.append(f"{d:+.2f} +- {se:.2f}")
        secs = sum(results[r, s]["seconds"] for s in a.seeds) / len(a.seeds)
        lines.append(f"| {r} | {' | '.join(cells)} | {secs:.0f} |")
        print(lines[-1], flush=True)
    command = (
        f"python benchmarks/iaf_peer.py --epochs {a.epochs} --seeds {' '.join(map(str, a.seeds))} "
        f"--limit {a.limit} --samples {a.samples} --lr {a.lr:g}"
        + ("" if a.rows == p.get_default("rows") else " --rows " + " ".join(f'"{r}"' for r in a.rows))
        + "".join(f" --set {s}" for s in a.set)
    )
    about = (
        f"{a.epochs} epochs, seeds {a.seeds}, first {a.limit} MNIST test images, K = {a.samples}, 1 thread"
    )
    emit_measured("cpu", about, command, lines, a.append)


if __name__ == "__main__":
    main()
