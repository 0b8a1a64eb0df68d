"""Typed, frozen experiment configs, read from TOML or JSON as data (never evaluated)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    #: mnist | fashion_mnist | binarized_mnist | cifar10 | svhn | celeba | omniglot | folder | tensor
    name: str = "mnist"
    pixels: str = "dynamic"  #: dynamic | static | 8bit | continuous
    root: str | None = None  #: data root; else $PYROVAE_DATA, else ./data
    val_size: int | None = (
        None  #: images held out of the training set for validation (null: the dataset's default)
    )
    train_size: int | None = None  #: use only the first N training images (smoke runs)
    val_limit: int | None = None  #: use only the first N validation images
    test_limit: int | None = None  #: use only the first N test images
    path: str | None = None  #: folder: the image folder; tensor: the .pt / .npy / .npz file
    test_path: str | None = None  #: folder / tensor: the test images (else test_fraction of path is held out)
    labels_path: str | None = None  #: tensor: labels in a separate .pt / .npy file
    size: list[int] | None = None  #: folder: resize every image to [H, W]
    channels: int | None = None  #: folder: 1 (grey) or 3 (RGB); default from the first image
    test_fraction: float = 0.1  #: folder / tensor without test_path: the share held out as test set
    labelled: int | None = (
        None  #: keep the labels of only N training images, balanced over classes (semi-supervised)
    )

    def __post_init__(self):
        from .data import DATASETS, PIXEL_MODES

        _names(
            "data",
            {"name": ("dataset", self.name, DATASETS), "pixels": ("pixel mode", self.pixels, PIXEL_MODES)},
        )
        opt = lambda v: v is None or _at_least(v, 1)  # noqa: E731
        size = self.size
        size_ok = size is None or (
            isinstance(size, (list, tuple)) and len(size) == 2 and all(_int_in(v, 1, 65536) for v in size)
        )
        fraction_ok = _positive(self.test_fraction) and self.test_fraction < 1
        what = "image folder" if self.name == "folder" else "tensor file"
        _require(
            "data",
            {
                "val_size": (
                    self.val_size,
                    opt(self.val_size) or self.val_size == 0,
                    "null or an integer >= 0",
                ),
                "train_size": (self.train_size, opt(self.train_size), "null or an integer >= 1"),
                "val_limit": (self.val_limit, opt(self.val_limit), "null or an integer >= 1"),
                "test_limit": (self.test_limit, opt(self.test_limit), "null or an integer >= 1"),
                "labelled": (self.labelled, opt(self.labelled), "null or an integer >= 1"),
                "size": (size, size_ok, "null or [H, W], two positive integers"),
                "channels": (self.channels, self.channels in (None, 1, 3), "null, 1 or 3"),
                "test_fraction": (self.test_fraction, fraction_ok, "a number in (0, 1)"),
                "path": (
                    self.path,
                    self.path is not None or self.name not in ("folder", "tensor"),
                    f"the {what} for data.name = {self.name!r}",
                ),
            },
        )

    def source(self) -> dict:
        """The own-data options, for :func:`pyrovae.data.load_split`."""
        keys = ("path", "test_path", "labels_path", "size", "channels", "test_fraction")
        return {k: getattr(self, k) for k in keys} if self.name in ("folder", "tensor") else {}


def _require(cls_name: str, checks: dict[str, tuple[Any, bool, str]]) -> None:
    """Raise ConfigError for the first (value, ok, rule) whose ``ok`` is False."""
    for key, (value, ok, rule) in checks.items():
        if not ok:
            raise ConfigError(f"{cls_name}.{key} must be {rule}, got {value!r}")


MAX_SAMPLES = 100_000  #: particles or importance samples per datapoint in a training step
MAX_EVAL_SAMPLES = 10_000_000  #: importance samples per datapoint in an evaluation (chunked)
MAX_SEED = 2**31 - 1  #: seeds go to numpy, which takes 32-bit seeds (ranks add to them)
NAN_POLICIES = ("stop", "skip")
SELECT = ("elbo", "error")  #: train.select: best.pt by validation ELBO, or by classification error


def _names(section: str, checks: dict[str, tuple[str, Any, tuple[str, ...]]]) -> None:
    """Raise ConfigError (with the closest known name) for the first unknown name."""
    from .errors import unknown_name

    for key, (label, value, known) in checks.items():
        if value not in known:
            raise unknown_name(f"{label} ({section}.{key})", value, known)


def _int_in(v, low, high) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v)


def _at_least(v, low) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= low and math.isfinite(v)


@dataclass(frozen=True)
class TrainConfig:
    objective: str = "elbo"  #: elbo (reparameterized MC ELBO) | meanfield (TraceMeanField_ELBO) | iwae | dreg
    num_particles: int = 1  #: vectorized particles per datapoint (elbo, meanfield)
    k: int = 5  #: importance samples per datapoint (iwae, dreg)
    epochs: int = 10
    max_steps: int | None = None  #: stop after this many steps (overrides epochs)
    batch_size: int = 128
    labelled_repeat: int | None = None  #: semi-supervised: passes over the labels per epoch (null: auto)
    lr: float = 1e-3
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  #: constant | exponential | cosine | iwae (stepped each epoch)
    lr_gamma: float = 0.99  #: decay per epoch for lr_schedule = exponential
    grad_clip: float | None = None  #: clip the gradient norm to this value
    beta: float = 1.0  #: KL weight (beta-VAE); its schedule below
    kl_schedule: str = "constant"  #: constant | linear | cyclical
    warmup_steps: int = 0  #: linear schedule: steps to reach beta
    cycles: int = 4  #: cyclical schedule: number of cycles
    cycle_ratio: float = 0.5  #: cyclical schedule: fraction of a cycle spent rising
    val_samples: int = 1  #: particles per datapoint for the validation ELBO
    early_stopping: int | None = None  #: stop after this many epochs without a better validation figure
    select: str = "elbo"  #: what picks best.pt: elbo | error (classification, a label site)
    checkpoint_every: int = 1000  #: steps between checkpoints (and at each epoch end)
    keep_checkpoints: int = 3  #: step checkpoints kept in run_dir/checkpoints (checkpoint.pt is the newest)
    nan_policy: str = (
        "stop"  #: stop | skip: on a non-finite loss or gradient, stop the run, or skip that batch
    )

    def __post_init__(self):
        from .compile import MODES
        from .objectives import KL_SCHEDULES, OBJECTIVES
        from .optim import LR_SCHEDULES

        _names(
            "train",
            {
                "objective": ("objective", self.objective, OBJECTIVES),
                "kl_schedule": ("KL schedule", self.kl_schedule, KL_SCHEDULES),
                "lr_schedule": ("lr_schedule", self.lr_schedule, LR_SCHEDULES),
                "nan_policy": ("nan_policy", self.nan_policy, NAN_POLICIES),
                "compile": ("compile mode", self.compile, MODES),
            },
        )
        opt = lambda v, f: v is None or f(v)  # noqa: E731
        many = f"an integer in [1, {MAX_SAMPLES}]"
        _require(
            "train",
            {
                "num_particles": (self.num_particles, _int_in(self.num_particles, 1, MAX_SAMPLES), many),
                "k": (self.k, _int_in(self.k, 1, MAX_SAMPLES), many),
                "epochs": (self.epochs, _at_least(self.epochs, 0), "an integer >= 0"),
                "max_steps": (
                    self.max_steps,
                    opt(self.max_steps, lambda v: _at_least(v, 1)),
                    "null or an integer >= 1",
                ),
                "batch_size": (self.batch_size, _at_least(self.batch_size, 1), "an integer >= 1"),
                "labelled_repeat": (
                    self.labelled_repeat,
                    opt(self.labelled_repeat, lambda v: _at_least(v, 1)),
                    "null or an integer >= 1",
                ),
                "lr": (self.lr, _at_least(self.lr, 0), "a finite number >= 0"),
                "adam_eps": (self.adam_eps, _positive(self.adam_eps), "a finite number > 0"),
                "weight_decay": (self.weight_decay, _at_least(self.weight_decay, 0), "a finite number >= 0"),
                "lr_gamma": (self.lr_gamma, _positive(self.lr_gamma), "a finite number > 0"),
                "grad_clip": (self.grad_clip, opt(self.grad_clip, _positive), "null or a finite number > 0"),
                "beta": (self.beta, _at_least(self.beta, 0), "a finite number >= 0"),
                "warmup_steps": (self.warmup_steps, _at_least(self.warmup_steps, 0), "an integer >= 0"),
                "cycles": (self.cycles, _at_least(self.cycles, 1), "an integer >= 1"),
                "cycle_ratio": (
                    self.cycle_ratio,
                    _positive(self.cycle_ratio) and self.cycle_ratio <= 1,
                    "in (0, 1]",
                ),
                "val_samples": (self.val_samples, _int_in(self.val_samples, 1, MAX_SAMPLES), many),
                "early_stopping": (
                    self.early_stopping,
                    opt(self.early_stopping, lambda v: _at_least(v, 1)),
                    "null or an integer >= 1",
                ),
                "select": (self.select, self.select in SELECT, f"one of {', '.join(SELECT)}"),
                "checkpoint_every": (
                    self.checkpoint_every,
                    _at_least(self.checkpoint_every, 1),
                    "an integer >= 1",
                ),
                "log_every": (self.log_every, _at_least(self.log_every, 1), "an integer >= 1"),
                "keep_checkpoints": (
                    self.keep_checkpoints,
                    _at_least(self.keep_checkpoints, 1),
                    "an integer >= 1",
                ),
            },
        )

    log_every: int = 50  #: steps between metric lines and progress-bar updates
    compile: str = "auto"  #: auto (= capture) | none | capture | inductor | cudagraphs; see pyrovae.compile
    tensorboard: bool = False  #: also write TensorBoard events into the run directory (pyrovae[tensorboard])


@dataclass(frozen=True)
class Component:
    """A registered model or guide: its name and constructor options."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    model: Component = Component("vae", {"latent_dim": 20, "hidden": [400]})
    guide: Component = Component("mlp", {"hidden": [400]})
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    seed: int = 0
    device: str = "auto"  #: auto (CUDA when present) | cpu | cuda | cuda:1 ...
    run_dir: str = "runs/default"
    eval_samples: int = 5000  #: importance samples per datapoint for `evaluate` (ELBO and log p(x))

    def __post_init__(self):
        _require(
            "config",
            {
                "eval_samples": (
                    self.eval_samples,
                    _int_in(self.eval_samples, 1, MAX_EVAL_SAMPLES),
                    f"an integer in [1, {MAX_EVAL_SAMPLES}]",
                ),
                "seed": (self.seed, _int_in(self.seed, 0, MAX_SEED), f"an integer in [0, {MAX_SEED}]"),
            },
        )

    def to_dict(self) -> dict:
        """Plain data in the layout of the config files (what ``config_from_dict`` reads)."""
        raw = dataclasses.asdict(self)
        for key in ("model", "guide"):
            raw[key] = {"name": raw[key]["name"], **raw[key]["options"]}
        return json.loads(json.dumps(raw))

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)


