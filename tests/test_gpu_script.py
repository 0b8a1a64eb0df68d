"""The GPU programme (benchmarks/gpu.sh) in its dry mode: every stage on the CPU at toy sizes, the
table and logs it leaves, a stage cut at its budget, and a spent total budget."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def gpu_sh(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(out), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def stages(out: Path) -> dict[str, dict]:
    return {s["name"]: s for s in json.loads((out / "gpu.json").read_text())["stages"]}


def test_the_dry_run_runs_every_stage_and_leaves_one_table(tmp_path):
    out = tmp_path / "out"
    proc = gpu_sh(out, "--dry")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # what comes back from the GPU machine: a few plain files and the VQ-VAE's sample grids
    assert sorted(p.name for p in out.iterdir()) == ["figures", "gpu.json", "gpu.log", "gpu.md", "tables.md"]
    table = (out / "gpu.md").read_text()
    assert proc.stdout.rstrip().endswith(table.rstrip())  # the table is the last thing printed
    s = stages(out)
    assert list(s) == [
        *("tests", "speed", "profile", "eval", "torchrun", "ais"),
        *("flows", "refine", "objectives", "vqvae", "ladder", "sweep"),
    ]
    assert all(r["status"] == "ok" for r in s.values()), s
    assert s["tests"]["result"].startswith("5 passed, 0 failed, 0 errors")
    assert "examples 32: fit" in s["speed"]["result"] and "faster than naive" in s["speed"]["result"]
    assert "host syncs" in s["profile"]["result"]
    assert s["eval"]["result"].startswith("64 images, K = 16:") and "matmul floor" in s["eval"]["result"]
    # one rank inside a process group (Gloo on the CPU) equals no process group, draw for draw
    assert s["torchrun"]["result"].startswith("agree (gloo)")
    assert "AIS, T = 3" in s["ais"]["result"] and "BDMC T = 3" in s["ais"]["result"]
    assert [c.split(":")[0] for c in s["flows"]["result"].split("; ")] == ["none", "iaf"]
    assert s["refine"]["result"].startswith("q(z/x): -") and "refined by 2 steps: -" in s["refine"]["result"]
    assert [c.split(":")[0] for c in s["objectives"]["result"].split("; ")] == ["VAE", "beta-TCVAE"]
    assert s["vqvae"]["result"].startswith("binary: uniform -") and ", learned -" in s["vqvae"]["result"]
    assert [c.split(":")[0] for c in s["ladder"]["result"].split("; ")] == ["vae-w32", "vae2-w32", "ladder"]
    assert s["sweep"]["result"].startswith("2 workers x 1 thread (local): ")
    assert "log p(x) iwae - elbo, paired: +" in s["sweep"]["result"] or "paired: -" in s["sweep"]["result"]
    for stage in s.values():
        assert f"| {stage['title']} | ok |" in table
    tables = (out / "tables.md").read_text()
    headings = ["| network | batch | loop |", "| images | K | chunk rows |", "| BDMC, T |"]
    headings += ["| guide | ELBO |", "| proposal | mean log p(x) |", "| objective | MIG |"]
    headings += ["KL per layer of ladder"]
    for heading in headings:
        assert heading in tables
    grids = sorted(p.name for p in (out / "figures").iterdir())
    assert grids == ["vqvae_binary_learned.png", "vqvae_binary_uniform.png"]
    log = (out / "gpu.log").read_text()
    assert "5 passed" in log and all(f"= {stage['title']} (budget" in log for stage in s.values())


def test_a_stage_past_its_budget_is_cut_and_a_spent_total_skips_the_rest(tmp_path):
    out = tmp_path / "out"
    budgets = ["--budget", "speed=4", "profile=5", "--total", "12"]
    proc = gpu_sh(out, "--dry", "--only", "speed", "profile", "train", *budgets)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = stages(out)
    assert s["speed"]["status"] == "cut at 4 s" and s["speed"]["seconds"] < 20
    assert not s["profile"]["status"].startswith("skipped")  # the run goes on after a cut stage
    assert s["train"]["status"] == "skipped: total budget spent"
    assert "2. Training speed" in (out / "gpu.log").read_text()  # what the cut stage printed stays


def run_named(tmp_path, name: str) -> tuple[Path, str]:
    """``gpu.sh --dry --only name`` in ``tmp_path``: its OUT and the one stage's cell, which ran alone."""
    out = tmp_path / "out"
    proc = gpu_sh(out, "--dry", "--only", name)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = stages(out)
    assert list(s) == [name] and s[name]["status"] == "ok", s
    return out, s[name]["result"]


def test_the_iwae_training_rows_run_when_named(tmp_path):
    """The IWAE-paper rows run only under --only: two rows, trained side by side, in the cell."""
    out, result = run_named(tmp_path, "train")
    assert result.count("epochs in") == 2
    assert "| 13. IWAE training rows | ok |" in (out / "gpu.md").read_text()


def test_budget_overrides_name_the_stages():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "/tmp/unused", "--budget", "sped=3"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "STAGE=SECONDS" in proc.stderr and "'speed'" in proc.stderr
    usage = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: bash benchmarks/gpu.sh OUT" in usage.stderr


def test_a_failing_speed_combination_is_recorded_and_the_rest_still_run(tmp_path):
    jsonl = tmp_path / "speed.jsonl"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--device", "cpu", "--nets", "examples"]
    cmd += ["--batches", "8", "--rows", "plain", "pyrovae", "--steps", "1", "--repeats", "1", "--warmup", "1"]
    cmd += ["--data-root", str(tmp_path / "nothing here"), "--jsonl", str(jsonl)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["row"] for r in rows] == ["plain", "pyrovae"]
    assert all("error" in r and r["error"] for r in rows)
    assert "| examples | 8 | plain | failed:" in proc.stdout


@pytest.mark.parametrize("script", ["gpu.sh", "gpu_prepare.sh", "gpu_rehearse.sh"])
def test_the_shell_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)]).returncode == 0


def test_the_readme_lists_the_stages_and_budgets_the_script_runs():
    import importlib
    import re

    sys.path.insert(0, str(ROOT / "benchmarks"))  # gpu_families imports gpu_stages as the script does
    try:
        module = importlib.import_module("gpu_families")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    readme = (ROOT / "docs" / "guide" / "gpu.md").read_text()
    listed = re.findall(r"^\| (\d+)\. ([^|]+?) \| (\d+|the rest) \|", readme, re.M)
    expected = [
        (str(i), "rest" if s.budget is None else str(int(s.budget))) for i, s in enumerate(module.STAGES, 1)
    ]
    assert [(n, b.replace("the rest", "rest")) for n, _, b in listed] == expected
    assert f"on {module.TOTAL} in all" in readme
    default = [s for s in module.STAGES if s.default]
    assert sum(s.budget for s in default if s.budget) < module.TOTAL  # the last stage gets the rest
    assert all(s.budget < module.TOTAL for s in module.STAGES if not s.default)  # a programme of its own
