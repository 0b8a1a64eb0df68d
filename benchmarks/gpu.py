"""The GPU programme in one command: every stage under its own time budget, one short table.

Stages, in order of value (benchmarks/gpu_families.py lists them): the tests that exercise CUDA
(``pytest -m on_cuda``); training speed (benchmarks/speed.py: plain loop, naive Pyro loop, pyrovae
and its compile modes) and a profile of one step (benchmarks/profile_step.py); the default VAE
trained, then evaluated at K = 5000 on the 10,000 test images against its matmul floor
(benchmarks/eval_speed.py); one torchrun rank against one process (benchmarks/torchrun_check.py);
AIS with its frozen schedule and BDMC beside IS (benchmarks/ais.py); then a short row of each model
family: flow guides (benchmarks/flows.py), proposals refined per datapoint (benchmarks/refine.py),
the objectives with their disentanglement metrics (benchmarks/disentanglement.py), the VQ-VAE and
its learned prior (benchmarks/vqvae.py, sample grids into OUT/figures), the deep hierarchical VAE
beside its one- and two-layer versions (benchmarks/ladder.py); with the time left, a sweep of
two workers on the one GPU (benchmarks/sweep.py). Run only when named: ``--only train``, the
IWAE-paper training rows side by side (benchmarks/iwae_paper.py); a family named alone with a
longer budget runs its full row (``--only ladder --budget ladder=330``). A
stage that overruns its budget has its processes stopped and is marked "cut"; what it printed
and wrote stays. Into OUT go ``gpu.md`` (the short table, rewritten after every stage and
printed last), ``tables.md`` (each stage's full tables), ``gpu.log`` (everything every stage
printed) and ``gpu.json``.

    bash benchmarks/gpu.sh OUT                 # on the GPU machine: installs the carried wheels, then this
    python benchmarks/gpu.py OUT [--only speed eval] [--budget speed=200] [--total 540]
    python benchmarks/gpu.py OUT --dry         # every stage on the CPU at toy sizes (the tests run this)
    bash benchmarks/gpu.sh OUT --only train    # the second programme: the IWAE-paper rows
    bash benchmarks/gpu.sh OUT --only ladder --budget ladder=330   # the full deep hierarchy
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gpu_families import STAGES, TOTAL  # benchmarks/ is on sys.path when run as a script
from gpu_stages import Context, Stage

ROOT = Path(__file__).resolve().parents[1]
LEAST = 15  #: a stage that would start with fewer seconds left (or less than its budget) is skipped


def _pump(stream, sinks, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)
        for sink in sinks:
            sink.write(line)
            sink.flush()


def run_script(script: str, timeout: float, log, cwd: Path = ROOT) -> tuple[str, str]:
    """Run ``script`` under bash in its own process group, echoing its output to ``log`` and
    stdout; past ``timeout`` seconds stop the whole group. Returns (status, output)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=_pump, args=(proc.stdout, [log, sys.stdout], lines), daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(timeout, 1))
        status = "ok" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        status = f"cut at {timeout:.0f} s"
    reader.join(timeout=10)
    return status, "".join(lines)