def _type_name(t: Any) -> str:
    return f"a list of {typing.get_args(t)[0].__name__}" if typing.get_origin(t) is list else t.__name__


def _check_type(where: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a simple type hint, allowing int for float; return it coerced."""
    options = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    for t in options:
        if t is type(None) and value is None:
            return None
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (str, bool) and isinstance(value, t):
            return value
        if typing.get_origin(t) is list and isinstance(value, (list, tuple)):
            inner = typing.get_args(t)[0]
            if all(isinstance(v, inner) and not isinstance(v, bool) for v in value):
                return list(value)
    names = " or ".join("null" if t is type(None) else _type_name(t) for t in options)
    raise ConfigError(f"config key {where} must be {names}, got {value!r}")


def _section(cls, where: str, raw: Mapping[str, Any]):
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config section [{where}] must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown config key {where}.{key}{hint} Known keys in [{where}]: {', '.join(known)}"
            )
        values[key] = _check_type(f"{where}.{key}", value, hints[key])
    return cls(**values)


def _component(where: str, raw: Any, default: Component) -> Component:
    if raw is None:
        return default
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config section [{where}] must be a table with a `name`, got {raw!r}")
    raw = dict(raw)
    name = raw.pop("name", default.name)
    if not isinstance(name, str):
        raise ConfigError(f"config key {where}.name must be a string, got {name!r}")
    return Component(name, raw)


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Build a Config from plain data, rejecting unknown keys and wrong types with the fix named."""
    raw = dict(raw)
    top = {f.name for f in dataclasses.fields(Config)}
    for key in raw:
        if key not in top:
            close = difflib.get_close_matches(key, sorted(top), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown config key {key!r}{hint} Known top-level keys: {', '.join(sorted(top))}"
            )
    d = Config()
    hints = typing.get_type_hints(Config)
    scalars = {
        k: _check_type(k, raw[k], hints[k]) for k in ("seed", "device", "run_dir", "eval_samples") if k in raw
    }
    return Config(
        model=_component("model", raw.get("model"), d.model),
        guide=_component("guide", raw.get("guide"), d.guide),
        data=_section(DataConfig, "data", raw.get("data", {})),
        train=_section(TrainConfig, "train", raw.get("train", {})),
        **scalars,
    )


def load_config(path: str | Path) -> Config:
    """Read a TOML or JSON config file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no config file at {path}")
    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from e
    return config_from_dict(raw)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as TOML, else taken as strings)."""
    raw = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.epochs=3")
        key, text = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        node = raw
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw
