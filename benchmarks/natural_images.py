"""Natural images and 8-bit likelihoods: train a config, report test bits/dim or nats beside
the published rows.

Rows (each a config in configs/):
- ``cifar10``: the ResNet VAE with the discretized logistic mixture, bits/dim;
- ``omniglot_vae`` / ``omniglot_iwae``: the 1-layer VAE / IWAE (k = 5) of Burda et al. (2015), nats;
- ``mnist8bit_dlm``: MNIST as 8-bit grey levels, conv VAE, discretized logistic mixture, bits/dim;
- ``mnist8bit_gaussian``: the same network with a Gaussian (learned per-pixel sigma) on the
  same grey levels (pixels = "continuous"): a density, whose "bits/dim" is not comparable.

Each row trains for at most ``--minutes`` (or ``--max-steps``), then evaluates the first
``--test-limit`` test images with K = ``--eval-samples`` importance samples each.
``--fixture`` writes small random datasets in each real on-disk format into a temporary data
root and runs there (a check that the pipeline works end to end; its numbers mean nothing).

    python benchmarks/natural_images.py --rows mnist8bit_dlm mnist8bit_gaussian --minutes 10 \
        --test-limit 500 --eval-samples 5000 [--append benchmarks/RESULTS.md]
    python benchmarks/natural_images.py --fixture --max-steps 5 --eval-samples 10
"""

from __future__ import annotations

import argparse
import math
import platform
import tempfile
import time
from pathlib import Path

import torch

from pyrovae.data import fixtures
from pyrovae.run import evaluation, experiment
from pyrovae.run.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ROWS = {  # config, unit, overrides, published rows (name, value)
    "cifar10": ("cifar10_resnet_dlm.toml", "bits/dim", {}, [
        ("IAF-VAE (Kingma et al. 2016, table 3)", 3.11),
        ("NVAE (Vahdat & Kautz 2020, table 2)", 2.91),
        ("PixelCNN++ (Salimans et al. 2017, table 1)", 2.92),
    ]),
    "omniglot_vae": ("omniglot_vae.toml", "nats", {}, [
        ("VAE, 1 layer, k = 1 (Burda et al. 2015, table 1)", 108.11),
    ]),
    "omniglot_iwae": ("omniglot_iwae.toml", "nats", {}, [("IWAE, 1 layer, k = 5 (ibid.)", 106.12)]),
    "mnist8bit_dlm": ("mnist8bit_conv_dlm.toml", "bits/dim", {}, [
        ("Real NVP (Dinh et al. 2017) as reported by Grathwohl et al. 2019, table 2", 1.06),
        ("Glow (Kingma & Dhariwal 2018), ibid.", 1.05),
        ("FFJORD (Grathwohl et al. 2019, table 2)", 0.99),
    ]),
    "mnist8bit_gaussian": ("mnist8bit_conv_dlm.toml", "density", {"data.pixels": "continuous",
                           "model.likelihood": "gaussian", "model.sigma": "learned"}, []),
}  # fmt: skip
FIXTURE_NETS = {  # tiny networks for --fixture
    "cifar10": {
        "model.channels": [16, 8, 8],
        "guide.channels": [8, 8, 16],
        "model.blocks": 1,
        "guide.blocks": 1,
    },
    "mnist8bit_dlm": {"model.channels": [16, 8], "guide.channels": [8, 16]},
    "mnist8bit_gaussian": {"model.channels": [16, 8], "guide.channels": [8, 16]},
}


def configure(row: str, a, fixture_root: Path | None, out: Path):
    """The row's config with the command line's budget (and, on fixtures, tiny sizes)."""
    from pyrovae.run.config import config_from_dict

    name, _, overrides, _ = ROWS[row]
    raw = load_config(CONFIGS / name).to_dict()
    sets = {**overrides, "run_dir": str(out / row), "data.test_limit": a.test_limit, "device": a.device}
    sets.update({"train.max_steps": a.max_steps, "train.epochs": a.epochs})
    if fixture_root is not None:
        sets.update(
            {"data.val_size": 10, "data.train_size": 100, "model.latent_dim": 4}, **FIXTURE_NETS.get(row, {})
        )
        if not row.startswith("mnist"):  # MNIST is real data in the data root
            sets["data.root"] = str(fixture_root)
    for key, value in sets.items():
        if value is not None:
            section, _, field = key.rpartition(".")
            (raw[section] if section else raw)[field] = value
    return config_from_dict(raw)


