"""The results page's plots, drawn when the site is built from what the pages and the repository
already hold, so a plot cannot disagree with its table: the training curves of the main
command's run (``benchmarks/figures/mnist_vae_metrics.jsonl``), the speed ratios of the
results page's table, the IS and AIS estimates of the AIS page's table, and the sweep of the
sweeps page's table."""

from __future__ import annotations

import json
import re
from pathlib import Path

from matplotlib.figure import Figure

from pyrovae.diagnostics.plots import plot_curves


def table(page: Path, header: str) -> list[list[str]]:
    """The body rows (cells stripped) of the markdown table whose header row starts with ``header``."""
    lines = page.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _number(cell: str) -> float:
    return float(re.match(r"-?[\d.]+", cell.replace("`", "").strip()).group(0))


def speed(page: Path, path: Path) -> None:
    """Time per step as a multiple of a plain PyTorch loop, one group of bars per network and batch."""
    rows = table(page, "| network | batch | naive")
    labels = ["naive Pyro loop", "pyrovae fit (capture)", 'compile = "none"', 'compile = "inductor"']
    ax = Figure(figsize=(8, 3.6)).subplots()
    width = 0.2
    for j, label in enumerate(labels):
        ax.bar(
            [i + j * width for i in range(len(rows))], [_number(r[2 + j]) for r in rows], width, label=label
        )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([i + 1.5 * width for i in range(len(rows))])
    ax.set_xticklabels([f"{r[0].split(',')[0]}\nbatch {r[1]}" for r in rows], fontsize=8)
    ax.set_ylabel("time per step / plain PyTorch")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=100)


def importance_against_ais(page: Path, path: Path) -> None:
    """The mean log p(x) of each estimator of the AIS page's table, with its standard error."""
    rows = table(page, "| estimator | mean log p(x)")
    means = [_number(r[1]) for r in rows]
    errors = [_number(r[1].split("+-")[1]) for r in rows]
    ax = Figure(figsize=(6, 3.2)).subplots()
    ax.errorbar(range(len(rows)), means, yerr=errors, fmt="o", capsize=4)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r[0] for r in rows], fontsize=8)
    ax.set_ylabel("mean log p(x), nats")
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=100)


def sweep(page: Path, path: Path) -> None:
    """Each setting of the sweep page's table: its log p(x) over seeds, bars 1.96 sd over seeds."""
    rows = table(page, "| setting | seeds |")
    means = [_number(r[2]) for r in rows]
    spreads = [1.96 * _number(r[2].split("+-")[1]) for r in rows]
    ax = Figure(figsize=(6, 2.2)).subplots()
    ax.errorbar(means, range(len(rows)), xerr=spreads, fmt="o", capsize=4)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in rows])
    ax.set_xlabel("test log p(x), nats: mean over 3 seeds, bars 1.96 sd over seeds")
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=100)


def write_figures(root: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (root / "benchmarks/figures/mnist_vae_metrics.jsonl").open()]
    plot_curves(rows, out / "curves.png")
    speed(root / "docs" / "results.md", out / "speed.png")
    importance_against_ais(root / "docs" / "guide" / "ais.md", out / "is_ais.png")
    sweep(root / "docs" / "guide" / "studies.md", out / "sweep_compare.png")
