"""Discrete latents: M2's test error and the GMVAE's log p(x) and clustering accuracy beside
the published rows, and the step time of objective "enum" against "elbo".

Rows (each a config in configs/):
- ``m2_100``, ``m2_600``, ``m2_1000``, ``m2_3000``: the semi-supervised VAE with that many labels;
- ``gmvae_10``, ``gmvae_16``: the Gaussian-mixture VAE with K = 10 and 16 clusters;
- ``step_time``: one training step of M2 under "enum" (the class summed out) and under "elbo"
  (sampled, Pyro's score-function Trace_ELBO), median of ``--steps`` steps, as a ratio; and
  one step of the same M2 written in plain Pyro (``TraceEnum_ELBO``, benchmarks/pyro_m2.py).

Each trained row runs ``--epochs`` epochs (default: the config's), then reports the error (or
clustering accuracy) on the 10,000 validation images held out of training and on the whole test
set (with ``train.select = "error"``, as the M2 configs, also at the epoch of lowest validation
error; with dynamic pixels, q(y | x) averaged over 16 binarizations as ``evaluate`` does, and
beside it on one binarization and on the grey image), and log p(x) on the first
``--test-limit`` test images with K = ``--eval-samples``. With ``--aux-weight`` each M2 row
trains once per classifier weight: choose by the validation column. ``--score-only`` scores
the runs already in ``--out``.

    python benchmarks/discrete.py --rows m2_100 m2_3000 --epochs 20 --test-limit 1000 --eval-samples 100
    python benchmarks/discrete.py --rows m2_100 --aux-weight 10 46 150 --device cuda
    python benchmarks/discrete.py --rows step_time --steps 30
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pyrovae import hooks
from pyrovae.inference import scoring
from pyrovae.run import evaluation, experiment, recipes
from pyrovae.run.config import apply_overrides, config_from_dict, load_config
from pyrovae.run.recipes import evaluation_data

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KINGMA = "Kingma et al. 2014, table 1, M2"
PYRO = "Pyro's ss-vae tutorial, enumeration + auxiliary loss"
ROWS = {  # config, published rows
    "m2_100": ("mnist_m2_100.toml", [(KINGMA, "11.97% (+-1.71)"), (PYRO, "accuracy 0.9319 (6.81%)")]),
    "m2_600": ("mnist_m2_600.toml", [(KINGMA, "4.94% (+-0.13)")]),
    "m2_1000": ("mnist_m2_1000.toml", [(KINGMA, "3.60% (+-0.56)")]),
    "m2_3000": ("mnist_m2_3000.toml", [(KINGMA, "3.92% (+-0.63)"), (PYRO, "accuracy 0.9582 (4.18%)")]),
    "gmvae_10": ("mnist_gmvae_10.toml", [("VaDE (Jiang et al. 2017, table 2), pretrained", "94.46% acc."),
                                         ("DEC (Xie et al. 2016, table 2)", "84.30% acc.")]),
    "gmvae_16": ("mnist_gmvae_16.toml", []),
}  # fmt: skip


def configure(row: str, a, out: Path, aux_weight: float | None = None):
    raw = load_config(CONFIGS / ROWS[row][0]).to_dict()
    name = row if aux_weight is None else f"{row}_w{aux_weight:g}"
    sets = [f'run_dir="{out / name}"', f'device="{a.device}"']
    sets += [f"guide.aux_weight={aux_weight}"] if aux_weight is not None else []
    sets += [f"train.epochs={a.epochs}"] if a.epochs else []
    sets += [f"data.train_size={a.train_size}"] if a.train_size else []
    sets += a.set or []
    return config_from_dict(apply_overrides(raw, sets))


def score(run, split: str) -> tuple[str, int]:
    """The test error (M2) or clustering accuracy (GMVAE) of ``run`` on ``split``, and its size."""
    data = evaluation_data(run.config, split, run.device).split
    report = scoring.class_report_data(run.model, run.guide, data)
    if "classification_error" in report:
        e = report["classification_error"]
        views = ""
        if data.pixels == "dynamic":  # the same q(y | x) on one binarization and on the grey image
            one = scoring.class_report_data(run.model, run.guide, data, draws=1)
            args = [hooks.evaluation_inputs(run.model, data.values(), data.labels)]  # not binarized
            grey = scoring.class_report(run.model, run.guide, args, data.labels)
            errors = [r["classification_error"]["error"] for r in (one, grey)]
            views = " (one binarization {:.2f}%, grey {:.2f}%)".format(*(100 * v for v in errors))
        return f"{100 * e['error']:.2f}% +- {100 * e['stderr']:.2f} error{views}", len(data)
    return f"{100 * next(iter(report['cluster_accuracy'].values())):.2f}% acc.", len(data)


def run_row(row: str, a, out: Path, aux_weight: float | None = None) -> str:
    """Train and evaluate one row (with this classifier weight, for M2); its markdown line."""
    config = configure(row, a, out, aux_weight)
    start = time.perf_counter()
    if not a.score_only:
        experiment.fit_config(config, progress=False)
    minutes = (time.perf_counter() - start) / 60
    run = experiment.load_run(config.run_dir, which="last")
    trained = f"{run.checkpoint['epoch']} epochs, {run.checkpoint['step']} steps"
    trained += "" if a.score_only else f", {minutes:.1f} min"
    test_score, n_test = score(run, "test")
    if config.train.select == "error":  # also the epoch of lowest validation error (best.pt)
        test_score += f"; at best validation: {score(experiment.load_run(config.run_dir), 'test')[0]}"
    val_score, n_val = score(run, "val") if config.data.val_size else ("-", 0)
    run.config = dataclasses.replace(
        run.config, data=dataclasses.replace(run.config.data, test_limit=a.test_limit)
    )
    ev = evaluation.evaluate(run, num_samples=a.eval_samples)
    ll = ev["log_likelihood"]
    published = "; ".join(f"{n}: {v}" for n, v in ROWS[row][1])
    weight = f", aux_weight {run.guide.aux_weight}" if hasattr(run.guide, "aux_weight") else ""
    return (
        f"| {row}{weight} | {trained} | {val_score} "
        f"({n_val} validation images) | {test_score} ({n_test} test images) "
        f"| {ll['mean']:.2f} +- {ll['stderr']:.2f} ({ev['num_datapoints']} x K = {ev['num_samples']}) "
        f"| {published} |"
    )


def step_time(a) -> str:
    """Median seconds of one M2 training step under "enum" and under "elbo", and their ratio."""
    from pyrovae.data.batches import Batches
    from pyrovae.training import catalog, optim
    from pyrovae.training import loop as train

    config = configure("m2_100", a, Path(tempfile.mkdtemp()))
    data = recipes.load_data(config, "train")
    times, how = {}, {}
    for name in ("enum", "elbo"):
        torch.manual_seed(0)
        model, guide = recipes.build(config, data.shape)
        hooks.attach_data(model, guide, data.labels)
        images, labels = next(iter(Batches(data, config.train.batch_size, seed=1).epoch(0, labels=True)))
        x = hooks.inputs(model, images, labels)
        params = optim.collect_params(model, guide, *x)
        loss = train.make_loss(catalog.make_objective(name), model, guide, params, "auto", x)
        opt = torch.optim.Adam(params, lr=1e-4)
        one = torch.ones(())
        samples = []
        for i in range(a.steps + 3):
            t0 = time.perf_counter()
            opt.zero_grad()
            loss(*x, one).backward()
            opt.step()
            samples.append(time.perf_counter() - t0)
        times[name], how[name] = statistics.median(samples[3:]), loss.summary()
    times["pyro"] = pyro_recipe_step(images.flatten(1).float(), model.num_classes, a.steps)
    cells = [f"M2 step, batch {config.train.batch_size}"]
    cells += [f"{n} {1000 * times[n]:.1f} ms ({how[n]})" for n in ("enum", "elbo")]
    cells += [f"Pyro's recipe (TraceEnum_ELBO, eager) {1000 * times['pyro']:.1f} ms"]
    cells += [f"ratio enum / elbo {times['enum'] / times['elbo']:.2f}"]
    cells += [f"ratio Pyro's recipe / enum {times['pyro'] / times['enum']:.2f}"]
    return "| " + " | ".join(cells) + " |"


def pyro_recipe_step(x: torch.Tensor, classes: int, steps: int) -> float:
    """Median seconds of one unlabelled step of the same M2 written in plain Pyro
    (benchmarks/pyro_m2.py: ``TraceEnum_ELBO`` over y, eager)."""
    import pyro
    from pyro_m2 import M2  # benchmarks/ is on sys.path when run as a script

    pyro.clear_param_store()
    m2 = M2(d=x.shape[1], classes=classes)
    svi = pyro.infer.SVI(
        m2.model,
        pyro.infer.config_enumerate(m2.guide, "parallel"),
        pyro.optim.Adam({"lr": 1e-4}),
        loss=pyro.infer.TraceEnum_ELBO(max_plate_nesting=1),
    )
    samples = []
    with pyro.validation_enabled(False):
        for _ in range(steps + 3):
            t0 = time.perf_counter()
            svi.step(x)
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples[3:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", choices=[*ROWS, "step_time"], default=["m2_100", "m2_3000"])
    for flag, default, what in (
        ("epochs", None, "override the configs' epochs"),
        ("train-size", None, "train on the first N images (smoke runs)"),
        ("test-limit", 1000, "log p(x) on the first N test images"),
        ("eval-samples", 100, "importance samples per test image"),
        ("steps", 30, "timed steps per objective (step_time)"),
    ):
        p.add_argument(f"--{flag}", type=int, default=default, help=what)
    p.add_argument("--aux-weight", type=float, nargs="+", help="M2 rows: one run per classifier weight")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="config overrides for every row")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="where the runs go (default: a temporary folder)")
    p.add_argument("--append", help="append the table to this markdown file")
    p.add_argument("--score-only", action="store_true", help="score the runs already in --out, no training")
    a = p.parse_args()
    if a.score_only and not a.out:
        p.error("--score-only scores the runs in --out: name that folder")
    out = Path(a.out or tempfile.mkdtemp(prefix="discrete_"))
    lines = [
        "| row | training | validation error / accuracy | test error / clustering accuracy "
        "| test log p(x) | published |",
        "| --- | --- | --- | --- | ---: | --- |",
    ]
    for row in a.rows:
        weights = a.aux_weight if row.startswith("m2") and a.aux_weight else [None]
        for w in weights:
            lines.append(step_time(a) if row == "step_time" else run_row(row, a, out, w))
            print(lines[-1], flush=True)
    skip = ("rows", "append", "device", "aux_weight", "set", "score_only")
    skip += () if "step_time" in a.rows else ("steps",)
    skip += ("epochs", "test_limit", "eval_samples") if a.rows == ["step_time"] else ()
    flags = " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if v is not None and k not in skip
    )
    weights = f" --aux-weight {' '.join(f'{w:g}' for w in a.aux_weight)}" if a.aux_weight else ""
    weights += f" --set {' '.join(a.set)}" if a.set else ""
    weights += " --score-only" if a.score_only else ""
    gpu = f" ({torch.cuda.get_device_name()})" if a.device.startswith("cuda") else ""
    from report import emit_table  # benchmarks/ is on sys.path when run as a script

    threads = f"{platform.machine()}, {torch.get_num_threads()} threads"
    where = f"{a.device}{gpu} ({threads}), torch {torch.__version__}"
    emit_table(
        where, f"python benchmarks/discrete.py --rows {' '.join(a.rows)} {flags}{weights}", lines, a.append
    )


if __name__ == "__main__":
    main()
