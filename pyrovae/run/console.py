"""Everything the command line prints: each function takes a result a run-level function
returned (:mod:`pyrovae.run.experiment`, :mod:`pyrovae.run.evaluation`,
:mod:`pyrovae.run.diagnose`) and prints it; nothing here computes."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Iterable

from pyrovae.hooks import Takes
from pyrovae.runtime import threads


def _bands(a: dict) -> str:
    return " ".join(f"{b:.2f}" for b in a.get("acceptance_bands", []))


def _fmt(term: dict, digits: int = 2) -> str:
    return f"{term['mean']:.{digits}f} +- {term['stderr']:.{digits}f}"


def say(line: str) -> None:
    print(line)


def error(line: str) -> None:
    """One line on stderr: an error names the problem and the fix."""
    print(f"pyrovae: {line}", file=sys.stderr)


def wrote(paths: Iterable[Path | str], note: str = "") -> None:
    for path in paths:
        print(f"wrote {path}{note}")


def fitted(result, world: int) -> None:
    """The end of ``pyrovae fit``: steps, threads, the best validation ELBO."""
    best = f"; best validation ELBO {result.best_val_elbo:.2f} nats" * math.isfinite(result.best_val_elbo)
    best += f"; best validation loss {result.best_val_loss:.2f}" * math.isfinite(result.best_val_loss)
    cpu = threads.note(result.threads)
    print(f"trained {result.step} steps{cpu}{best}" + (f" on {world} ranks" if world > 1 else ""))


def _likelihood_lines(out: dict, target: str) -> None:
    print("  nats per datapoint, mean +- standard error over datapoints")
    if out.get("bound_only"):
        print(f"  {target + ' >=':<16}{_fmt(out['elbo'])}   ELBO = log p(x, c*), q the point mass at c*")
    else:
        print(f"  {target:<16}{_fmt(out['log_likelihood'])}   importance-sampled (Burda et al. 2015)")
        print(f"  ELBO            {_fmt(out['elbo'])}")
    print(f"  reconstruction  {_fmt(out['reconstruction'])}   E_q[log p(x|z)]")
    print(f"  KL              {_fmt(out['kl'])}   E_q[log q(z|x) - log p(z)]")
    if not out.get("bound_only"):
        ess = out["ess"]
        print(f"  importance ESS  {ess['mean']:.1f} on average, {ess['min']:.1f} at least, of K")
    if "per_step" in out:
        p = out["per_step"]
        print(f"  per time step, total over all {p['steps']} observed steps (ratio estimator's SE):")
        if not out.get("bound_only"):
            print(f"    {target:<16}{_fmt(p['log_likelihood'], 3)}")
        for key, name in (("elbo", "ELBO"), ("reconstruction", "reconstruction"), ("kl", "KL")):
            print(f"    {name:<16}{_fmt(p[key], 3)}")
    if "elbo_bits_per_dim" in out:
        print(
            f"  bits per dim    {out['log_likelihood_bits_per_dim']:.4f} +- "
            f"{out['log_likelihood_bits_per_dim_stderr']:.4f} (-log p(x) / (D ln 2)), "
            f"{out['elbo_bits_per_dim']:.4f} (-ELBO)"
            + (" (both the bound: q is a point mass)" if out.get("bound_only") else "")
        )
    elif not out.get("discrete", True) and target == "log p(x)":
        print(
            "  note: this likelihood is a density over grey levels: its log p(x) is not comparable "
            "with probabilities of discrete pixels (use likelihood discretized_logistic(_mixture) "
            'with pixels = "8bit" for bits/dim)'
        )


def evaluation(out: dict, takes: Takes) -> None:
    """The result of :func:`pyrovae.run.evaluation.evaluate` (with ``ais`` and ``bdmc`` when present)."""
    drawn = f"K = {out['num_samples']} importance samples each, " if "num_samples" in out else ""
    print(
        f"{out['dataset']} ({out['pixels']} pixels) {out['split']} set, {out['num_datapoints']} datapoints, "
        f"{drawn}checkpoint at step {out['step']}, {out['seconds']:.1f} s on {out['device']}"
        + threads.note(out.get("threads") if out["device"] == "cpu" else None)
        + (f" x {out['ranks']} ranks" if out.get("ranks", 1) > 1 else "")
    )
    if "resumed_from" in out:
        t = out["segments"]
        print(
            f"  continued from datapoint {out['resumed_from']} of {out['num_datapoints']} (its kept chunks); "
            f"{t['segments']} processes, {t['wall_h']:.2f} h wall, {t['cpu_h']:.2f} CPU h in all"
        )
    target = {Takes.QUADRANTS: "log p(y | x)", Takes.IMAGE_LABEL: "log p(x | y)"}.get(takes, "log p(x)")
    if "point_masses" in out:
        print(f"  nats per datapoint; q(z|x) is a point mass at {out['point_masses']} (deterministic)")
        print(f"  reconstruction  {_fmt(out['reconstruction'])}   log p(x | z = mu(x))")
        missing = ", ".join(out["unavailable"])
        print(f"  not computed    {missing}: they need q's density (log p(x): --method ais)")
    else:
        _likelihood_lines(out, target)
    if "classification_error" in out:
        e = out["classification_error"]
        print(
            f"  test error      {100 * e['error']:.2f}% +- {100 * e['stderr']:.2f}   "
            f"argmax q({e['site']} | x)"
            + (f", mean over {e['binarizations']} binarizations" if e["binarizations"] > 1 else "")
        )
    for site, acc in out.get("cluster_accuracy", {}).items():
        print(
            f"  cluster acc.    {100 * acc:.2f}%   argmax q({site} | x), "
            "clusters matched to labels (Hungarian)"
        )
    if "refine" in out:
        r = out["refine"]
        for key, what in (("amortized", "q(z|x)"), ("refined", f"q refined by {r['steps']} steps")):
            side = r[key]
            print(
                f"  log p(x) from {what:<22}{_fmt(side['log_likelihood'])}   k-hat mean "
                f"{side['k_hat_mean']:.2f}, {100 * side['k_hat_bad']:.1f}% above 0.7, {side['seconds']:.1f} s"
            )
    if "ais" in out:
        a = out["ais"]
        print(
            f"  AIS log p(x)    {_fmt(a['log_likelihood'])}   T = {a['num_steps']}, S = {a['num_chains']} "
            f"chains from {'p(z)' if a['initial'] == 'prior' else 'q(z|x)'}, acceptance "
            f"{a['acceptance']:.2f} (by band of temperatures: {_bands(a)}), {a['seconds']:.1f} s (Neal 2001)"
        )
    if "bdmc" in out:
        b = out["bdmc"]
        print(
            f"  BDMC on {b['num_datapoints']} datapoints simulated from the model, "
            f"T = {b['num_steps']}, {b['seconds']:.1f} s:"
        )
        for key, what in (("lower", "forward AIS"), ("upper", "reverse AIS"), ("gap", "upper - lower")):
            print(f"    {key:<14}{_fmt(b[key])}   {what}")


def diagnosis(out: dict) -> None:
    """The result of :func:`pyrovae.run.diagnose.diagnose_run`."""
    print(f"q(z|x) on {out['num_datapoints']} {out['split']} datapoints, S = {out['num_samples']} draws each")
    if "point_masses" in out:
        print(f"  q(z|x) is a point mass at {out['point_masses']}: no k-hat, ESS or gaps")
        print(f"  ({out['unavailable']['k_hat']})")
    else:
        print(f"  Pareto k-hat <= 0.5 (reliable)    {100 * out['k_hat_good']:.1f}%")
        print(f"  0.5 < k-hat <= 0.7 (slow)         {100 * out['k_hat_ok']:.1f}%")
        print(f"  k-hat > 0.7 (unreliable)          {100 * out['k_hat_bad']:.1f}%")
        print(f"  gap log p(x) - ELBO               {_fmt(out['gap'])} nats")
        print(f"  importance ESS / S                {out['ess_fraction']:.3f} on average")
    if "active_units_per_step" in out:
        print(f"  latents per time step: {out['active_units_per_step']['summary']}")
    for name, a in out["active_units"].items():
        kl = "" if a["kl"] is None else f", KL {sum(a['kl']):.2f} nats"
        print(f"  active units of {name:<16}  {a['active']} of {a['units']}{kl}{a.get('note', '')}")
    if "amortization" in out.get("unavailable", {}) and "point_masses" not in out:
        print(f"  amortization gap: {out['unavailable']['amortization']}")
    if "amortization" in out:
        am = out["amortization"]
        print(
            f"  on {am['num_datapoints']} datapoints: gap {_fmt(am['total_gap'])} = approximation "
            f"{_fmt(am['approximation_gap'])} + amortization {_fmt(am['amortization_gap'])} nats"
        )
    if "disentanglement" in out:
        d = out["disentanglement"]
        print(
            f"  disentanglement against {', '.join(d['factors'])} on {d['num_datapoints']} datapoints: "
            f"MIG {d['mig']:.3f}, DCI {d['dci_disentanglement']:.3f} / {d['dci_completeness']:.3f} / "
            f"{d['dci_informativeness']:.3f}, FactorVAE {d['factor_vae']['mean']:.3f} +- "
            f"{d['factor_vae']['stderr']:.3f}, SAP {d['sap']:.3f}"
        )
    for w in out["warnings"]:
        print(f"  warning: {w}")
    if "worst" in out:
        print(
            "  worst datapoints by k-hat: "
            + ", ".join(f"{int(r['datapoint'])} ({r['k_hat']:.2f})" for r in out["worst"][:5])
        )


def registered(table: dict[str, dict[str, str]]) -> None:
    """``pyrovae list``: the registered models and guides, the training objectives and the
    disentanglement metrics."""
    for kind, entries in table.items():
        print(f"{kind}:")
        for name, doc in entries.items():
            print(f"  {name:<18} {doc}")
