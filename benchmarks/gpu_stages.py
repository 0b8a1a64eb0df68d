"""The first stages of benchmarks/gpu.py (tests, speed, evaluation, torchrun, AIS, the IWAE
training rows) and what every stage shares: what each runs (GPU sizes, or toy sizes with --dry)
and the one cell of the short table that it reports. The model families' stages and the list of
stages are in benchmarks/gpu_families.py."""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SPEED_ROWS = ["plain", "naive", "pyrovae", "pyrovae:none", "pyrovae:cudagraphs", "pyrovae:inductor"]
IWAE_ROWS = [(1, "vae", 1), (1, "iwae", 5), (1, "iwae", 50)]  #: trained side by side in the last stage
EVAL_MARGIN = 75  #: seconds the last stage keeps for evaluating its rows after training (GPU)
TARGETS = {"fit_vs_plain": 1.5, "naive_vs_fit": 10.0, "eval_seconds": 10.0, "eval_vs_floor": 1.5}


@dataclass
class Context:
    """Where a run writes, on what device, at which sizes, and how much time it has left."""

    out: Path
    work: Path
    dry: bool
    deadline: float
    python: str = sys.executable
    command: str = ""

    @property
    def device(self) -> str:
        return "cpu" if self.dry else "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def py(self, *args: str) -> str:
        """A shell command line running this Python on ``args``."""
        return shlex.join([self.python, *map(str, args)])


@dataclass
class Stage:
    name: str
    title: str
    budget: float | None  #: seconds; None: whatever is left
    script: Callable[[Context, float], str]  #: (context, seconds it may take) -> bash script
    summary: Callable[[Context, str], str]  #: (context, what it printed) -> the table's cell
    default: bool = True  #: False: runs only when named (--only), as a programme of its own


def _met(ok: bool) -> str:
    return "met" if ok else "missed"


def _read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _script_with_json(ctx: Context, script: str, name: str, *args) -> str:
    """``script`` on the run's device writing its figures to WORK/``name`` (removed first) and
    appending its table to OUT/tables.md."""
    out = ctx.work / name
    tail = ["--device", ctx.device, *args, "--json", out, "--append", ctx.out / "tables.md"]
    return f"rm -f {out}\n" + ctx.py(script, *tail)


# ------------------------------------------------------------------ 1. tests that exercise CUDA


def tests_script(ctx: Context, seconds: float) -> str:
    select = (
        ["-m", "on_cpu", "tests/test_ais.py", "tests/test_estimators.py"] if ctx.dry else ["-m", "on_cuda"]
    )
    # a test file that imports what the image lacks (nbformat, say) must not stop the others
    return ctx.py("-m", "pytest", "-v", "-p", "no:cacheprovider", "--continue-on-collection-errors", *select)


def tests_summary(ctx: Context, output: str) -> str:
    outcomes = re.findall(r"^(tests/\S+) (PASSED|FAILED|ERROR)", output, re.M)
    counts = {k: sum(o == k for _, o in outcomes) for k in ("PASSED", "FAILED", "ERROR")}
    bad = [name.split("::", 1)[-1] for name, o in outcomes if o != "PASSED"]
    cell = f"{counts['PASSED']} passed, {counts['FAILED']} failed, {counts['ERROR']} errors"
    cell += f"; failing: {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}" if bad else ""
    uncollected = sorted(set(re.findall(r"^ERROR (tests/\S+\.py)\b(?!::)", output, re.M)))
    return cell + (f"; not collected: {', '.join(uncollected)}" if uncollected else "")


# ------------------------------------------------------------------ 2. training speed


#: speed.py's timing windows: steps per window, windows, warm-up steps
SPEED_WINDOWS = {
    "gpu": ["--steps", "25", "--repeats", "4", "--warmup", "25"],
    "dry": ["--steps", "2", "--repeats", "2", "--warmup", "2"],
}


def speed_script(ctx: Context, seconds: float) -> str:
    jsonl = ctx.work / "speed.jsonl"
    if ctx.dry:
        common = ["--device", "cpu", *SPEED_WINDOWS["dry"], "--nets", "examples"]
        runs = [["--batches", "32", "--rows", "plain", "naive", "pyrovae"]]
    else:
        common = ["--device", "cuda", *SPEED_WINDOWS["gpu"]]
        runs = [  # the rows of the targets first; the compiled modes' cold compiles last
            ["--batches", b, "--rows", *rows]
            for rows in (SPEED_ROWS[:4], SPEED_ROWS[4:])
            for b in ("128", "1024")
        ]
    lines = [f"rm -f {jsonl}"]
    lines += [ctx.py("benchmarks/speed.py", *common, *run, "--jsonl", jsonl) for run in runs]
    return "\n".join(lines)


