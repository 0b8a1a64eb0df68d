"""The same numbers from two checkouts: ``pyrovae fit`` and ``pyrovae evaluate`` run with each
checkout's pyrovae (fixed threads, the same seed), then the metrics rows, the trained
parameters and the evaluation figures are compared to the last bit.

    python benchmarks/same_numbers.py --tree OLD_CHECKOUT --tree installed [--epochs 1] [--limit 1000] [--ais]

A checkout's pyrovae replaces the installed one (``installed``: that one; see
``report.in_checkout``); every run gets ``--threads 2`` (the threads change
the last bits of a float sum, so a comparison fixes them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import torch
from report import in_checkout  # benchmarks/ is on sys.path when run as a script

TIMES = {"seconds", "threads", "wall"}  #: keys that are measured, not computed


def pyrovae(tree: str, *args: str) -> str:
    cmd = in_checkout(tree, ["-m", "pyrovae", *args, "--threads", "2", "--no-progress"])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {tree}:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def strip(value):
    """A result without its measured times, for comparison."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def run(tree: str, where: Path, a) -> dict:
    config = Path(__file__).resolve().parents[1] / "configs" / "mnist_vae.toml"
    sets = [f"train.epochs={a.epochs}", f"data.test_limit={a.limit}"]
    pyrovae(tree, "fit", str(config), "--run-dir", str(where), *(x for s in sets for x in ("--set", s)))
    annealed = ["--method", "ais", "--steps", "20", "--chains", "4", "--bdmc", "20"] if a.ais else []
    pyrovae(tree, "evaluate", str(where), "--num-samples", str(a.num_samples), *annealed)
    rows = [json.loads(line) for line in (where / "metrics.jsonl").read_text().splitlines()]
    state = torch.load(where / "best.pt", weights_only=True)
    return {
        "rows": strip(rows),
        "params": {**state["model"], **{f"guide.{k}": v for k, v in state["guide"].items()}},
        "eval": strip(json.loads((where / "eval_test.json").read_text())),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", required=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, default=1000, help="test images evaluated")
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--ais", action="store_true", help="also AIS (T = 20, 4 chains) and BDMC on 20 datapoints")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {t: run(t, Path(tmp) / f"run{i}", a) for i, t in enumerate(a.tree)}
    first, *others = a.tree
    ref = results[first]
    print(f"| checkout | metrics rows | parameters | evaluation | test log p(x) (first {a.limit}) |")
    print("|---|---|---|---|---|")
    for t in a.tree:
        r = results[t]
        same_params = r["params"].keys() == ref["params"].keys() and all(
            torch.equal(r["params"][k], ref["params"][k]) for k in ref["params"]
        )
        ll = r["eval"]["log_likelihood"]
        shared = {k: v for k, v in ref["eval"].items() if k in r["eval"]}  # a newer checkout may add keys
        rows = "identical" if r["rows"] == ref["rows"] else "DIFFER"
        params = "bitwise equal" if same_params else "DIFFER"
        figures = "identical" if {k: r["eval"][k] for k in shared} == shared else "DIFFER"
        print(f"| {t} | {rows} | {params} | {figures} | {ll['mean']!r} +- {ll['stderr']!r} |")
    if others and any(results[t]["eval"]["log_likelihood"] != ref["eval"]["log_likelihood"] for t in others):
        raise SystemExit("the checkouts disagree")


if __name__ == "__main__":
    main()