def environment(ctx: Context) -> dict:
    """Device, versions and time, read by a child process (the driver itself never touches CUDA)."""
    probe = (
        "import json, platform, sys, torch, pyro; c = torch.cuda.is_available(); print(json.dumps({"
        "'device': torch.cuda.get_device_name() if c else 'CPU (' + platform.machine() + ')', "
        "'cuda': torch.version.cuda if c else None, 'torch': torch.__version__, 'pyro': pyro.__version__, "
        "'python': platform.python_version(), 'cpus': __import__('os').cpu_count()}))"
    )
    out = subprocess.run([ctx.python, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    info = (
        json.loads(out.stdout)
        if out.returncode == 0
        else {"device": f"unknown ({out.stderr.strip()[-200:]})"}
    )
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return info


def render(ctx: Context, info: dict, rows: list[dict]) -> str:
    where = ", ".join(
        f"{k} {info[k]}" for k in ("cuda", "torch", "pyro", "python") if info.get(k) is not None
    )
    lines = [
        f"# pyrovae GPU run{' (dry: CPU, toy sizes)' if ctx.dry else ''}",
        "",
        f"Device: {info['device']}; {where}; {info.get('cpus', '?')} CPUs; {info['date']}.",
        f"Command: `{ctx.command}`",
        "",
        "| stage | status | seconds (budget) | result |",
        "| --- | --- | ---: | --- |",
    ]
    for r in rows:
        budget = "rest" if r["budget"] is None else f"{r['budget']:.0f}"
        lines.append(f"| {r['title']} | {r['status']} | {r['seconds']:.0f} ({budget}) | {r['result']} |")
    return "\n".join(lines) + "\n"


def run_stage(ctx: Context, stage: Stage, index: int, log) -> dict:
    timeout = ctx.left() if stage.budget is None else min(stage.budget, ctx.left())
    row = {"name": stage.name, "title": f"{index}. {stage.title}", "budget": stage.budget, "seconds": 0.0}
    if ctx.left() < (LEAST if stage.budget is None else min(LEAST, stage.budget)):
        return {**row, "status": "skipped: total budget spent", "result": ""}
    script = stage.script(ctx, timeout)
    header = f"\n{'=' * 20} {row['title']} (budget {timeout:.0f} s) {'=' * 20}\n{script}\n"
    log.write(header)
    sys.stdout.write(header)
    with open(ctx.out / "tables.md", "a") as tables:
        tables.write(f"\n## {row['title']}\n")
    start = time.monotonic()
    status, output = run_script(script, timeout, log)
    row.update(status=status, seconds=time.monotonic() - start)
    try:
        row["result"] = stage.summary(ctx, output).replace("|", "/").replace("\n", " ")
    except Exception as e:  # a summary never stops the run: the log holds the output
        row["result"] = f"no summary ({type(e).__name__}: {e})"
    return row


def main(argv: list[str] | None = None) -> int:
    stages = STAGES
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="folder for gpu.md, tables.md, gpu.log and gpu.json")
    p.add_argument("--dry", action="store_true", help="every stage on the CPU at toy sizes")
    p.add_argument("--only", nargs="+", choices=[s.name for s in stages], help="run only these stages")
    p.add_argument("--budget", nargs="+", default=[], metavar="STAGE=SECONDS", help="override budgets")
    p.add_argument("--total", type=float, default=TOTAL, help="seconds for all stages together")
    p.add_argument("--work", type=Path, help="runs and intermediate files (default: OUT/../gpu-work)")
    a = p.parse_args(argv)
    budgets = {}
    for item in a.budget:
        name, _, seconds = item.partition("=")
        if name not in {s.name for s in stages} or not seconds.replace(".", "", 1).isdigit():
            p.error(f"--budget {item!r}: write STAGE=SECONDS with a stage of {[s.name for s in stages]}")
        budgets[name] = float(seconds)
    a.out.mkdir(parents=True, exist_ok=True)
    work = a.work or a.out.resolve().parent / f"{a.out.name}-work"
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError:  # OUT's parent is not ours to write
        work = Path(tempfile.mkdtemp(prefix="pyrovae-gpu-"))
    ctx = Context(a.out, work, a.dry, math.inf)
    ctx.command = "bash benchmarks/gpu.sh OUT " + " ".join(sys.argv[2:] if argv is None else argv[1:])
    (a.out / "tables.md").write_text("")
    info = environment(ctx)
    ctx.deadline = time.monotonic() + a.total  # the stages' time starts after the probe
    rows: list[dict] = []
    chosen = [s for s in stages if (s.default if a.only is None else s.name in a.only)]
    with open(a.out / "gpu.log", "w") as log:
        for stage in chosen:
            i = [s.name for s in stages].index(stage.name) + 1
            if stage.name in budgets:
                stage = dataclasses.replace(stage, budget=budgets[stage.name])
            rows.append(run_stage(ctx, stage, i, log))
            (a.out / "gpu.md").write_text(render(ctx, info, rows))
            (a.out / "gpu.json").write_text(json.dumps({"environment": info, "stages": rows}, indent=1))
    print("\n" + (a.out / "gpu.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
