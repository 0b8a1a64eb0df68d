"""What the disentanglement metrics give codes that hold no structure, and a categorical factor
relabelled: the table behind the claims of docs/guide/diagnostics.md.

Codes: ``--seeds`` draws of ``--dims`` independent standard normals for every combination of three
factors (4, 5 and 6 values, three times over: 360 rows, factor 0 categorical). For each metric,
the smallest, median and largest value over the seeds, with DCI's importances from boosted trees
(the default) and from Lasso. Then one code that names factor 0's class in one dimension, scored
with factor 0's labels as they are and relabelled by a bijection, as a class and as a number.

    python benchmarks/metric_noise.py --seeds 20
"""

from __future__ import annotations

import argparse
import itertools
import platform

import numpy as np

from pyrovae.diagnostics.disentanglement import dci, factor_vae_score, mig, sap


def scores(codes, factors, importance: str, categorical=(0,)) -> dict[str, float]:
    d = dci(codes, factors, categorical, importance=importance).parts
    return {
        "MIG": mig(codes, factors).value,
        "DCI disentanglement": d["disentanglement"],
        "DCI completeness": d["completeness"],
        "DCI informativeness": d["informativeness"],
        "FactorVAE score (chance 1/3)": factor_vae_score(codes, factors, repeats=3).value,
        "SAP": sap(codes, factors, categorical).value,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--dims", type=int, default=6)
    a = p.parse_args()
    grid = np.array(list(itertools.product(range(4), range(5), range(6))) * 3)
    print(f"random codes, {a.seeds} seeds, {a.dims} dims, {len(grid)} rows ({platform.machine()})\n")
    print("| metric | trees: min / median / max | Lasso: min / median / max |")
    print("| --- | ---: | ---: |")
    runs = {imp: [] for imp in ("trees", "lasso")}
    for seed in range(a.seeds):
        codes = np.random.default_rng(seed).normal(size=(len(grid), a.dims))
        for imp in runs:
            runs[imp].append(scores(codes, grid, imp))
    for name in runs["trees"][0]:
        cells = []
        for imp in runs:
            v = np.array([r[name] for r in runs[imp]])
            cells.append(f"{v.min():.3f} / {np.median(v):.3f} / {v.max():.3f}")
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    rng = np.random.default_rng(3)
    codes = np.concatenate([grid + 0.2 * rng.normal(size=grid.shape), rng.normal(size=(len(grid), 2))], 1)
    relabelled = grid.copy()
    relabelled[:, 0] = np.array([2, 0, 3, 1])[grid[:, 0]]
    print("\n| factor 0 read as | labels | SAP | DCI disentanglement |")
    print("| --- | --- | ---: | ---: |")
    for kind, cat in (("a class", (0,)), ("a number", ())):
        for name, f in (("as drawn", grid), ("relabelled", relabelled)):
            s, d = sap(codes, f, cat).value, dci(codes, f, cat).value
            print(f"| {kind} | {name} | {s:.3f} | {d:.3f} |")


if __name__ == "__main__":
    main()
