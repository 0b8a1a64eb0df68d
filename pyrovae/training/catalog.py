"""The training objectives by name (``train.objective``): the ELBOs and IWAE bounds of
:mod:`pyrovae.training.objectives` and the regularised losses of
:mod:`pyrovae.training.regularized`."""

from __future__ import annotations

import difflib

from pyrovae.errors import ConfigError, unknown_name
from pyrovae.registry import import_object, is_import_path, offered, plugins
from pyrovae.training.factor import FactorVAEObjective
from pyrovae.training.objectives import (
    _PYRO_ELBOS,
    ELBOObjective,
    IWAEObjective,
    Objective,
    PyroObjective,
    make_elbo,
)
from pyrovae.training.quantized import VQObjective
from pyrovae.training.regularized import FreeBitsObjective, MMDObjective, TCVAEObjective

#: the training losses by name (train.objective), each with its one-line meaning (``pyrovae list``)
SUMMARIES = {
    "elbo": "the Monte Carlo ELBO, reparameterized (Kingma & Welling 2013, eq. 6); beta and KL schedules",
    "enum": "the ELBO with discrete sites marked for enumeration summed out (Kingma et al. 2014, eq. 7)",
    "meanfield": "Pyro's TraceMeanField_ELBO: the KL in closed form where known",
    "iwae": "the k-sample importance-weighted bound (Burda et al. 2015, eq. 8); train.k",
    "dreg": "the IWAE bound with doubly reparameterized gradients (Tucker et al. 2018, eq. 8)",
    "free_bits": "the ELBO with each group's KL clamped below lambda (Kingma et al. 2016, eq. 15)",
    "tcvae": "beta-TCVAE: MI, TC and dimension-wise KL weighted (Chen et al. 2018, eq. 4); train.tc_weight",
    "infovae": "InfoVAE / MMD-VAE: (1 - alpha) KL and (alpha + lambda - 1) MMD (Zhao et al. 2017, eq. 6)",
    "wae": "WAE-MMD: reconstruction and lambda MMD(q(z), p(z)) (Tolstikhin et al. 2018, Algorithm 2)",
    "factorvae": "FactorVAE: the ELBO less gamma x a discriminator's total correlation (Kim & Mnih 2018)",
    "vqvae": "VQ-VAE: straight-through reconstruction, codebook, commitment (van den Oord et al. 2017)",
}
OBJECTIVES = tuple(SUMMARIES)  #: the objectives' names, in that order
#: the settings each objective takes, as ``[train]`` names them (the others take none)
OPTIONS = {
    "free_bits": ("free_bits", "free_bits_per", "free_bits_kl"),
    "tcvae": ("tc_alpha", "tc_weight", "tc_gamma", "tc_sampling"),
    "infovae": ("mmd_alpha", "mmd_lambda", "mmd_kernel", "mmd_scale"),
    "wae": ("wae_lambda", "mmd_kernel", "mmd_scale"),
    "factorvae": ("factor_gamma", "factor_hidden", "factor_lr", "factor_permute"),
}


def check_options(objective: str, options: dict) -> None:
    """A ConfigError naming each option ``objective`` does not take (the closest it does, and
    all of them)."""
    takes = OPTIONS.get(objective, ())
    listed = ", ".join(takes) if takes else "none"
    for key in options:
        if key in takes:
            continue
        owners = [name for name, keys in OPTIONS.items() if key in keys]
        if owners:
            hint = f" (an option of {', '.join(owners)})"
        else:
            close = difflib.get_close_matches(key, [*takes, *(k for v in OPTIONS.values() for k in v)], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"objective {objective!r} takes no option {key!r}{hint}; its options: {listed}")


def objective_names(name: str = "") -> tuple[str, ...]:
    """The names ``train.objective`` takes: :data:`OBJECTIVES`, those installed packages
    register (entry-point group ``pyrovae.objectives``) and ``name`` itself when it is an
    import path ``package.module:Name``."""
    return (*OBJECTIVES, *plugins("objective"), *([name] if is_import_path(name) else []))


