"""`pyrovae sweep` and `pyrovae compare`: the commands of a study of many runs (the sweep in
:mod:`pyrovae.run.sweep`, the table in :mod:`pyrovae.run.compare`)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from pyrovae.errors import ConfigError
from pyrovae.run import compare, console, sweep, tracking
from pyrovae.run.config import load_config, parse_setting
from pyrovae.run.engines import BACKENDS

FORMATS = {"md": compare.markdown, "csv": compare.as_csv, "latex": compare.latex}


def sweep_of(args) -> tuple[dict, sweep.Sweep, Path]:
    """The base config data, the sweep (its ``[sweep]`` table with the flags over it) and the
    sweep directory (``--dir``, else the config's run_dir) of ``pyrovae sweep CONFIG``."""
    config = load_config(args.config).override(*args.set)
    table = sweep.sweep_table(args.config)
    grid = dict(table.get("grid", {}))
    for key, values in (parse_setting(t, "--grid 'model.latent_dim=[10, 20]'") for t in args.grid):
        grid[key] = values if isinstance(values, list) else [values]
    flags = {"seeds": args.seeds, "search": args.search, "trials": args.trials}
    table = table | {"grid": grid} | {k: v for k, v in flags.items() if v is not None}
    if args.no_evaluate:
        table["evaluate"] = False
    if args.eval_samples is not None:
        table["eval_samples"] = args.eval_samples
    if config.train.mlflow is True:  # MLflow's default as seen here, for every worker wherever it runs
        config = config.override(("train.mlflow", tracking.resolve_uri(True)))
    return config.to_dict(), sweep.Sweep.of(table, config.seed), Path(args.dir or config.run_dir)


def cmd_sweep(args) -> None:
    if args.status:
        rows = sweep.states(args.status)
        for run, state, outcome in rows:
            extra = f" ({outcome['error']})" if state == "failed" else ""
            console.say(f"{state:>9}  {run.name}{extra}")
        return
    if not args.resume and not args.config:
        raise ConfigError("pyrovae sweep needs a CONFIG file, --resume SWEEP_DIR or --status SWEEP_DIR")
    base, spec, folder = (None, None, Path(args.resume)) if args.resume else sweep_of(args)
    stored = sweep.SweepDir(folder).read() if args.resume else {"base": base, "sweep": asdict(spec)}
    train = stored["base"]["train"]
    if train.get("mlflow"):  # the sweep's own MLflow run: its runs nest under it
        tracking.open_run(folder, train["mlflow"], train["mlflow_experiment"], {"sweep": stored["sweep"]})
    rows = sweep.start(
        folder,
        base,
        spec,
        workers=args.workers,
        threads=args.threads,
        backend=args.backend,
        address=args.address,
        report=console.say,
    )
    left = [run.name for run, state, _ in rows if state not in ("trained", "evaluated")]
    console.say(f"sweep {folder}: {len(rows) - len(left)} of {len(rows)} runs finished")
    if rows and all(state == "evaluated" for _, state, _ in rows):
        table = compare.study([str(folder)])
        paths = [folder / "compare.md", compare.figure(table, path=folder / "compare.png")]
        paths[0].write_text(compare.markdown(table) + "\n")
        console.wrote(paths)
        tracking.log_files(folder, paths)
    if left:
        raise ConfigError(
            f"{len(left)} runs did not finish ({', '.join(left[:3])}{'...' * (len(left) > 3)}); "
            f"see their sweep.log, then pyrovae sweep --resume {folder}"
        )


def cmd_compare(args) -> None:
    rows = compare.study(args.runs, args.split, args.baseline)
    text = FORMATS[args.format](rows)
    if args.figure:
        console.wrote([compare.figure(rows, path=args.figure)])
    if args.out:
        Path(args.out).write_text(text + "\n")
        console.wrote([Path(args.out)])
    else:
        print(text)


def add_commands(sub) -> None:
    """The ``sweep`` and ``compare`` subcommands."""
    s = sub.add_parser("sweep", help="train (and evaluate) a grid of configs times seeds, in parallel")
    s.add_argument("config", nargs="?", help="config file; its [sweep] table names the grid and seeds")
    s.add_argument("--grid", action="append", default=[], metavar="KEY=[V,...]", help="a key and its values")
    s.add_argument("--seeds", type=_seeds, help="how many seeds (3), or which (0,1,2)")
    s.add_argument("--search", choices=sweep.SEARCHES)
    s.add_argument("--trials", type=int, help="random search: how many points")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="set a base config key")
    s.add_argument("--dir", help="the sweep directory (default: the config's run_dir)")
    s.add_argument("--resume", metavar="SWEEP_DIR", help="run what a stopped sweep left unfinished")
    s.add_argument("--status", metavar="SWEEP_DIR", help="list a sweep's runs and their states")
    s.add_argument("--workers", type=int, help="runs at a time (default: one per CPU, or per GPU)")
    s.add_argument("--backend", default="local", choices=BACKENDS, help="local process pool, or Ray")
    s.add_argument("--address", help="Ray: the cluster's address (default: a local Ray)")
    s.add_argument("--no-evaluate", action="store_true", help="train only")
    s.add_argument("--eval-samples", type=int, help="importance samples per test image")
    s.add_argument("--no-progress", action="store_true", help="accepted for uniformity (runs log to files)")
    s.set_defaults(fn=cmd_sweep)
    c = sub.add_parser("compare", help="evaluated runs side by side, paired differences against a baseline")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or sweep directories")
    c.add_argument("--baseline", help="the run (or, across seeds, the group) the others are compared with")
    c.add_argument("--split", default="test", choices=["test", "val"])
    c.add_argument("--format", default="md", choices=list(FORMATS))
    c.add_argument("--out", help="write the table here instead of printing it")
    c.add_argument("--figure", metavar="PNG", help="also draw each run's log p(x) with its 95%% interval")
    c.add_argument("--no-progress", action="store_true", help="accepted for uniformity (no bar)")
    c.set_defaults(fn=cmd_compare)


def _seeds(text: str):
    try:
        return int(text) if "," not in text else [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a count (3) or seeds separated by commas (0,1,2)")
