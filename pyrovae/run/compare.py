"""Runs side by side: each run's evaluated figures with their standard errors, and the paired
differences against a baseline read off the per-datapoint values every evaluation stores
(``eval_SPLIT.pt``), with the standard error of the mean difference.

Two runs scored on the same images with the same binarization see the same datapoint noise:
the difference of their per-datapoint values cancels it, and its standard error
sd(a_n - b_n) / sqrt(N) is smaller than the unpaired sqrt(se_a^2 + se_b^2) by as much as the
values correlate (a paired comparison; e.g. Demsar 2006, sec. 3.1). Runs that did not score the
same images (another split, limit, binarization or pixel mode; recorded as ``images`` by
``pyrovae evaluate``) are refused by name.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pyrovae.errors import PyrovaeError
from pyrovae.run.sweep import SweepDir
from pyrovae.training.rundir import RunDir

#: the per-datapoint figures compared, with the names of ``eval_SPLIT.pt`` they are read from
FIGURES = {
    "log_likelihood": ("is", "log_likelihood"),
    "elbo": ("is", "elbo"),
    "kl": ("is", "kl"),
    "ais": ("ais", "log_likelihood"),
}
#: what must agree for two runs' per-datapoint values to be paired
SAME_DATA = ("dataset", "split", "pixels", "num_datapoints", "images")


@dataclass
class Scored:
    """One evaluated run: its name, what it was evaluated on and its per-datapoint values."""

    name: str
    about: dict
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    seed: int | None = None  #: the seed the run was trained with (its config.json)

    @classmethod
    def load(cls, run_dir: str | Path, split: str = "test") -> "Scored":
        files = RunDir(run_dir)
        summary, table = files.evaluation(split), files.evaluation(split, values=True)
        if not summary.exists() or not table.exists():
            raise PyrovaeError(
                f"{run_dir} has no evaluation of its {split} split: run pyrovae evaluate {run_dir}"
            )
        stored = torch.load(table, weights_only=True)
        values = {
            name: stored[group][key].double()
            for name, (group, key) in FIGURES.items()
            if group in stored and key in stored[group]
        }
        seed = json.loads(files.config.read_text()).get("seed") if files.config.exists() else None
        about = json.loads(summary.read_text())
        bpd = about.get("log_likelihood_bits_per_dim")
        if bpd and "log_likelihood" in values:  # discrete pixels: -log2 p(x) per dimension
            dims = round(-about["log_likelihood"]["mean"] / (bpd * math.log(2)))
            values["bits_per_dim"] = -values["log_likelihood"] / (dims * math.log(2))
        return cls(Path(run_dir).name, about, values, seed)


@dataclass(frozen=True)
class Cell:
    """A figure and its error (``spread``: a standard error, or with ``what`` another spread
    such as the standard deviation over seeds), with an optional second error ``also`` named
    ``also_what`` (the unpaired standard error beside a paired one)."""

    mean: float
    spread: float
    also: float | None = None
    also_what: str = ""
    signed: bool = False

    def text(self) -> str:
        small = [abs(v) for v in (self.spread, self.also) if v is not None and 0 < abs(v) < 0.005]
        d = 3 if not small else min(6, 2 - math.floor(math.log10(min(small))))  # two digits of the error
        out = f"{self.mean:{'+' if self.signed else ''}.{d}f} +- {self.spread:.{d}f}"
        return out + (f" ({self.also_what} {self.also:.{d}f})" if self.also is not None else "")


def mean_and_stderr(v: torch.Tensor) -> tuple[float, float]:
    """The mean of ``v`` and its standard error sd / sqrt(n) (nan for one value)."""
    n = v.numel()
    return float(v.mean()), float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan


def check_paired(a: Scored, b: Scored) -> None:
    """A PyrovaeError naming what differs when ``a`` and ``b`` did not score the same images."""
    for key in SAME_DATA:
        if a.about.get(key) != b.about.get(key):
            raise PyrovaeError(
                f"runs {a.name!r} and {b.name!r} did not score the same images ({key}: "
                f"{a.about.get(key)!r} against {b.about.get(key)!r}); evaluate both on the same split, "
                "limit and seed to pair them"
            )


def compare(runs: list[Scored], baseline: str | None = None) -> list[dict]:
    """One row per run: each figure's mean and standard error and, against the ``baseline`` run
    (by name; default the first), the paired mean difference with its standard error and the
    unpaired one beside it."""
    base = _pick({r.name: r for r in runs}, baseline)
    rows = []
    for run in runs:
        check_paired(run, base)
        row = {"run": run.name}
        for name, v in run.values.items():
            row[name] = Cell(*mean_and_stderr(v))
            if run is not base and name in base.values:
                unpaired = math.hypot(row[name].spread, mean_and_stderr(base.values[name])[1])
                diff = mean_and_stderr(v - base.values[name])
                row[f"{name} - {base.name}"] = Cell(*diff, unpaired, "unpaired", signed=True)
        rows.append(row)
    return rows


def _pick(named: dict, baseline: str | None):
    if baseline is None:
        return next(iter(named.values()))
    if baseline not in named:
        raise PyrovaeError(f"no run or group named {baseline!r}; the baseline is one of {list(named)}")
    return named[baseline]


def columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def _text(value) -> str:
    return value.text() if isinstance(value, Cell) else str(value)


def markdown(rows: list[dict]) -> str:
    cols = columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    lines += ["| " + " | ".join(_text(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def as_csv(rows: list[dict]) -> str:
    """One column per figure and part: mean, its error, and the second error where there is one."""
    cols = columns(rows)
    cells = [c for c in cols if any(isinstance(r.get(c), Cell) for r in rows)]
    extra = {c for c in cells if any(getattr(r.get(c), "also", None) is not None for r in rows)}
    head = [c for c in cols if c not in cells]
    head += [f"{c} {part}" for c in cells for part in ("mean", "error", "second error")[: 2 + (c in extra)]]
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(head)
    for r in rows:
        line = [r.get(c, "") for c in cols if c not in cells]
        for c in cells:
            cell = r.get(c)
            parts = (cell.mean, cell.spread, cell.also) if isinstance(cell, Cell) else ("", "", "")
            line += parts[: 2 + (c in extra)]
        w.writerow(line)
    return out.getvalue()


def latex(rows: list[dict]) -> str:
    cols = columns(rows)
    body = [" & ".join(_text(r.get(c, "")).replace("+-", r"$\pm$") for c in cols) + r" \\" for r in rows]
    head = " & ".join(c.replace("_", r"\_") for c in cols) + r" \\"
    return "\n".join([r"\begin{tabular}{" + "l" * len(cols) + "}", head, r"\hline", *body, r"\end{tabular}"])


def across_seeds(runs: list[Scored], groups: dict[str, str], baseline: str | None = None) -> list[dict]:
    """Runs of the same settings under different seeds (``groups``: each run's group, by run
    name), one row per group: each figure's mean over seeds of the run means with the standard
    deviation over seeds (what another seed would move it by), and against the ``baseline``
    group (default the first) the difference paired by seed and datapoint: per datapoint the
    difference averaged over the seeds both groups ran, its mean with the standard error over
    datapoints, and beside it the standard deviation over seeds of the per-seed differences."""
    members: dict[str, list[Scored]] = {}
    for run in runs:
        members.setdefault(groups[run.name], []).append(run)
    base_label = baseline if baseline is not None else next(iter(members))
    base = {r.seed: r for r in _pick(members, base_label)}
    rows = []
    for label, group in members.items():
        row = {"run": label, "seeds": len(group)}
        for name in group[0].values:
            means = torch.tensor(
                [float(m.values[name].mean()) for m in group if name in m.values], dtype=torch.float64
            )
            sd = float(means.std(unbiased=True)) if len(means) > 1 else math.nan
            row[f"{name} (sd over seeds)"] = Cell(float(means.mean()), sd)
            pairs = [(m, base[m.seed]) for m in group if m.seed in base and name in base[m.seed].values]
            if label == base_label or not pairs:
                continue
            for a, b in pairs:
                check_paired(a, b)
            d = torch.stack([a.values[name] - b.values[name] for a, b in pairs])
            per_seed = d.mean(1)
            seed_sd = float(per_seed.std(unbiased=True)) if len(pairs) > 1 else math.nan
            mean, se = mean_and_stderr(d.mean(0))
            row[f"{name} - {base_label}"] = Cell(mean, se, seed_sd, "sd over seeds", signed=True)
        rows.append(row)
    return rows


def figure(rows: list[dict], name: str = "log_likelihood", path: str | Path = "compare.png") -> Path:
    """Each row's ``name`` with its interval (1.96 standard errors, or across seeds 1.96
    standard deviations over seeds), one line per row."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    key = next((k for k in columns(rows) if k == name or k.startswith(f"{name} (")), name)
    shown = [r for r in rows if isinstance(r.get(key), Cell)]
    fig = Figure(figsize=(6, 0.8 + 0.4 * len(shown)))
    ax = fig.add_subplot()
    for i, r in enumerate(shown):
        ax.errorbar(r[key].mean, i, xerr=1.96 * r[key].spread, fmt="o", capsize=3)
    ax.set_yticks(range(len(shown)), [r["run"] for r in shown])
    ax.xaxis.set_major_locator(MaxNLocator(5))
    spread = "the sd over seeds" if "sd over seeds" in key else "the standard error"
    ax.set_xlabel(f"{name}: mean, bars 1.96 x {spread}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def expand(paths: list[str]) -> tuple[list[str], dict[str, str]]:
    """Run folders (a sweep directory stands for its runs) and each run's group by folder name:
    its sweep settings less the seed (``latent_dim=10``), or outside a sweep its folder name."""
    runs, groups = [], {}
    for p in map(Path, paths):
        if not SweepDir(p).exists():
            runs.append(str(p))
            groups[p.name] = p.name
            continue
        for run in SweepDir(p).runs():
            runs.append(str(p / run.name))
            groups[run.name] = (
                ",".join(part for part in run.name.split(",") if not part.startswith("seed=")) or "all"
            )
    return runs, groups


def study(paths: list[str], split: str = "test", baseline: str | None = None) -> list[dict]:
    """The table of ``pyrovae compare PATHS``: one row per run (:func:`compare`), or where runs
    share their settings under several seeds one row per group (:func:`across_seeds`)."""
    runs, groups = expand(paths)
    scored = [Scored.load(r, split) for r in runs]
    if len(set(groups.values())) < len(groups):
        return across_seeds(scored, groups, baseline)
    return compare(scored, baseline)
