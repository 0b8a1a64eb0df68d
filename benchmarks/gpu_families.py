"""The model families' stages of benchmarks/gpu.py (flow guides, refined proposals, the objectives,
the VQ-VAE, the deep hierarchy, a sweep of two workers on the one GPU) and the programme's list
of stages, :data:`STAGES`. A family's stage sizes itself to its budget: in the default programme a
short row of each, and named alone with a longer ``--budget`` the full one (the ladder and the
VQ-VAE: ``--only ladder --budget ladder=330``)."""

from __future__ import annotations

import re

from gpu_stages import (  # benchmarks/ is on sys.path when run as a script
    Context,
    Stage,
    ais_script,
    ais_summary,
    eval_script,
    eval_summary,
    profile_script,
    profile_summary,
    speed_script,
    speed_summary,
    tests_script,
    tests_summary,
    torchrun_script,
    torchrun_summary,
    train_script,
    train_summary,
)

TOTAL = 540  #: seconds for the default stages: with the installs before them, under 10 minutes
QUICK = 120  #: a family's stage with fewer seconds than this runs its short row


def _cells(pattern: str, output: str, cell) -> str:
    found = {m[0]: cell(*m) for m in re.findall(pattern, output, re.M)}
    return "; ".join(found.values()) or "no rows"  # a row printed as it goes and again in its table


# ------------------------------------------------------------------ 7. flow guides


def flows_script(ctx: Context, seconds: float) -> str:
    if ctx.dry:
        sizes = ["--epochs", "1", "--limit", "8", "--samples", "20", "--gap-points", "2", "--gap-steps", "2"]
        sizes += ["--set", "data.train_size=128", "data.val_limit=32"]
    else:
        sizes = ["--epochs", "3" if seconds < QUICK else "10", "--limit", "1000", "--samples", "1000"]
        sizes += ["--gap-points", "10", "--gap-steps", "200"]
    args = ["--flows", "none", "iaf", "--runs", ctx.work / "flows", "--device", ctx.device, *sizes]
    return ctx.py("benchmarks/flows.py", *args, "--append", ctx.out / "tables.md")


def flows_summary(ctx: Context, output: str) -> str:
    pattern = r"^\| mlp, flow = (\w+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|"
    return _cells(
        pattern, output, lambda f, elbo, lp, bad: f"{f}: log p(x) {lp.strip()}, k-hat > 0.7 {bad.strip()}"
    )


# ------------------------------------------------------------------ 8. refined proposals


def refine_script(ctx: Context, seconds: float) -> str:
    sizes = (
        "--limit 4 --samples 20 --steps 2 --ais-steps 3"
        if ctx.dry
        else "--limit 100 --samples 1000 --steps 100 --ais-steps 300"
    )
    return ctx.py(
        "benchmarks/refine.py",
        "--run",
        ctx.work / "mnist_vae",
        *sizes.split(),
        "--append",
        ctx.out / "tables.md",
    )


def refine_summary(ctx: Context, output: str) -> str:
    pattern = (
        r"^\| ((?:q\(z\|x\)|refined by \d+ steps|AIS)[^|]*?) \| (\S+) \+- \S+ \|(?:[^|]*\|){2} ([^|]*) \|"
    )
    return _cells(
        pattern,
        output,
        lambda label, mean, closed: (
            f"{label.split(',')[0]}: {mean}" + (f" ({closed.strip()} closed)" if closed.strip() else "")
        ),
    )


# ------------------------------------------------------------------ 9. the objectives

OBJECTIVE_ROWS = ["VAE", "beta-TCVAE (TC weight 6, stratified)", "FactorVAE (gamma 10, D 6 x 1000)"]
OBJECTIVE_ROWS += ["InfoVAE (alpha 0, lambda 100)", "WAE (lambda 10)"]


def objectives_script(ctx: Context, seconds: float) -> str:
    if ctx.dry:
        rows, sizes = OBJECTIVE_ROWS[:2], ["--epochs", "1", "--limit", "64", "--samples", "4", "--ais", "0"]
        sizes += ["--set", "data.train_size=128", "data.val_limit=32"]
    else:
        rows, sizes = OBJECTIVE_ROWS, ["--epochs", "2" if seconds < QUICK else "10", "--limit", "1000"]
        sizes += ["--samples", "1000", "--ais", "0"]
    args = ["--rows", *rows, "--runs", ctx.work / "objectives", "--device", ctx.device, *sizes]
    return ctx.py("benchmarks/disentanglement.py", *args, "--append", ctx.out / "tables.md")


def objectives_summary(ctx: Context, output: str) -> str:
    pattern = r"^\| ([^|]+?) \| ([\d.]+) \| [^|]+ \| [^|]+ \| [^|]+ \| [^|]+ \| ([^|]+) \|"
    return _cells(
        pattern, output, lambda label, mig, lp: f"{label.split(' (')[0]}: MIG {mig}, log p(x) {lp.strip()}"
    )


# ------------------------------------------------------------------ 10. the VQ-VAE and its prior

VQVAE_EVAL = 60  #: seconds the VQ-VAE stage keeps for scoring (exact bounds, one pass) and sampling


