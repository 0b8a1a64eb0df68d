"""The diagnostics of a trained run (run level): what ``pyrovae diagnose`` computes and
writes, returned, not printed (:mod:`pyrovae.run.console` prints it)."""

from __future__ import annotations

import json
import warnings

import torch
from matplotlib.figure import Figure

from pyrovae import hooks
from pyrovae.data.factors import CATEGORICAL, FACTOR_NAMES, load_factors
from pyrovae.diagnostics import (
    PosteriorCollapseWarning,
    amortization_gap,
    dci,
    factor_vae_score,
    latent_activity,
    mig,
    plot_quality,
    posterior_means,
    posterior_quality,
    quality_summary,
    sap,
    step_activity,
    worst,
)
from pyrovae.inference import estimators, weights
from pyrovae.run.experiment import Run
from pyrovae.run.recipes import EvaluationData, evaluation_data
from pyrovae.training.rundir import RunDir

#: why ``pyrovae diagnose --amortization`` refuses a sequence model
SEQUENCE_GAPS = (
    "not split for a sequence model: the local q fitted per datapoint is a Gaussian per site, z_t "
    "apart from z_{t-1}, poorer than the amortized chain, so its gap bounds no approximation gap"
)


def diagnose_run(
    run: Run,
    out_dir,
    data: EvaluationData | None = None,
    *,
    split: str = "test",
    limit: int = 1000,
    num_samples: int = 1000,
    amortization: int = 0,
    disentanglement: bool = False,
    seed: int = 0,
    progress: bool | None = False,
) -> dict:
    """The diagnostics of a trained run (:func:`pyrovae.run.experiment.load_run`) on the first
        ``limit`` datapoints of the evaluation ``data`` (by default ``split`` binarized at
        ``seed``): ``diagnostics.csv`` (the :func:`posterior_quality` table), ``khat_gap.png`` and
        ``diagnostics.json`` (the :func:`quality_summary`, active units (a sequence model's per time
    step, :func:`step_activity`), and, for ``amortization``
        > 0, the mean gaps of that many datapoints; with ``disentanglement``, the metrics of
        :func:`disentanglement_scores`) in ``out_dir``; returns the summary with the per-datapoint
        table under ``per_datapoint``. A guide with point-mass sites (a deterministic encoder) has
        no importance weights, and one that is a point mass at discrete codes (a VQ-VAE) has equal
        ones: the k-hat table and the gaps are then listed as unavailable, by name."""
    files = RunDir(out_dir)
    data = (evaluation_data(run.config, split, run.device, seed) if data is None else data).head(limit)
    args = data.inputs(run.model)  # a semi-supervised model sums its class out
    masses = weights.guide_point_masses(run.model, run.guide, args)
    codes = not masses and weights.only_point_masses(run.model, run.guide, args)
    if masses or codes:
        why = (
            f"needs the density of q(z|x); {masses} are point masses"
            if masses
            else "q(z|x) is a point mass at discrete codes: its importance weights are all equal"
        )
        out = {"split": data.name, "num_datapoints": len(data.images), "num_samples": num_samples}
        out, table = out | {"point_masses": masses, "unavailable": {"k_hat": why}}, None
        out["point_masses"] = masses or list(hooks.latent_sites(run.guide))
        if amortization > 0:
            out["unavailable"]["amortization"] = why
    else:
        out, table = _quality(run, args, data, files, num_samples, progress)
    sequence = hooks.sequence_steps(run.model, args) is not None
    out |= _steps(run, args, data) if sequence else _activity(run, args, data, progress)
    if amortization > 0 and sequence:
        out.setdefault("unavailable", {})["amortization"] = SEQUENCE_GAPS
    elif amortization > 0 and not (masses or codes):
        out["amortization"] = _gaps(run, args, data, amortization, num_samples)
    if disentanglement:
        out["disentanglement"] = disentanglement_scores(run, data, seed)
    files.diagnostics_summary.write_text(json.dumps(out, indent=2, default=float) + "\n")
    return {**out, "per_datapoint": table}  # the table itself, as diagnostics.csv holds it


