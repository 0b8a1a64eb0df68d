"""Sweeps: a grid over config keys (or random draws from their ranges) times seeds, each point
an ordinary run directory under the sweep directory.

A config's ``[sweep]`` table (or ``pyrovae sweep``'s flags) names the keys and their values::

    [sweep]
    grid = { "model.latent_dim" = [10, 20], "train.objective" = ["elbo", "iwae"] }
    seeds = 3                # or a list, [0, 1, 2]; seeds config.seed, config.seed + 1, ...
    search = "grid"          # or "random": `trials` points drawn from each key's values or range
    trials = 8               # random: how many points
    ranges = { "train.lr" = { low = 1e-4, high = 1e-2, log = true } }   # random only

The sweep directory holds ``sweep.json`` (the base config, the sweep and every run's settings
and folder) and ``status.json`` (each run's state as the sweep last saw it); its runs are
folders named by their settings (``latent_dim=10,seed=0``). Started again, a sweep trains only
the runs that are not finished, each resuming from its own checkpoint
(:mod:`pyrovae.run.engines` runs them). Random search draws from ``random.Random(search_seed)``,
so the same table gives the same points (Bergstra & Bengio 2012: random points cover each
important key better than a grid of the same size).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from pyrovae.errors import ConfigError
from pyrovae.run.config import apply_overrides, config_from_dict
from pyrovae.run.engines import is_running, run_all, split_cpus
from pyrovae.runtime.devices import resolve_device
from pyrovae.runtime.threads import available_cpus
from pyrovae.training import checkpoint as ckpt_io
from pyrovae.training.rundir import RunDir

SEARCHES = ("grid", "random")
KEYS = ("grid", "seeds", "search", "trials", "ranges", "search_seed", "evaluate", "eval_samples")


@dataclass(frozen=True)
class Sweep:
    """What a sweep trains: ``grid`` {dotted config key: values}, ``seeds`` (the seeds each point
    runs under), ``search`` (grid | random), ``trials`` and ``ranges`` ({key: {low, high, log,
    integer}}) for random search, and whether each run is evaluated on its test split
    (``eval_samples`` importance samples; default the config's)."""

    grid: dict[str, list] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    search: str = "grid"
    trials: int = 0
    ranges: dict[str, dict] = field(default_factory=dict)
    search_seed: int = 0
    evaluate: bool = True
    eval_samples: int | None = None

    @classmethod
    def of(cls, table: dict, base_seed: int = 0) -> "Sweep":
        """A sweep from a ``[sweep]`` table, each mistake refused in one line naming the fix."""
        unknown = sorted(set(table) - set(KEYS))
        if unknown:
            raise ConfigError(f"unknown [sweep] key {unknown[0]!r}; known: {', '.join(KEYS)}")
        seeds = table.get("seeds", 1)
        if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
            seeds = [base_seed + i for i in range(seeds)]
        if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
            raise ConfigError(f"[sweep] seeds = {seeds!r}: give a count >= 1 or a list of integer seeds")
        grid = table.get("grid", {})
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f'[sweep] grid "{key}" = {values!r}: give a non-empty list of values')
        out = cls(
            grid=dict(grid),
            seeds=list(dict.fromkeys(seeds)),
            search=table.get("search", "grid"),
            trials=int(table.get("trials", 0)),
            ranges={k: dict(v) for k, v in table.get("ranges", {}).items()},
            search_seed=int(table.get("search_seed", 0)),
            evaluate=bool(table.get("evaluate", True)),
            eval_samples=table.get("eval_samples"),
        )
        out.check()
        return out

    def check(self) -> None:
        if self.search not in SEARCHES:
            raise ConfigError(f"[sweep] search = {self.search!r}: use one of {', '.join(SEARCHES)}")
        if self.search == "random" and self.trials < 1:
            raise ConfigError("[sweep] search = 'random' needs trials = N (the points drawn), N >= 1")
        if self.search == "grid" and (self.ranges or self.trials):
            raise ConfigError("[sweep] ranges and trials are for search = 'random'; a grid takes lists")
        for key, r in self.ranges.items():
            ok = set(r) <= {"low", "high", "log", "integer"} and {"low", "high"} <= set(r)
            if not ok or not r["low"] < r["high"] or (r.get("log") and r["low"] <= 0):
                raise ConfigError(
                    f'[sweep] ranges "{key}" = {r!r}: give {{ low = A, high = B }} with A < B '
                    "(and A > 0 with log = true; integer = true for whole numbers)"
                )

    def points(self) -> list[dict[str, Any]]:
        """The settings of each point, before seeds: the grid's product, or ``trials`` draws."""
        if self.search == "grid":
            points = [{}]
            for key, values in self.grid.items():
                points = [p | {key: v} for p in points for v in values]
            return points
        rng = random.Random(self.search_seed)
        return [
            {k: rng.choice(v) for k, v in self.grid.items()}
            | {k: _draw(rng, r) for k, r in self.ranges.items()}
            for _ in range(self.trials)
        ]


