"""What ``import pyrovae`` costs: seconds (median of fresh processes) and what it loads, for
one or more source trees side by side, in alternation, in one run.

Statements timed, each in a fresh interpreter: ``import pyrovae``; ``pyrovae.fit`` (the
training loop and what it needs); ``pyrovae.estimators.log_likelihood``. For each, the number of
pyrovae modules loaded and whether torch, matplotlib, arviz and AIS are among them.

    python benchmarks/import_time.py [--tree OLD_CHECKOUT --tree installed] [--repeats 7] [--append FILE]

A ``--tree`` is a checkout whose ``pyrovae/`` package is imported instead of the installed one
(``installed``, the default; see ``report.in_checkout``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess

from report import emit_table, in_checkout  # benchmarks/ is on sys.path when run as a script

STATEMENTS = {
    "import pyrovae": "import pyrovae",
    "pyrovae.fit": "import pyrovae; pyrovae.fit",
    "pyrovae.estimators.log_likelihood": "import pyrovae; pyrovae.estimators.log_likelihood",
}
PROBE = """
import sys, time, json
t0 = time.perf_counter()
{statement}
seconds = time.perf_counter() - t0
mods = set(sys.modules)
print(json.dumps({{
    "seconds": seconds,
    "pyrovae": sum(m.startswith("pyrovae") for m in mods),
    "torch": "torch" in mods, "matplotlib": "matplotlib" in mods, "arviz": "arviz" in mods,
    "ais": any(m.endswith(".ais") and m.startswith("pyrovae") for m in mods),
}}))
"""


def once(tree: str | None, statement: str) -> dict:
    cmd = in_checkout(tree, ["-c", PROBE.format(statement=statement)])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tree", action="append", help="a checkout to import pyrovae from, or installed (repeatable)"
    )
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--append")
    a = p.parse_args()
    trees = a.tree or ["installed"]
    runs: dict = {}
    for _ in range(a.repeats):  # alternate trees and statements, so that load drifts hit all alike
        for tree in trees:
            for name, statement in STATEMENTS.items():
                runs.setdefault((tree, name), []).append(once(tree, statement))
    lines = [
        "| tree | statement | median s | pyrovae modules | torch | matplotlib | arviz | AIS |",
        "|---|---|---:|---:|---|---|---|---|",
    ]
    for (tree, name), rs in runs.items():
        last = rs[-1]
        flags = [("yes" if last[k] else "no") for k in ("torch", "matplotlib", "arviz", "ais")]
        median = statistics.median(r["seconds"] for r in rs)
        row = f"| {tree} | `{name}` | {median:.3f} | {last['pyrovae']} | "
        lines.append(row + " | ".join(flags) + " |")
    device = (
        f"cpu ({platform.machine()}), Python {platform.python_version()}; median of {a.repeats} fresh "
        "processes per row, the trees in alternation"
    )
    trees_args = "".join(f" --tree {t}" for t in a.tree or [])
    emit_table(device, f"python benchmarks/import_time.py{trees_args} --repeats {a.repeats}", lines, a.append)


if __name__ == "__main__":
    main()