def _quality(run: Run, args: tuple, data: EvaluationData, files: RunDir, num_samples: int, progress):
    """The k-hat table (written to ``diagnostics.csv`` and ``khat_gap.png``) and its summary."""
    table = posterior_quality(
        run.model,
        run.guide,
        *args,
        images=data.images,
        num_samples=num_samples,
        labels=data.labels.cpu(),
        seed=data.seed,
        progress=bool(progress) and "diagnose: k-hat",
    )
    table.to_csv(files.diagnostics_table, index=False)
    fig = plot_quality(table, ax=Figure(figsize=(6, 4)).subplots())  # no pyplot: any backend, or none
    fig.savefig(files.khat_gap, dpi=100)
    out = {"split": data.name, **quality_summary(table), "worst": worst(table, 10).to_dict(orient="records")}
    return out, table


def _activity(run: Run, args: tuple, data: EvaluationData, progress) -> dict:
    """Active units and KL per unit of each latent site, with the warnings they raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PosteriorCollapseWarning)
        activity = latent_activity(
            run.model,
            run.guide,
            *args,
            images=data.images,
            seed=data.seed,
            progress=bool(progress) and "diagnose: units",
        )
    units = {
        name: {
            "active": a.num_active,
            "units": a.variance.numel(),
            "kl": None if a.kl_per_dim is None else a.kl_per_dim.tolist(),
            "variance": a.variance.tolist(),
            "note": a.note,
        }
        for name, a in activity.items()
    }
    return {"active_units": units, "warnings": [str(w.message) for w in caught]}


def _steps(run: Run, args: tuple, data: EvaluationData) -> dict:
    """A sequence model's active units and KL step by step (:func:`step_activity`)."""
    a = step_activity(run.model, run.guide, *args, seed=data.seed)
    steps = {
        "units": a.units,
        "active": a.active.tolist(),
        "sequences": a.sequences.tolist(),
        "kl": a.kl.tolist(),
    }
    return {"active_units_per_step": steps | {"summary": str(a)}, "active_units": {}, "warnings": []}


def _gaps(run: Run, args: tuple, data: EvaluationData, amortization: int, num_samples: int) -> dict:
    """The mean gaps of the first ``amortization`` datapoints (:func:`amortization_gap`)."""
    gaps = amortization_gap(
        run.model,
        run.guide,
        *(a[:amortization] for a in args),
        images=data.images[:amortization],
        seed=data.seed,
        num_samples=num_samples,
    )
    return {
        "num_datapoints": len(gaps),
        **{
            c: dict(zip(("mean", "stderr"), estimators.mean_and_stderr(torch.tensor(gaps[c].to_numpy()))))
            for c in ("total_gap", "approximation_gap", "amortization_gap")
        },
    }


def disentanglement_scores(run: Run, data: EvaluationData, seed: int = 0) -> dict:
    """MIG, DCI (boosted trees), the FactorVAE score (mean and standard error over 5 repeats) and
    SAP of the posterior means E_q[z | x] of ``data`` against the dataset's ground-truth factors,
    its categorical factors as classes (:mod:`pyrovae.diagnostics.disentanglement`; a dataset of
    :mod:`pyrovae.data.factors`)."""
    d = run.config.data
    factors = load_factors(d.name, data.name, root=d.root, val_size=d.val_size).numpy()
    codes = posterior_means(run.model, run.guide, *data.inputs(run.model)).detach().double().cpu().numpy()
    factors = factors[: len(codes)]
    names = FACTOR_NAMES[d.name]
    categorical = [names.index(c) for c in CATEGORICAL[d.name]]
    parts = dci(codes, factors, categorical, seed=seed).parts
    fv = factor_vae_score(codes, factors, seed=seed)
    return {
        "factors": list(names),
        "categorical": list(CATEGORICAL[d.name]),
        "num_datapoints": len(codes),
        "mig": mig(codes, factors).value,
        "dci_disentanglement": parts["disentanglement"],
        "dci_completeness": parts["completeness"],
        "dci_informativeness": parts["informativeness"],
        "factor_vae": {"mean": fv.value, "stderr": fv.stderr},
        "sap": sap(codes, factors, categorical, seed=seed).value,
    }