def _draw(rng: random.Random, r: dict):
    lo, hi = (math.log(r["low"]), math.log(r["high"])) if r.get("log") else (r["low"], r["high"])
    v = rng.uniform(lo, hi)
    v = math.exp(v) if r.get("log") else v
    return int(round(v)) if r.get("integer") else float(f"{v:.4g}")


def _text(value) -> str:
    text = "-".join(map(str, value)) if isinstance(value, list) else str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def run_names(settings: list[dict]) -> list[str]:
    """A folder name per run from the settings that vary (``latent_dim=10,seed=0``): each key's
    last part unless two keys share it, then the whole dotted key; unique by a suffix."""
    keys = list(dict.fromkeys(k for s in settings for k in s))
    varying = [k for k in keys if len({json.dumps(s.get(k)) for s in settings}) > 1] or keys[-1:]
    leaves = [k.rsplit(".", 1)[-1] for k in varying]
    label = {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(varying, leaves)}
    names, seen = [], {}
    for s in settings:
        name = ",".join(f"{label[k]}={_text(s.get(k))}" for k in varying) or "run"
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return names


@dataclass(frozen=True)
class Planned:
    """One run of a sweep: its folder name, the settings that make it, the config it trains."""

    name: str
    settings: dict
    config: dict


def plan(base: dict, sweep: Sweep, folder: str | Path) -> list[Planned]:
    """Every run of ``sweep`` over the base config data ``base``, each checked as a config
    (a wrong key or value is refused before anything runs) and placed under ``folder``."""
    settings = [p | {"seed": s} for p in sweep.points() for s in sweep.seeds]
    runs = []
    for name, s in zip(run_names(settings), settings):
        raw = apply_overrides(base, [*s.items(), ("run_dir", str(Path(folder).resolve() / name))])
        try:
            config = config_from_dict(raw)
        except ConfigError as e:
            raise ConfigError(f"sweep run {name}: {e}") from e
        runs.append(Planned(name, s, config.to_dict()))
    return runs


