"""The settings of one training run (``[train]`` in a config file, or ``fit(config=...)``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pyrovae.errors import at_least, int_in, positive, require, require_names
from pyrovae.runtime.compile import MODES
from pyrovae.training.catalog import OBJECTIVES, OPTIONS, objective_names
from pyrovae.training.factor import PERMUTE
from pyrovae.training.objectives import KL_SCHEDULES
from pyrovae.training.optim import LR_SCHEDULES
from pyrovae.training.regularized import GROUPS, KERNELS, KL_KINDS, TC_SAMPLING

MAX_SAMPLES = 100_000  #: particles or importance samples per datapoint in a training step
NAN_POLICIES = ("stop", "skip")
TRAINED = ("model", "guide")  #: what train.train_only's names start with
SELECT = ("elbo", "error")  #: train.select: best.pt by validation ELBO, or by classification error


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: the objective, the optimiser and its schedules, batches, validation,
    checkpoints and the non-finite policy of one training run."""

    objective: str = "elbo"  #: elbo (reparameterized MC ELBO) | meanfield (TraceMeanField_ELBO) | iwae | dreg
    num_particles: int = 1  #: vectorized particles per datapoint (elbo, meanfield)
    k: int = 5  #: importance samples per datapoint (iwae, dreg)
    free_bits: float = 0.5  #: free_bits: lambda, nats per group below which its KL is not pushed down
    free_bits_per: str = "site"  #: free_bits: clamp each latent site's KL (site) or each dimension's (dim)
    free_bits_kl: str = "mc"  #: free_bits: the KL by Monte Carlo (mc) or in closed form (analytic)
    #: tcvae: the weight of the total correlation (the beta of Chen et al. 2018, eq. 4)
    tc_weight: float = 6.0
    tc_alpha: float = 1.0  #: tcvae: the weight of the index-code mutual information (their alpha)
    tc_gamma: float = 1.0  #: tcvae: the weight of the dimension-wise KL (their gamma)
    tc_sampling: str = "mws"  #: tcvae: q(z) by minibatch-weighted (mws) or -stratified (mss) sampling
    mmd_alpha: float = 0.0  #: infovae: alpha, the KL weighted 1 - alpha
    mmd_lambda: float = 100.0  #: infovae: lambda, the MMD weighted alpha + lambda - 1
    wae_lambda: float = 10.0  #: wae: the weight of MMD(q(z), p(z))
    mmd_kernel: str = "imq"  #: infovae, wae: imq (inverse multiquadric) | rbf
    mmd_scale: float | None = None  #: infovae, wae: the kernel's scale C (null: 2 x the latent dimension)
    factor_gamma: float = 10.0  #: factorvae: gamma, the weight of the discriminator's total correlation
    factor_hidden: list[int] = field(
        default_factory=lambda: [1000] * 6
    )  #: factorvae: the discriminator's layers
    factor_lr: float = 1e-4  #: factorvae: the discriminator's Adam learning rate (betas 0.5, 0.9)
    #: factorvae: D's product-of-marginals draws permuted from an independent half of each batch
    #: (independent: Kim & Mnih 2018, Algorithm 2) or from the codes D sees as q(z) (same)
    factor_permute: str = "independent"
    epochs: int = 10  #: passes over the training data
    max_steps: int | None = None  #: stop after this many steps (overrides epochs)
    batch_size: int = 128  #: datapoints per step (per rank under torchrun)
    labelled_repeat: int | None = None  #: semi-supervised: passes over the labels per epoch (null: auto)
    lr: float = 1e-3  #: Adam's learning rate
    adam_eps: float = 1e-8  #: Adam's epsilon
    weight_decay: float = 0.0  #: Adam's (L2) weight decay
    lr_schedule: str = "constant"  #: constant | exponential | cosine | iwae (stepped each epoch)
    lr_gamma: float = 0.99  #: decay per epoch for lr_schedule = exponential
    grad_clip: float | None = None  #: clip the gradient norm to this value
    #: skip the update of a step whose gradient norm exceeds this (VDVAE's outliers; counted in rows)
    skip_above: float | None = None
    #: after this many outliers in a row the updates go through (clipped by grad_clip): norms that
    #: stay above skip_above are the model's state, not a spike, and skipping them would stall the run
    skip_patience: int = 20
    beta: float = 1.0  #: KL weight (beta-VAE); its schedule below
    kl_schedule: str = "constant"  #: constant | linear | cyclical
    warmup_steps: int = 0  #: linear schedule: steps to reach beta
    beta_start: float = 0.0  #: linear schedule: the KL weight it rises from (0.2 in Pyro's DMM example)
    cycles: int = 4  #: cyclical schedule: number of cycles
    cycle_ratio: float = 0.5  #: cyclical schedule: fraction of a cycle spent rising
    val_samples: int = 1  #: particles per datapoint for the validation ELBO
    early_stopping: int | None = None  #: stop after this many epochs without a better validation figure
    select: str = "elbo"  #: what picks best.pt: elbo | error (classification, a label site)
    checkpoint_every: int = 1000  #: steps between checkpoints (and at each epoch end)
    keep_checkpoints: int = 3  #: step checkpoints kept in run_dir/checkpoints (checkpoint.pt is the newest)
    #: stop | skip: on a non-finite loss or gradient, stop the run, or skip that batch
    nan_policy: str = "stop"
    #: train only the parameters under these names ("model.prior", "guide.encoder"); hold the rest fixed
    train_only: list[str] = field(default_factory=list)
    #: start from this run directory's best.pt (``pyrovae fit``): parameters it lacks must be in train_only
    init_from: str | None = None

    def __post_init__(self):
        self._check_names()
        opt = lambda v, f: v is None or f(v)  # noqa: E731
        many, one = f"an integer in [1, {MAX_SAMPLES}]", "an integer >= 1"
        maybe = "null or a finite number > 0"
        require(
            "train",
            {
                "num_particles": (self.num_particles, int_in(self.num_particles, 1, MAX_SAMPLES), many),
                "k": (self.k, int_in(self.k, 1, MAX_SAMPLES), many),
                "free_bits": (self.free_bits, at_least(self.free_bits, 0), "a finite number >= 0"),
                "tc_weight": (self.tc_weight, at_least(self.tc_weight, 0), "a finite number >= 0"),
                "tc_alpha": (self.tc_alpha, at_least(self.tc_alpha, 0), "a finite number >= 0"),
                "tc_gamma": (self.tc_gamma, at_least(self.tc_gamma, 0), "a finite number >= 0"),
                "mmd_alpha": (self.mmd_alpha, at_least(self.mmd_alpha, -math.inf), "a finite number"),
                "mmd_lambda": (self.mmd_lambda, at_least(self.mmd_lambda, 0), "a finite number >= 0"),
                "wae_lambda": (self.wae_lambda, at_least(self.wae_lambda, 0), "a finite number >= 0"),
                "mmd_scale": (self.mmd_scale, opt(self.mmd_scale, positive), maybe),
                "factor_gamma": (self.factor_gamma, at_least(self.factor_gamma, 0), "a finite number >= 0"),
                "factor_hidden": (
                    self.factor_hidden,
                    len(self.factor_hidden) > 0 and all(at_least(h, 1) for h in self.factor_hidden),
                    "a list of integers >= 1",
                ),
                "factor_lr": (self.factor_lr, positive(self.factor_lr), "a finite number > 0"),
                "epochs": (self.epochs, at_least(self.epochs, 0), "an integer >= 0"),
                "max_steps": (
                    self.max_steps,
                    opt(self.max_steps, lambda v: at_least(v, 1)),
                    "null or an integer >= 1",
                ),
                "batch_size": (self.batch_size, at_least(self.batch_size, 1), "an integer >= 1"),
                "labelled_repeat": (
                    self.labelled_repeat,
                    opt(self.labelled_repeat, lambda v: at_least(v, 1)),
                    "null or an integer >= 1",
                ),
                "lr": (self.lr, at_least(self.lr, 0), "a finite number >= 0"),
                "adam_eps": (self.adam_eps, positive(self.adam_eps), "a finite number > 0"),
                "weight_decay": (self.weight_decay, at_least(self.weight_decay, 0), "a finite number >= 0"),
                "lr_gamma": (self.lr_gamma, positive(self.lr_gamma), "a finite number > 0"),
                "grad_clip": (self.grad_clip, opt(self.grad_clip, positive), maybe),
                "skip_above": (self.skip_above, opt(self.skip_above, positive), maybe),
                "skip_patience": (self.skip_patience, at_least(self.skip_patience, 1), "an integer >= 1"),
                "beta": (self.beta, at_least(self.beta, 0), "a finite number >= 0"),
                "warmup_steps": (self.warmup_steps, at_least(self.warmup_steps, 0), "an integer >= 0"),
                "beta_start": (
                    self.beta_start,
                    at_least(self.beta_start, 0) and self.beta_start <= self.beta,
                    "a number in [0, beta]",
                ),
                "cycles": (self.cycles, at_least(self.cycles, 1), "an integer >= 1"),
                "cycle_ratio": (
                    self.cycle_ratio,
                    positive(self.cycle_ratio) and self.cycle_ratio <= 1,
                    "in (0, 1]",
                ),
                "val_samples": (self.val_samples, int_in(self.val_samples, 1, MAX_SAMPLES), many),
                "early_stopping": (
                    self.early_stopping,
                    opt(self.early_stopping, lambda v: at_least(v, 1)),
                    "null or an integer >= 1",
                ),
                "select": (self.select, self.select in SELECT, f"one of {', '.join(SELECT)}"),
                "checkpoint_every": (self.checkpoint_every, at_least(self.checkpoint_every, 1), one),
                "log_every": (self.log_every, at_least(self.log_every, 1), "an integer >= 1"),
                "keep_checkpoints": (self.keep_checkpoints, at_least(self.keep_checkpoints, 1), one),
            },
        )
        named = all(isinstance(n, str) and n.split(".")[0] in TRAINED for n in self.train_only)
        require(
            "train", {"train_only": (self.train_only, named, 'a list of names under "model." or "guide."')}
        )

    def _check_names(self) -> None:
        require_names(
            "train",
            {
                "objective": (
                    "objective",
                    self.objective,
                    OBJECTIVES if self.objective in OBJECTIVES else objective_names(self.objective),
                ),
                "free_bits_per": ("free-bits group", self.free_bits_per, GROUPS),
                "free_bits_kl": ("free-bits KL", self.free_bits_kl, KL_KINDS),
                "tc_sampling": ("aggregate-posterior estimator", self.tc_sampling, TC_SAMPLING),
                "factor_permute": ("factor_permute", self.factor_permute, PERMUTE),
                "mmd_kernel": ("MMD kernel", self.mmd_kernel, KERNELS),
                "kl_schedule": ("KL schedule", self.kl_schedule, KL_SCHEDULES),
                "lr_schedule": ("lr_schedule", self.lr_schedule, LR_SCHEDULES),
                "nan_policy": ("nan_policy", self.nan_policy, NAN_POLICIES),
                "compile": ("compile mode", self.compile, MODES),
            },
        )

    log_every: int = 50  #: steps between metric lines and progress-bar updates
    #: auto (= capture) | none | capture | inductor | cudagraphs; see pyrovae.runtime.compile
    compile: str = "auto"
    #: also write TensorBoard events into the run directory (pyrovae[tensorboard]); read by
    #: ``pyrovae fit`` / ``fit_config``, which attach the callback (``pyrovae.fit`` takes callbacks)
    tensorboard: bool = False
    #: also log to MLflow (pyrovae[mlflow]): true for MLflow's default (MLFLOW_TRACKING_URI, else its
    #: local store), or a tracking URI such as "http://host:5000"; see pyrovae.run.tracking
    mlflow: bool | str = False
    mlflow_experiment: str = "pyrovae"  #: the MLflow experiment the run is logged under

    def objective_options(self) -> dict:
        """The settings of the objective this run trains with (:data:`pyrovae.training.catalog.OPTIONS`)."""
        return {n: getattr(self, n) for n in OPTIONS.get(self.objective, ())}