def vqvae_script(ctx: Context, seconds: float) -> str:
    if ctx.dry:
        sizes = ["--epochs", "1", "--prior-epochs", "1", "--modes", "binary", "--set", "data.train_size=128"]
        sizes += ["data.val_limit=32", "data.test_limit=32", "train.batch_size=32"]
    else:  # binary and 8-bit (binary alone when short), each an autoencoder then its prior
        keep = min(VQVAE_EVAL, seconds / 3)
        modes = ["--modes", "binary"] if seconds < QUICK else []
        minutes = max(seconds - keep, 20) / 60 / (2 if modes else 4)
        sizes = ["--epochs", "200", "--prior-epochs", "200", "--minutes", f"{minutes:.2f}", *modes]
    args = ["--runs", ctx.work / "vqvae", "--figures", ctx.out / "figures", "--device", ctx.device, *sizes]
    return ctx.py("benchmarks/vqvae.py", *args, "--append", ctx.out / "tables.md")


def vqvae_summary(ctx: Context, output: str) -> str:
    """One cell per pixel mode benchmarks/vqvae.py printed: its bounds with either prior."""
    pattern = r"^\| (binary|8bit) \| [^|]+ \| ([^|]+) \| ([^|]+) \|"
    return _cells(pattern, output, lambda m, u, v: f"{m}: uniform {u.strip()}, learned {v.strip()}")


# ------------------------------------------------------------------ 11. the deep hierarchical VAE

LADDER_ROWS = ["vae-w32", "vae2-w32", "ladder"]  #: benchmarks/ladder.py's rows of one width
LADDER_EVAL = 150  #: seconds the ladder stage keeps for scoring its rows (GPU)


def ladder_script(ctx: Context, seconds: float) -> str:
    if ctx.dry:
        sizes = ["--minutes", "0.01", "--epochs", "1", "--limit", "8", "--samples", "4"]
        sizes += ["--set", "data.train_size=128", "data.val_limit=32", "train.batch_size=32"]
    else:  # the rows one after another, each on a third of the training time
        keep, short = min(LADDER_EVAL, seconds / 3), seconds < QUICK
        minutes = max(seconds - keep, 15) / 60 / len(LADDER_ROWS)
        sizes = ["--minutes", f"{minutes:.2f}", "--limit", "200" if short else "2000"]
        sizes += ["--samples", "500" if short else "5000"]
    args = ["--rows", *LADDER_ROWS, "--runs", ctx.work / "ladder", "--device", ctx.device, *sizes]
    return ctx.py("benchmarks/ladder.py", *args, "--append", ctx.out / "tables.md")


def ladder_summary(ctx: Context, output: str) -> str:
    """One cell per row benchmarks/ladder.py printed: its training and test log p(x)."""
    pattern = r"^\| ([\w-]+) \| (\d+ epochs, [\d.]+ min) \| (\S+ \+- \S+) \|"
    return _cells(pattern, output, lambda name, trained, ll: f"{name}: {ll} ({trained})")


# ------------------------------------------------------------------ 12. a sweep, two workers on one GPU


def sweep_script(ctx: Context, seconds: float) -> str:
    args = ["--out", ctx.work / "sweep", "--only", "parallel", "--workers", "2", "--device", ctx.device]
    return ctx.py("benchmarks/sweep.py", *args, *(["--dry"] if ctx.dry else []), "--seeds", "2")


def sweep_summary(ctx: Context, output: str) -> str:
    timed = re.search(r"^\| parallel \| ([^|]+) \| (\S+) \|", output, re.M)
    if timed is None:
        return "no sweep"
    cell = f"{timed[1].strip()}: {float(timed[2]):.0f} s"
    lines = [line.strip().strip("|").split("|") for line in output.splitlines() if line.startswith("| ")]
    head = next((c for c in lines if "log_likelihood - objective=elbo" in "".join(c)), None)
    row = next((c for c in lines if c[0].strip() == "objective=iwae"), None)
    if head is not None and row is not None:
        column = [c.strip() for c in head].index("log_likelihood - objective=elbo")
        cell += f"; log p(x) iwae - elbo, paired: {row[column].strip()}"
    return cell


STAGES = [
    Stage("tests", "CUDA tests", 45, tests_script, tests_summary),
    Stage("speed", "Training speed", 80, speed_script, speed_summary),
    Stage("profile", "Profile of one step", 15, profile_script, profile_summary),
    Stage("eval", "Evaluation, K = 5000", 50, eval_script, eval_summary),
    Stage("torchrun", "One torchrun rank", 25, torchrun_script, torchrun_summary),
    Stage("ais", "AIS (frozen schedule) and BDMC", 40, ais_script, ais_summary),
    Stage("flows", "Flow guides", 40, flows_script, flows_summary),
    Stage("refine", "Refined proposals", 25, refine_script, refine_summary),
    Stage("objectives", "Objectives and disentanglement", 50, objectives_script, objectives_summary),
    Stage("vqvae", "VQ-VAE and its learned prior", 40, vqvae_script, vqvae_summary),
    Stage("ladder", "Deep hierarchical VAE", 40, ladder_script, ladder_summary),
    Stage("sweep", "Sweep, two workers on one GPU", None, sweep_script, sweep_summary),
    Stage("train", "IWAE training rows", 480, train_script, train_summary, default=False),
]