def speed_summary(ctx: Context, output: str) -> str:
    import speed  # torch is imported only once a stage has run

    path = ctx.work / "speed.jsonl"
    results = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    groups: dict[tuple, dict] = {}
    for r in results:
        groups.setdefault((r["net"], r["batch"]), {})[r["row"]] = r
    table = list(speed.TABLE_HEADER)
    cells = []
    for (net, batch), rows in sorted(groups.items()):
        table += speed.table_rows(net, batch, rows)
        step = {name: r["seconds_per_step"] for name, r in rows.items() if "error" not in r}
        if {"plain", "pyrovae"} <= step.keys():
            ratio = step["pyrovae"] / step["plain"]
            cell = f"{net} {batch}: fit {ratio:.2f}x plain"
            if batch == 128:
                cell += f" (target <= 1.5: {_met(ratio <= TARGETS['fit_vs_plain'])})"
            if "naive" in step:
                faster = step["naive"] / step["pyrovae"]
                cell += f", {faster:.1f}x faster than naive"
                if batch == 128:
                    cell += f" (target >= 10: {_met(faster >= TARGETS['naive_vs_fit'])})"
            cells.append(cell)
    failed = [f"{r['net']} {r['batch']} {r['row']}" for r in results if "error" in r]
    devices = sorted({r["device"] for r in results if "device" in r})
    windows = " ".join(SPEED_WINDOWS["dry" if ctx.dry else "gpu"])
    with open(ctx.out / "tables.md", "a") as f:
        f.write(f"\nDevice: {', '.join(devices)}. Command: `python benchmarks/speed.py {windows}` ")
        f.write("(networks, batches and rows as in gpu.log)\n\n" + "\n".join(table) + "\n")
    return "; ".join(cells + ([f"failed: {', '.join(failed)}"] if failed else [])) or "no rows"


def profile_script(ctx: Context, seconds: float) -> str:
    sizes = ["--batch", "32", "--steps", "2", "--warmup", "2"] if ctx.dry else ["--batch", "128"]
    return _script_with_json(ctx, "benchmarks/profile_step.py", "profile.json", *sizes)


def profile_summary(ctx: Context, output: str) -> str:
    r = _read(ctx.work / "profile.json")
    if r is None:
        return "no profile"
    part = (
        "{0}: {1[launches_per_step]:.0f} kernel launches, {1[graph_launches_per_step]:.0f} graph launches, "
    )
    part += "{1[syncs_per_step]:.1f} host syncs, {1[aten_ops_per_step]:.0f} ATen ops per step"
    return "; ".join(part.format(name, v) for name, v in r.items())


# ------------------------------------------------------------------ 3. evaluation at K = 5000


def eval_script(ctx: Context, seconds: float) -> str:
    run = ctx.work / "mnist_vae"
    sizes = ["train.epochs=1", "data.train_size=256", "data.val_limit=64", "data.test_limit=64"]
    fit = ["-m", "pyrovae", "fit", "configs/mnist_vae.toml", "--device", ctx.device, "--run-dir", run]
    fit += ["--no-progress"] + [f for s in (sizes if ctx.dry else []) for f in ("--set", s)]
    speed = ["benchmarks/eval_speed.py", "--run", run, "--json", ctx.work / "eval.json"]
    speed += ["--num-samples", "16" if ctx.dry else "5000", "--append", ctx.out / "tables.md"]
    return "set -e\n" + ctx.py(*fit) + "\n" + ctx.py(*speed)


def eval_summary(ctx: Context, output: str) -> str:
    r = _read(ctx.work / "eval.json")
    if r is None:
        return "no evaluation"
    ll, ratio = r["log_likelihood"], r["seconds"] / r["floor_seconds"]
    seconds = f"{r['seconds']:.1f} s (target < 10: {_met(r['seconds'] < TARGETS['eval_seconds'])})"
    floor = f"{ratio:.2f}x the matmul floor of {r['floor_seconds']:.2f} s at {r['matmul_gflops']:.0f} GFLOP/s"
    floor += f" (target <= 1.5: {_met(ratio <= TARGETS['eval_vs_floor'])})"
    estimate = f"log p(x) {ll['mean']:.2f} +- {ll['stderr']:.2f}"
    return f"{r['images']} images, K = {r['k']}: {seconds}, {floor}; {estimate}"