class SweepDir:
    """The files of a sweep directory: ``sweep.json`` (what it trains) and ``status.json``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.spec = self.path / "sweep.json"
        self.status_file = self.path / "status.json"

    def exists(self) -> bool:
        return self.spec.exists()

    def write(self, base: dict, sweep: Sweep, runs: list[Planned], engine: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        body = {"base": base, "sweep": asdict(sweep), "engine": engine, "runs": [asdict(r) for r in runs]}
        ckpt_io.atomic_write_text(self.spec, json.dumps(body, indent=2) + "\n")

    def read(self) -> dict:
        if not self.exists():
            raise ConfigError(f"{self.path} is not a sweep directory (no sweep.json)")
        return json.loads(self.spec.read_text())

    def runs(self) -> list[Planned]:
        return [Planned(**r) for r in self.read()["runs"]]

    def status(self) -> dict:
        return json.loads(self.status_file.read_text()) if self.status_file.exists() else {}

    def record(self, name: str, outcome: dict) -> None:
        status = self.status() | {name: outcome}
        ckpt_io.atomic_write_text(self.status_file, json.dumps(status, indent=2) + "\n")


def sweep_table(path: str | Path) -> dict:
    """The ``[sweep]`` table of a TOML or JSON config file (empty when it has none)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no config file at {path}")
    text = path.read_text()
    table = (json.loads(text) if path.suffix == ".json" else tomllib.loads(text)).get("sweep", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: sweep must be a table ([sweep]), got {table!r}")
    return table


STATES = ("pending", "running", "stopped", "failed", "trained", "evaluated")


def state(run: Planned, folder: str | Path, status: dict) -> str:
    """One of :data:`STATES` for ``run``: evaluated or trained as the sweep recorded it (and its
    files show), running while a process holds its lock, stopped with a checkpoint and no end,
    failed as recorded, else pending."""
    files = RunDir(Path(folder) / run.name)
    recorded = status.get(run.name, {}).get("state")
    if recorded == "evaluated" and files.evaluation("test").exists():
        return "evaluated"
    if recorded in ("trained", "evaluated") and files.has_checkpoint():
        return "trained"
    if is_running(files.path):
        return "running"
    if recorded == "failed":
        return "failed"
    return "stopped" if files.has_checkpoint() else "pending"


def states(folder: str | Path) -> list[tuple[Planned, str, dict]]:
    """Every run of the sweep at ``folder``: (run, its state, what the sweep recorded)."""
    files = SweepDir(folder)
    status = files.status()
    return [(r, state(r, folder, status), status.get(r.name, {})) for r in files.runs()]


def start(
    folder: str | Path,
    base: dict | None = None,
    sweep: Sweep | None = None,
    *,
    workers: int | None = None,
    threads: int | None = None,
    backend: str = "local",
    address: str | None = None,
    report: Callable[[str], None] = print,
) -> list[tuple[Planned, str, dict]]:
    """Run the sweep ``sweep`` over ``base`` in ``folder`` (or, without them, the one ``folder``
    holds): every run not yet finished, through :func:`pyrovae.run.engines.run_all`. A folder
    holding another sweep, or a run, is refused; a stopped sweep resumes with the threads it
    started with (so that each run resumes bitwise)."""
    files = SweepDir(folder)
    stored = files.read() if files.exists() or base is None else None
    if base is None:
        base, sweep = stored["base"], Sweep(**stored["sweep"])
    elif stored is not None and (stored["base"], stored["sweep"]) != (base, asdict(sweep)):
        raise ConfigError(
            f"{folder} holds another sweep (its sweep.json differs); resume it with pyrovae sweep "
            f"--resume {folder}, or give this one another --dir"
        )
    if stored is None and RunDir(folder).config.exists():
        raise ConfigError(f"{folder} is a run directory; give the sweep its own folder with --dir")
    runs = plan(base, sweep, folder)
    engine = (stored or {}).get("engine", {})
    gpus = torch.cuda.device_count() if resolve_device(base.get("device", "auto")).type == "cuda" else 0
    workers, threads = workers or engine.get("workers"), threads or engine.get("threads")
    how = split_cpus(len(runs), workers, threads, available_cpus(), gpus, backend)
    how = dataclasses.replace(how, address=address)
    files.write(base, sweep, runs, {"workers": how.workers, "threads": how.threads, "gpus": gpus})
    status = files.status()
    todo = [(r, state(r, folder, status)) for r in runs]
    finished = ("evaluated",) if sweep.evaluate else ("trained", "evaluated")
    tasks = [
        {
            "name": r.name,
            "config": r.config,
            "trained": s == "trained",
            "evaluate": sweep.evaluate,
            "eval_samples": sweep.eval_samples,
        }
        for r, s in todo
        if s not in finished
    ]
    report(
        f"sweep {folder}: {len(runs)} runs, {len(runs) - len(tasks)} finished, {len(tasks)} to run on "
        f"{how.workers} worker{'s' * (how.workers > 1)} x {how.threads} thread{'s' * (how.threads > 1)}"
        f" ({how.backend}{', ' + str(gpus) + ' GPUs' if gpus else ''})"
    )

    def done(task: dict, outcome: dict) -> None:
        files.record(task["name"], outcome)
        error = outcome.get("error", "")
        report(f"  {task['name']}: {outcome['state']} in {outcome['seconds']:.0f} s {error}".rstrip())

    run_all(tasks, how, done)
    return states(folder)