def external_objective(name: str, num_particles: int, k: int) -> Objective:
    """The objective an import path or a plugin names: an :class:`Objective` instance as it is, a
    subclass built with the ``num_particles`` and ``k`` its constructor takes."""
    obj = import_object("objective", name) if is_import_path(name) else plugins("objective")[name]
    if isinstance(obj, type) and issubclass(obj, Objective):
        obj = obj(**offered(obj, {"num_particles": num_particles, "k": k}))
    if not isinstance(obj, Objective):
        raise ConfigError(
            f"objective {name!r} is a {type(obj).__name__}, not a pyrovae.objectives.Objective: "
            "subclass Objective and define __call__"
        )
    return obj


def make_objective(
    objective: str | Objective,
    *,
    num_particles: int = 1,
    k: int = 5,
    dataset_size: int | None = None,
    **options,
) -> Objective:
    """The training loss named ``objective`` (an :class:`Objective` is returned as it is);
    ``num_particles`` serves the ELBOs and the regularised losses, ``k`` the IWAE bounds,
    ``dataset_size`` the aggregate posterior of ``tcvae``; ``options`` are the objective's
    settings as ``[train]`` names them (:data:`OPTIONS`), any other refused by name."""
    if isinstance(objective, Objective):
        return objective
    if not isinstance(objective, str):
        raise ConfigError(
            f"objective must be a name ({', '.join(OBJECTIVES)}) or a pyrovae.objectives.Objective, "
            f"got {type(objective).__name__}: subclass Objective and define __call__"
        )
    o = options
    check_options(objective, options)
    if objective not in OBJECTIVES and objective in objective_names(objective):
        return external_objective(objective, num_particles, k)
    if objective in ("elbo", "enum"):
        return ELBOObjective(num_particles, enumerated=objective == "enum")
    if objective in _PYRO_ELBOS:
        return PyroObjective(make_elbo(objective, num_particles), objective)
    if objective in ("iwae", "dreg"):
        if num_particles != 1:
            raise ConfigError(
                f"objective {objective!r} draws k importance samples per datapoint; set train.k "
                f"(now {k}) instead of train.num_particles (now {num_particles})"
            )
        return IWAEObjective(k, dreg=objective == "dreg")
    if objective == "free_bits":
        return FreeBitsObjective(
            o.get("free_bits", 0.5),
            o.get("free_bits_per", "site"),
            o.get("free_bits_kl", "mc"),
            num_particles,
        )
    if objective == "tcvae":
        weights = (o.get("tc_weight", 6.0), o.get("tc_alpha", 1.0), o.get("tc_gamma", 1.0))
        return TCVAEObjective(
            weights[0], dataset_size, o.get("tc_sampling", "mws"), num_particles, *weights[1:]
        )
    if objective in ("infovae", "wae"):
        alpha, lam = (
            (1.0, o.get("wae_lambda", 10.0))
            if objective == "wae"
            else (o.get("mmd_alpha", 0.0), o.get("mmd_lambda", 100.0))
        )
        kernel, scale = o.get("mmd_kernel", "imq"), o.get("mmd_scale")
        return MMDObjective(alpha, lam, kernel, scale, num_particles, name=objective)
    if objective == "vqvae":
        if num_particles != 1:
            raise ConfigError(
                f'objective "vqvae" has a point-mass guide: set train.num_particles = 1, not {num_particles}'
            )
        return VQObjective()
    if objective == "factorvae":
        hidden = o.get("factor_hidden", (1000,) * 6)
        gamma, lr, permute = o.get("factor_gamma", 10.0), o.get("factor_lr", 1e-4), o.get("factor_permute")
        return FactorVAEObjective(gamma, hidden, lr, permute=permute or "independent")
    raise unknown_name("objective", objective, OBJECTIVES)