# ------------------------------------------------------------------ 4. torchrun


def torchrun_script(ctx: Context, seconds: float) -> str:
    sizes = ["--steps", "20", "--limit", "16", "--num-samples", "4"] if ctx.dry else []
    return _script_with_json(ctx, "benchmarks/torchrun_check.py", "torchrun.json", *sizes)


def torchrun_summary(ctx: Context, output: str) -> str:
    r = _read(ctx.work / "torchrun.json")
    if r is None:
        return "no comparison"
    return (
        f"{'agree' if r['agree'] else 'DIFFER'} ({r['backend']}): "
        f"losses rel. diff <= {r['max_loss_rel_diff']:.1e}, "
        f"params <= {r['max_param_abs_diff']:.1e}, log p(x) {r['log_likelihood'][0]:.4f} / "
        f"{r['log_likelihood'][1]:.4f}"
    )


# ------------------------------------------------------------------ 5. AIS and BDMC


def ais_script(ctx: Context, seconds: float) -> str:
    if ctx.dry:
        sizes = "--limit 4 --steps 3 --chains 2 --bdmc 2 --is-samples 8"
    else:  # the frozen schedule's rows: fewer images when the stage is short
        images, bdmc = ("1000", "100") if seconds >= 80 else ("300", "30")
        sizes = f"--limit {images} --steps 1000 --chains 16 --bdmc {bdmc} --is-samples 5000"
    run = ctx.work / "mnist_vae"
    return ctx.py("benchmarks/ais.py", "--run", run, *sizes.split(), "--append", ctx.out / "tables.md")


def ais_summary(ctx: Context, output: str) -> str:
    """One cell per row of benchmarks/ais.py (printed as it goes and again in its table)."""
    cells = {}
    for name, mean, se, seconds in re.findall(
        r"^\| ((?:IS|AIS)[^|]*?) \| (\S+) \| (\S+) \| (\S+) \|", output, re.M
    ):
        cells[name] = f"{name.split(' (')[0]}: {float(mean):.2f} +- {float(se):.2f} ({float(seconds):.0f} s)"
    bdmc = r"^\| (\d+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| (\S+) \|$"
    for t, lower, upper, gap, _, seconds in re.findall(bdmc, output, re.M):
        bounds = f"{lower.strip()} to {upper.strip()}, gap {gap.strip()}"
        cells[t] = f"BDMC T = {t}: {bounds} ({float(seconds):.0f} s)"
    return "; ".join(cells.values()) or "no rows"


# ------------------------------------------------------------------ 6. training rows, side by side


def train_script(ctx: Context, seconds: float) -> str:
    if ctx.dry:
        rows, budget = IWAE_ROWS[:2], ["--epochs", "1", "--eval-samples", "4", "--set"]
        budget += ["data.train_size=100", "data.val_limit=20", "data.test_limit=20"]
    else:
        minutes = max(seconds - EVAL_MARGIN, 0) / 60
        rows, budget = IWAE_ROWS, ["--minutes", f"{minutes:.2f}"]
    jobs = []
    for layers, kind, k in rows:
        args = ["--layers", layers, "--kind", kind, "--k", k, "--device", ctx.device]
        args += ["--run-dir", ctx.work / f"iwae_{layers}_{kind}_{k}", "--append", ctx.out / "tables.md"]
        jobs.append(ctx.py("benchmarks/iwae_paper.py", *args, *budget) + " &")
    return "\n".join([*jobs, "wait"])


def train_summary(ctx: Context, output: str) -> str:
    pattern = r"^\| (\d) \| (VAE|IWAE) \| (\d+) \| (\d+) \| (\S+) \| ([^|]+) \| [^|]+ \| ([^|]+) \|"
    return (
        "; ".join(
            f"{layers}-layer {kind} k = {k}: {epochs} epochs in {minutes} min, -log p(x) {nll.strip()} "
            f"(paper {paper.strip()})"
            for layers, kind, k, epochs, minutes, nll, paper in re.findall(pattern, output, re.M)
        )
        or "no rows"
    )
