"""`pyrovae fit | evaluate | diagnose | sample | reconstruct | latent | list`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import torch

from . import annealed, distributed, experiment, hooks, plots, threads
from .compile import MODES
from .config import apply_overrides, config_from_dict, load_config
from .data import EVAL_BINARIZATION_SEED
from .errors import Interrupted, PyrovaeError
from .registry import available


def _fmt(term: dict) -> str:
    return f"{term['mean']:.2f} +- {term['stderr']:.2f}"


def _has_checkpoint(run_dir) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / "checkpoint.pt").exists() or any((run_dir / "checkpoints").glob("step-*.pt"))


def cmd_fit(args) -> None:
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    main = distributed.is_main()
    if not args.resume and args.config and restarts > 0:  # torchrun restarted the job after a failure
        config = load_config(args.config)
        run_dir = args.run_dir or config.run_dir
        if _has_checkpoint(run_dir):
            args.resume = run_dir
    if args.resume:
        config = experiment.read_config(args.resume).replace(run_dir=str(args.resume))  # wherever it is now
        if args.tensorboard:
            config = config.replace(train=dataclasses.replace(config.train, tensorboard=True))
        if main:
            print(f"resuming {args.resume}" + (f" (restart {restarts})" if restarts else ""))
        result = experiment.fit_config(config, resume=True, progress=not args.no_progress)
    else:
        if not args.config:
            raise PyrovaeError("pyrovae fit needs a CONFIG file, or --resume RUN_DIR")
        config = load_config(args.config)
        raw = config.to_dict()
        if args.data_root:
            raw["data"]["root"] = args.data_root
        for key in ("run_dir", "device", "seed"):
            if getattr(args, key) is not None:
                raw[key] = getattr(args, key)
        if args.tensorboard:
            raw["train"]["tensorboard"] = True
        config = config_from_dict(apply_overrides(raw, args.set))
        result = experiment.fit_config(config, progress=not args.no_progress)
    if not main:  # rank 0 reports
        distributed.barrier()
        return
    best = f"; best validation ELBO {result.best_val_elbo:.2f} nats" * math.isfinite(result.best_val_elbo)
    world, cpu = distributed.world()[1], threads.note(result.threads)
    print(f"trained {result.step} steps{cpu}{best}" + (f" on {world} ranks" if world > 1 else ""))
    run = experiment.load_run(config.run_dir, device=str(distributed.device_for_rank(config.device)))
    for path in experiment.draw_report(run, config.run_dir):
        print(f"wrote {path}")
    distributed.barrier()


def _load(args):
    run = experiment.load_run(args.run_dir, which=args.checkpoint, device=args.device)
    if args.data_root:
        run.config = dataclasses.replace(
            run.config, data=dataclasses.replace(run.config.data, root=args.data_root)
        )
    if getattr(args, "limit", None):
        run.config = dataclasses.replace(
            run.config, data=dataclasses.replace(run.config.data, test_limit=args.limit, val_limit=args.limit)
        )
    return run


def cmd_evaluate(args) -> None:
    run = _load(args)
    out = experiment.evaluate(
        run,
        split=args.split,
        num_samples=args.num_samples,
        seed=args.seed,
        compile=args.compile,
        progress=not args.no_progress,
    )
    if not distributed.is_main():
        return
    out["ranks"] = distributed.world()[1]
    path = Path(args.run_dir) / f"eval_{args.split}.json"
    print(
        f"{out['dataset']} ({out['pixels']} pixels) {out['split']} set, {out['num_datapoints']} datapoints, "
        f"K = {out['num_samples']} importance samples each, checkpoint at step {out['step']}, "
        f"{out['seconds']:.1f} s on {out['device']}"
        + threads.note(out["threads"] if out["device"] == "cpu" else None)
        + (f" x {out['ranks']} ranks" if out["ranks"] > 1 else "")
    )
    print("  nats per datapoint, mean +- standard error over datapoints")
    target = {"quadrants": "log p(y | x)", "image,label": "log p(x | y)"}.get(
        hooks.takes(run.model), "log p(x)"
    )
    print(f"  {target:<16}{_fmt(out['log_likelihood'])}   importance-sampled (Burda et al. 2015)")
    print(f"  ELBO            {_fmt(out['elbo'])}")
    print(f"  reconstruction  {_fmt(out['reconstruction'])}   E_q[log p(x|z)]")
    print(f"  KL              {_fmt(out['kl'])}   E_q[log q(z|x) - log p(z)]")
    print(f"  importance ESS  {out['ess']['mean']:.1f} on average, {out['ess']['min']:.1f} at least, of K")
    if "elbo_bits_per_dim" in out:
        print(
            f"  bits per dim    {out['log_likelihood_bits_per_dim']:.4f} +- "
            f"{out['log_likelihood_bits_per_dim_stderr']:.4f} (-log p(x) / (D ln 2)), "
            f"{out['elbo_bits_per_dim']:.4f} (-ELBO)"
        )
    elif not out.get("discrete", True) and target == "log p(x)":
        print(
            "  note: this likelihood is a density over grey levels: its log p(x) is not comparable "
            "with probabilities of discrete pixels (use likelihood discretized_logistic(_mixture) "
            'with pixels = "8bit" for bits/dim)'
        )
    if "classification_error" in out:
        e = out["classification_error"]
        print(
            f"  test error      {100 * e['error']:.2f}% +- {100 * e['stderr']:.2f}   "
            f"argmax q({e['site']} | x)"
            + (f", mean over {e['binarizations']} binarizations" if e["binarizations"] > 1 else "")
        )
    for site, acc in out.get("cluster_accuracy", {}).items():
        print(
            f"  cluster acc.    {100 * acc:.2f}%   argmax q({site} | x), "
            "clusters matched to labels (Hungarian)"
        )
    annealed.report(run, args, out)  # --method ais, --bdmc N
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


def cmd_sample(args) -> None:
    run = _load(args)
    out = Path(args.out or Path(args.run_dir) / "samples.png")
    if args.condition is not None:
        if hooks.num_classes(run.model) is None:
            raise PyrovaeError(
                f"--condition needs a label-conditioned model (cvae); this run's model is "
                f"{run.config.model.name!r}"
            )
        plots.save_grid(run.model.sample(args.num, condition=args.condition), out)
    else:
        plots.save_grid(run.model.sample(args.num), out)
    print(f"wrote {out}")


def cmd_reconstruct(args) -> None:
    run = _load(args)
    x = experiment.load_data(run.config, "test", run.device).observe_fixed(EVAL_BINARIZATION_SEED)[: args.num]
    out = Path(args.out or Path(args.run_dir) / "reconstructions.png")
    plots.save_grid(experiment.reconstructions(run, x), out)
    print(f"wrote {out} (each original beside its reconstruction)")


def cmd_latent(args) -> None:
    run = _load(args)
    for path in experiment.draw_report(
        run, args.run_dir, latent_points=args.limit or 5000, parts=("latent",)
    ):
        print(f"wrote {path}")


def cmd_diagnose(args) -> None:
    from .reports import diagnose_run

    run = _load(args)
    out = diagnose_run(
        run,
        args.run_dir,
        split=args.split,
        limit=args.limit,
        num_samples=args.num_samples,
        amortization=args.amortization,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(f"q(z|x) on {out['num_datapoints']} {out['split']} datapoints, S = {out['num_samples']} draws each")
    print(f"  Pareto k-hat <= 0.5 (reliable)    {100 * out['k_hat_good']:.1f}%")
    print(f"  0.5 < k-hat <= 0.7 (slow)         {100 * out['k_hat_ok']:.1f}%")
    print(f"  k-hat > 0.7 (unreliable)          {100 * out['k_hat_bad']:.1f}%")
    print(f"  gap log p(x) - ELBO               {_fmt(out['gap'])} nats")
    print(f"  importance ESS / S                {out['ess_fraction']:.3f} on average")
    for name, a in out["active_units"].items():
        kl = "" if a["kl"] is None else f", KL {sum(a['kl']):.2f} nats"
        print(f"  active units of {name:<16}  {a['active']} of {a['units']}{kl}")
    if "amortization" in out:
        am = out["amortization"]
        print(
            f"  on {am['num_datapoints']} datapoints: gap {_fmt(am['total_gap'])} = approximation "
            f"{_fmt(am['approximation_gap'])} + amortization {_fmt(am['amortization_gap'])} nats"
        )
    for w in out["warnings"]:
        print(f"  warning: {w}")
    print(
        "  worst datapoints by k-hat: "
        + ", ".join(f"{int(r['datapoint'])} ({r['k_hat']:.2f})" for r in out["worst"][:5])
    )
    print(f"wrote {Path(args.run_dir) / 'diagnostics.csv'}, khat_gap.png, diagnostics.json")


def cmd_list(args) -> None:
    for kind, table in available().items():
        print(f"{kind}:")
        for name, doc in table.items():
            print(f"  {name:<18} {doc}")


def _fit_parser(sub) -> None:
    f = sub.add_parser("fit", help="train a model and guide from a config (TOML or JSON)")
    f.add_argument("config", nargs="?", help="config file, e.g. configs/mnist_vae.toml")
    f.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    f.add_argument("--data-root", help="dataset folder (default: $PYROVAE_DATA, else ./data)")
    f.add_argument("--run-dir", help="where to write the run (default: the config's run_dir)")
    f.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    f.add_argument("--seed", type=int)
    f.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=3 (repeatable)",
    )
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.add_argument(
        "--tensorboard", action="store_true", help="also write TensorBoard events (train.tensorboard)"
    )
    f.set_defaults(fn=cmd_fit)


SPLITS = ["test", "val"]


def _run_commands() -> list[tuple]:
    """(name, help, function, {flag: argparse options}) of the commands that take a RUN_DIR."""
    commands = []
    commands.append(
        (
            "evaluate",
            "test-set ELBO per datapoint with its standard error",
            cmd_evaluate,
            {
                "--num-samples": dict(
                    type=int, help="particles per datapoint (default: the config's eval_samples)"
                ),
                "--split": dict(default="test", choices=SPLITS),
                "--limit": dict(type=int, help="evaluate on the first N datapoints only"),
                "--seed": dict(type=int, default=0),
                "--method": dict(default="is", choices=["is", "ais"], help="ais: AIS beside the IS figure"),
                "--steps": dict(type=int, default=1000, help="AIS/BDMC intermediate distributions T"),
                "--chains": dict(type=int, default=16, help="AIS/BDMC chains per datapoint S"),
                "--bdmc": dict(
                    type=int, metavar="N", help="BDMC bounds on N datapoints simulated from the model"
                ),
                "--compile": dict(
                    default="auto",
                    choices=list(MODES),
                    help="how IS chunks and AIS paths run (auto = capture)",
                ),
            },
        )
    )
    commands.append(
        (
            "sample",
            "PNG grid of images decoded from prior draws",
            cmd_sample,
            {
                "--num": dict(type=int, default=64),
                "--out": dict(),
                "--condition": dict(type=int, help="the class to draw, for a label-conditioned model (cvae)"),
            },
        )
    )
    commands.append(
        (
            "reconstruct",
            "PNG grid of test images and their reconstructions",
            cmd_reconstruct,
            {"--num": dict(type=int, default=32), "--out": dict()},
        )
    )
    commands.append(
        (
            "latent",
            "latent scatter (and manifold grid for 2D latents)",
            cmd_latent,
            {"--limit": dict(type=int, help="number of test points to embed")},
        )
    )
    commands.append(
        (
            "diagnose",
            "per-datapoint k-hat, ESS and gaps of q(z|x), active units",
            cmd_diagnose,
            {
                "--num-samples": dict(type=int, default=1000, help="draws from q(z|x) per datapoint"),
                "--split": dict(default="test", choices=SPLITS),
                "--limit": dict(type=int, default=1000, help="the first N datapoints"),
                "--amortization": dict(
                    type=int,
                    default=0,
                    metavar="M",
                    help="also split the gap on the first M datapoints (Cremer et al. 2018)",
                ),
                "--seed": dict(type=int, default=0),
            },
        )
    )
    return commands


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyrovae", description="Variational autoencoders in Pyro.")
    sub = p.add_subparsers(dest="command", required=True)
    _fit_parser(sub)
    for name, help_, fn, extra in _run_commands():
        s = sub.add_parser(name, help=help_)
        s.add_argument("run_dir")
        s.add_argument("--checkpoint", default="best", choices=["best", "last"])
        s.add_argument("--data-root")
        s.add_argument("--device")
        s.add_argument("--no-progress", action="store_true", help="no progress bar")
        for flag, kw in extra.items():
            s.add_argument(flag, **kw)
        s.set_defaults(fn=fn)
    ls = sub.add_parser("list", help="registered models and guides")
    ls.add_argument("--no-progress", action="store_true", help="accepted for uniformity (list shows no bar)")
    ls.set_defaults(fn=cmd_list)
    for s in sub.choices.values():
        s.add_argument(
            "--threads", type=int, help="CPU threads, fixed (default: timed, up to the CPUs usable)"
        )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.fn in (cmd_fit, cmd_evaluate):  # torchrun: join the process group
            distributed.init_from_env(getattr(args, "device", None) or "auto")
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise PyrovaeError(
                f"pyrovae {args.command} runs in one process; only fit and evaluate take torchrun"
            )
        choice = threads.configure(args.threads)  # pyrovae.threads: affinity, cgroup quota
        if args.fn is not cmd_list and distributed.is_main():
            print(f"pyrovae: {choice.describe()}")  # stdout: an error stays stderr's one line
        args.fn(args)
    except Interrupted as e:
        print(f"pyrovae: {e}", file=sys.stderr)
        return 128 + e.signum  # the shell's convention for a process stopped by a signal
    except PyrovaeError as e:
        print(f"pyrovae: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, torch.OutOfMemoryError) as e:
        print(
            f"pyrovae: error: out of memory ({type(e).__name__}); lower train.batch_size, "
            "train.num_particles or train.k, the model's sizes, or evaluate with fewer --num-samples",
            file=sys.stderr,
        )
        return 2
    except RuntimeError as e:  # DistBackendError and Gloo's errors are RuntimeErrors
        if "allocate" in str(e) and not distributed.active():  # the CPU allocator's "can't allocate memory"
            print(
                f"pyrovae: error: out of memory ({str(e).splitlines()[0]}); lower train.batch_size, "
                "train.num_particles or train.k, or the model's sizes",
                file=sys.stderr,
            )
            return 2
        if not distributed.active():
            raise
        rank = distributed.world()[0]
        print(
            f"pyrovae: error: rank {rank} lost the other ranks ({type(e).__name__}: "
            f"{str(e).splitlines()[0]}); another rank stopped or died. Restart the job (torchrun "
            "--max-restarts N restarts it by itself): `pyrovae fit` resumes from the last checkpoint",
            file=sys.stderr,
        )
        return 1
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
