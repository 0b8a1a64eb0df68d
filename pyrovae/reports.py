"""Reports of a trained run (run level): the diagnostics of ``pyrovae diagnose``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from matplotlib.figure import Figure

from . import estimators
from .data import EVAL_BINARIZATION_SEED
from .diagnostics import (
    PosteriorCollapseWarning,
    amortization_gap,
    latent_activity,
    plot_quality,
    posterior_quality,
    quality_summary,
    worst,
)
from .experiment import load_data
from .hooks import evaluation_inputs


def diagnose_run(
    run,
    out_dir,
    *,
    split: str = "test",
    limit: int = 1000,
    num_samples: int = 1000,
    amortization: int = 0,
    seed: int = 0,
    progress: bool | None = False,
) -> dict:
    """The diagnostics of a trained run (:func:`pyrovae.experiment.load_run`) on the first
    ``limit`` datapoints of ``split``: ``diagnostics.csv`` (the :func:`posterior_quality`
    table), ``khat_gap.png`` and ``diagnostics.json`` (the :func:`quality_summary`, active
    units, and, for ``amortization`` > 0, the mean gaps of that many datapoints) in ``out_dir``."""
    out_dir = Path(out_dir)
    data = load_data(run.config, split, run.device)
    images = data.observe_fixed(seed + EVAL_BINARIZATION_SEED)[:limit]
    labels = data.labels[:limit]
    args = evaluation_inputs(run.model, images, labels)  # a semi-supervised model sums its class out
    table = posterior_quality(
        run.model,
        run.guide,
        *args,
        images=images,
        num_samples=num_samples,
        labels=labels.cpu(),
        seed=seed,
        progress=bool(progress) and "diagnose: k-hat",
    )
    table.to_csv(out_dir / "diagnostics.csv", index=False)
    fig = plot_quality(table, ax=Figure(figsize=(6, 4)).subplots())  # no pyplot: any backend, or none
    fig.savefig(out_dir / "khat_gap.png", dpi=100)
    out = {"split": split, **quality_summary(table), "worst": worst(table, 10).to_dict(orient="records")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PosteriorCollapseWarning)
        activity = latent_activity(
            run.model,
            run.guide,
            *args,
            images=images,
            seed=seed,
            progress=bool(progress) and "diagnose: units",
        )
    out["active_units"] = {
        name: {
            "active": a.num_active,
            "units": a.variance.numel(),
            "kl": None if a.kl_per_dim is None else a.kl_per_dim.tolist(),
            "variance": a.variance.tolist(),
        }
        for name, a in activity.items()
    }
    out["warnings"] = [str(w.message) for w in caught]
    if amortization > 0:
        gaps = amortization_gap(
            run.model,
            run.guide,
            *(a[:amortization] for a in args),
            images=images[:amortization],
            seed=seed,
            num_samples=num_samples,
        )
        out["amortization"] = {
            "num_datapoints": len(gaps),
            **{
                c: dict(zip(("mean", "stderr"), estimators.mean_and_stderr(torch.tensor(gaps[c].to_numpy()))))
                for c in ("total_gap", "approximation_gap", "amortization_gap")
            },
        }
    (out_dir / "diagnostics.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    return out