def run_row(row: str, a, fixture_root, out: Path) -> str:
    """Train and evaluate one row; its markdown line."""
    config = configure(row, a, fixture_root, out)
    start = time.perf_counter()

    def budget(record: dict) -> bool:  # checked at each epoch end
        return (
            a.minutes is not None
            and record["kind"] == "epoch"
            and time.perf_counter() - start > 60 * a.minutes
        )

    result = experiment.fit_config(config, progress=False, callbacks=[budget])
    minutes = (time.perf_counter() - start) / 60
    ev = evaluation.evaluate(experiment.load_run(config.run_dir, which="last"), num_samples=a.eval_samples)
    _, unit, _, published = ROWS[row]
    ll = ev["log_likelihood"]
    if unit == "bits/dim":
        bits, se = ev["log_likelihood_bits_per_dim"], ev["log_likelihood_bits_per_dim_stderr"]
        value = f"{bits:.3f} +- {se:.3f} bits/dim"
    elif unit == "nats":
        value = f"{-ll['mean']:.2f} +- {ll['stderr']:.2f} nats"
    else:
        dims = math.prod(experiment.load_run(config.run_dir, which="last").model.x_shape)
        value = (
            f"{-ll['mean']:.1f} +- {ll['stderr']:.1f} nats, i.e. {-ll['mean'] / (dims * math.log(2)):.3f} "
            "'bits/dim' of a density (not comparable)"
        )
    rows = "; ".join(f"{n}: {v}" if v is not None else n for n, v in published) or "-"
    return (
        f"| {row} | {config.model.options.get('likelihood')} | {result.epoch} epochs, {result.step} steps, "
        f"{minutes:.1f} min | {ev['num_datapoints']} x K = {ev['num_samples']} ({ev['seconds']:.0f} s) | "
        f"{value} | {rows} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--minutes", type=float, help="training budget per row (checked at each epoch end)")
    p.add_argument("--epochs", type=int, help="override the configs' epochs")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--test-limit", type=int, help="evaluate the first N test images (default: all)")
    p.add_argument("--eval-samples", type=int, default=5000)
    p.add_argument("--device", default="auto")
    p.add_argument("--fixture", action="store_true", help="run on small random datasets in the real formats")
    p.add_argument("--out", help="where the runs go (default: a temporary folder)")
    p.add_argument("--append", help="append the table to this markdown file")
    a = p.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="natural_images_"))
    fixture_root = None
    if a.fixture:
        fixture_root = out / "data"
        fixtures.write_cifar10(fixture_root, per_batch=40, test=20)
        fixtures.write_chardata(fixture_root, train=120, test=20)
    lines = [
        "| row | likelihood | training | test images x K (evaluation) | test -log p(x) | published |",
        "| --- | --- | --- | --- | ---: | --- |",
    ]
    for row in a.rows:
        lines.append(run_row(row, a, fixture_root, out))
        print(lines[-1], flush=True)
    skip = ("rows", "append", "out", "fixture", "device")
    flags = " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if v is not None and k not in skip
    )
    header = [
        f"Device: {a.device} ({platform.machine()}, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}"
        + (" -- random fixture data in the real formats: the numbers mean nothing" if a.fixture else ""),
        f"Command: `python benchmarks/natural_images.py --rows {' '.join(a.rows)} {flags}"
        + (" --fixture" if a.fixture else "")
        + "`",
        "",
    ]
    from report import emit  # benchmarks/ is on sys.path when run as a script

    emit("\n".join(header + lines) + "\n", a.append)


if __name__ == "__main__":
    main()
