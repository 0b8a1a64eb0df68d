"""`pyrovae fit | evaluate | diagnose | sample | reconstruct | latent | list`: parse the
arguments, apply them to the config through one override function, call the run-level
function that computes, and hand its result to :mod:`pyrovae.run.console`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pyro
import torch

from pyrovae import hooks
from pyrovae.diagnostics import generate, plots
from pyrovae.diagnostics.disentanglement import METRICS
from pyrovae.errors import Interrupted, PyrovaeError
from pyrovae.registry import available, plugins, summary
from pyrovae.run import console, evaluation, experiment, studies, tracking
from pyrovae.run.config import Config, load_config
from pyrovae.run.diagnose import diagnose_run
from pyrovae.run.kept import KEEP_EVERY
from pyrovae.run.recipes import evaluation_data
from pyrovae.runtime import distributed, threads
from pyrovae.runtime.compile import MODES
from pyrovae.runtime.devices import resolve_device
from pyrovae.training import catalog
from pyrovae.training.rundir import RunDir


def fit_settings(args) -> tuple[Config, bool]:
    """The config ``pyrovae fit`` trains (its flags and ``--set`` applied by the one override
    function, :meth:`pyrovae.run.config.Config.override`) and whether it resumes a run."""
    if not args.resume and args.config and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        config = load_config(args.config)  # torchrun restarted the job after a failure
        if RunDir(args.run_dir or config.run_dir).has_checkpoint():
            args.resume = args.run_dir or config.run_dir
    board = [("train.tensorboard", True)] if args.tensorboard else []
    board += [("train.mlflow", args.mlflow)] if args.mlflow is not None else []
    flags = {"data.root": args.data_root, "run_dir": args.run_dir, "device": args.device, "seed": args.seed}
    settings = [*((k, v) for k, v in flags.items() if v is not None), *board, *args.set]
    if args.resume:  # wherever the run directory is now
        stored = experiment.read_config(args.resume).override(("run_dir", str(args.resume)))
        return experiment.resumed_config(stored, settings), True
    if not args.config:
        raise PyrovaeError("pyrovae fit needs a CONFIG file, or --resume RUN_DIR")
    return load_config(args.config).override(*settings), False


def cmd_fit(args) -> None:
    config, resume = fit_settings(args)
    device = resolve_device(config.device)
    main = distributed.is_main()
    if resume and main:
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        changed = experiment.record_resume(config)
        told = f" with {', '.join(f'{k} = {v!r}' for k, v in changed.items())}" if changed else ""
        console.say(f"resuming {args.resume}{told}" + (f" (restart {restarts})" if restarts else ""))
    result = experiment.fit_config(config, resume=resume, progress=not args.no_progress, device=device)
    if main:  # rank 0 reports
        console.fitted(result, distributed.world()[1])
        run = experiment.load_run(config.run_dir, device=device)
        figures = experiment.draw_figures(run, config.run_dir)
        console.wrote(figures)
        tracking.log_fitted(config.run_dir, figures)  # with train.mlflow
    distributed.barrier()


def _load(args) -> experiment.Run:
    """The run a command reads, with ``--data-root`` and ``--limit`` applied to its config."""
    run = experiment.load_run(args.run_dir, which=args.checkpoint, device=args.device)
    limit = getattr(args, "limit", None)
    flags = {"data.root": args.data_root, "data.test_limit": limit, "data.val_limit": limit}
    settings = [(k, v) for k, v in flags.items() if v is not None]
    if settings:
        run.config = run.config.override(*settings)
    return run


def cmd_evaluate(args) -> None:
    run = _load(args)
    data = evaluation_data(run.config, args.split, run.device, args.seed)  # loaded once: IS, AIS, BDMC
    how = dict(
        num_steps=args.steps,
        num_chains=args.chains,
        adapt_chains=args.adapt_chains,
        compile=args.compile,
        initial=args.initial,
    )
    out = evaluation.evaluate_run(
        run,
        data,
        num_samples=args.num_samples,
        refine_steps=args.refine,
        with_ais=args.method == "ais",
        bdmc=args.bdmc,
        annealing=how,
        compile=args.compile,
        progress=not args.no_progress,
        run_dir=args.run_dir,
        keep_every=args.keep_every,
    )
    if not distributed.is_main():
        return
    out["ranks"] = distributed.world()[1]
    console.evaluation(out, hooks.takes(run.model))
    console.wrote(evaluation.save_evaluation(args.run_dir, args.split, out))


def cmd_sample(args) -> None:
    run = _load(args)
    pyro.set_rng_seed(args.seed)
    out = Path(args.out or RunDir(args.run_dir).figure("samples"))
    if _sequences(run, args, "samples"):
        return
    if args.condition is not None:
        if hooks.num_classes(run.model) is None:
            raise PyrovaeError(
                f"--condition needs a label-conditioned model (cvae); this run's model is "
                f"{run.config.model.name!r}"
            )
        plots.save_grid(run.model.sample(args.num, condition=args.condition), out)
    else:
        shape = run.checkpoint["record"]["x_shape"]
        plots.save_grid(generate.prior_images(run.model, args.num, shape, run.device), out)
    console.wrote([out])


def _sequences(run, args, part: str) -> bool:
    """Draw a sequence model's rolls (samples or reconstructions): into the run directory, or
    moved to ``--out``."""
    if hooks.takes(run.model) != hooks.Takes.SEQUENCE:
        return False
    (path,) = experiment.draw_figures(run, args.run_dir, parts=(part,))
    console.wrote([path if args.out is None else path.replace(args.out)])
    return True


def cmd_reconstruct(args) -> None:
    run = _load(args)
    if _sequences(run, args, "reconstructions"):
        return
    x = evaluation_data(run.config, "test", run.device).images[: args.num]
    out = Path(args.out or RunDir(args.run_dir).figure("reconstructions"))
    plots.save_grid(experiment.reconstructions(run, x), out)
    console.wrote([out], " (each original beside its reconstruction)")


def cmd_latent(args) -> None:
    run = _load(args)
    latent = args.limit or 5000
    figures = experiment.draw_figures(
        run, args.run_dir, latent_points=latent, parts=("latent",), site=args.site
    )
    console.wrote(figures)


def cmd_diagnose(args) -> None:
    run = _load(args)
    data = evaluation_data(run.config, args.split, run.device, args.seed)
    out = diagnose_run(
        run,
        args.run_dir,
        data,
        limit=args.limit,
        num_samples=args.num_samples,
        amortization=args.amortization,
        disentanglement=args.disentanglement,
        progress=not args.no_progress,
    )
    console.diagnosis(out)
    files = RunDir(args.run_dir)
    wrote = f"{files.diagnostics_table}, {files.khat_gap.name}, {files.diagnostics_summary.name}"
    console.say(f"wrote {wrote if out['per_datapoint'] is not None else files.diagnostics_summary}")


def cmd_list(args) -> None:
    objectives = dict(catalog.SUMMARIES) | {k: summary(v) for k, v in plugins("objective").items()}
    console.registered(available() | {"objectives": objectives, "metrics": dict(METRICS)})


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
    f.add_argument(
        "--mlflow",
        nargs="?",
        const=True,
        metavar="URI",
        help="also log to MLflow: its default store, or the tracking URI given (train.mlflow)",
    )
    f.set_defaults(fn=cmd_fit)


SPLITS = ["test", "val"]

#: the options of ``pyrovae evaluate``
EVALUATE_FLAGS = {
    "--num-samples": dict(type=int, help="particles per datapoint (default: the config's eval_samples)"),
    "--split": dict(default="test", choices=SPLITS),
    "--limit": dict(type=int, help="evaluate on the first N datapoints only"),
    "--seed": dict(type=int, default=0),
    "--method": dict(default="is", choices=["is", "ais"], help="ais: AIS beside the IS figure"),
    "--refine": dict(
        type=int,
        metavar="N",
        help="also importance-sample from q refined per datapoint by N steps (default: the "
        "config's eval_refine; 0: none)",
    ),
    "--steps": dict(type=int, default=1000, help="AIS/BDMC intermediate distributions T"),
    "--chains": dict(type=int, default=16, help="AIS/BDMC chains per datapoint S"),
    "--adapt-chains": dict(
        type=int,
        default=4,
        help="AIS/BDMC chains of the pass that adapts the step sizes, frozen for the measured "
        "pass (0: no adaptation, the step size 0.05 throughout)",
    ),
    "--initial": dict(
        choices=["guide", "prior"],
        help="where AIS/BDMC chains start (default: the guide, or the prior for a point-mass guide)",
    ),
    "--bdmc": dict(type=int, metavar="N", help="BDMC bounds on N datapoints simulated from the model"),
    "--compile": dict(
        default="auto",
        choices=list(MODES),
        help="how IS chunks and AIS paths run (auto = capture)",
    ),
    "--keep-every": dict(
        type=float,
        default=KEEP_EVERY,
        metavar="SECONDS",
        help="keep the finished IS chunks in the run directory this often; the same evaluation "
        "started again continues from them",
    ),
}


def _run_commands() -> list[tuple]:
    """(name, help, function, {flag: argparse options}) of the commands that take a RUN_DIR."""
    commands = []
    commands.append(
        (
            "evaluate",
            "test-set ELBO per datapoint with its standard error",
            cmd_evaluate,
            EVALUATE_FLAGS,
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
                "--seed": dict(type=int, default=0, help="seeds the draws (the same seed, the same grid)"),
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
            {
                "--limit": dict(type=int, help="number of test points to embed"),
                "--site": dict(help="the latent site to show (default: the model's code site, the last)"),
            },
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
                "--disentanglement": dict(
                    action="store_true", help="MIG, DCI, FactorVAE score and SAP against the factors"
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
    studies.add_commands(sub)
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
        choice = threads.configure(args.threads)  # pyrovae.runtime.threads: affinity, cgroup quota
        if args.fn is not cmd_list and distributed.is_main():
            console.say(f"pyrovae: {choice.describe()}")  # stdout: an error stays stderr's one line
        args.fn(args)
    except Interrupted as e:
        console.error(str(e))
        return 128 + e.signum  # the shell's convention for a process stopped by a signal
    except PyrovaeError as e:
        console.error(f"error: {e}")
        return 2
    except (MemoryError, torch.OutOfMemoryError) as e:
        console.error(
            f"error: out of memory ({type(e).__name__}); lower train.batch_size, "
            "train.num_particles or train.k, the model's sizes, or evaluate with fewer --num-samples"
        )
        return 2
    except RuntimeError as e:  # DistBackendError and Gloo's errors are RuntimeErrors
        if "allocate" in str(e) and not distributed.active():  # the CPU allocator's "can't allocate memory"
            console.error(
                f"error: out of memory ({str(e).splitlines()[0]}); lower train.batch_size, "
                "train.num_particles or train.k, or the model's sizes"
            )
            return 2
        if not distributed.active():
            raise
        rank = distributed.world()[0]
        console.error(
            f"error: rank {rank} lost the other ranks ({type(e).__name__}: "
            f"{str(e).splitlines()[0]}); another rank stopped or died. Restart the job (torchrun "
            "--max-restarts N restarts it by itself): `pyrovae fit` resumes from the last checkpoint"
        )
        return 1
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
