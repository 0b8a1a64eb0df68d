"""Typed, frozen experiment configs, read from TOML or JSON as data (never evaluated)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from pyrovae.blocks.likelihoods import pixel_mode_for
from pyrovae.data.splits import DATASETS, PIXEL_MODES
from pyrovae.errors import ConfigError, at_least, int_in, positive, require, require_names
from pyrovae.registry import is_import_path, module_folder
from pyrovae.training.settings import TrainConfig


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: the dataset, its pixel mode, the data root and the splits' sizes."""

    #: mnist | fashion_mnist | binarized_mnist | cifar10 | svhn | celeba | omniglot | mnist_factors |
    #: dsprites | folder | tensor; sequences: chorales | jsb | sequences (own, data.path = FILE)
    name: str = "mnist"
    #: dynamic | static | 8bit | continuous; in a config file without it, the mode the model's
    #: likelihood models (8bit for the 8-bit likelihoods, continuous for the densities)
    pixels: str = "dynamic"
    root: str | None = None  #: data root; else $PYROVAE_DATA, else ./data
    #: images held out of the training set for validation (null: the dataset's default)
    val_size: int | None = None
    train_size: int | None = None  #: use only the first N training images (smoke runs)
    val_limit: int | None = None  #: use only the first N validation images
    test_limit: int | None = None  #: use only the first N test images
    path: str | None = None  #: folder: the image folder; tensor: the .pt / .npy / .npz file
    test_path: str | None = None  #: folder / tensor: the test images (else test_fraction of path is held out)
    labels_path: str | None = None  #: tensor: labels in a separate .pt / .npy file
    size: list[int] | None = None  #: folder: resize every image to [H, W]
    channels: int | None = None  #: folder: 1 (grey) or 3 (RGB); default from the first image
    test_fraction: float = 0.1  #: folder / tensor without test_path: the share held out as test set
    #: keep the labels of only N training images, balanced over classes (semi-supervised)
    labelled: int | None = None

    def __post_init__(self):
        require_names(
            "data",
            {"name": ("dataset", self.name, DATASETS), "pixels": ("pixel mode", self.pixels, PIXEL_MODES)},
        )
        opt = lambda v: v is None or at_least(v, 1)  # noqa: E731
        size = self.size
        size_ok = size is None or (
            isinstance(size, (list, tuple)) and len(size) == 2 and all(int_in(v, 1, 65536) for v in size)
        )
        fraction_ok = positive(self.test_fraction) and self.test_fraction < 1
        what = {"folder": "image folder", "sequences": "file of sequences"}.get(self.name, "tensor file")
        require(
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
                    self.path is not None or self.name not in ("folder", "tensor", "sequences"),
                    f"the {what} for data.name = {self.name!r}",
                ),
            },
        )

    def source(self) -> dict:
        """The own-data options, for :func:`pyrovae.data.load_split`."""
        keys = ("path", "test_path", "labels_path", "size", "channels", "test_fraction")
        return {k: getattr(self, k) for k in keys} if self.name in ("folder", "tensor", "sequences") else {}


MAX_EVAL_SAMPLES = 10_000_000  #: importance samples per datapoint in an evaluation (chunked)
MAX_SEED = 2**31 - 1  #: seeds go to numpy, which takes 32-bit seeds (ranks add to them)


@dataclass(frozen=True)
class Component:
    """A registered model or guide: its name and constructor options."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """A whole experiment, as a config file holds it: ``[model]``, ``[guide]``, ``[data]``,
    ``[train]`` and the top-level keys. Read with :func:`load_config` or
    :func:`config_from_dict`; :meth:`override` sets keys as ``--set`` does."""

    #: ``[model]``: a registered model's ``name`` and its constructor's options
    model: Component = Component("vae", {"latent_dim": 20, "hidden": [400]})
    #: ``[guide]``: a registered guide's ``name`` and its constructor's options
    guide: Component = Component("mlp", {"hidden": [400]})
    data: DataConfig = DataConfig()  #: ``[data]``: see its keys below
    train: TrainConfig = TrainConfig()  #: ``[train]``: see its keys below
    seed: int = 0  #: seeds the model's initialisation, the data order and every draw
    device: str = "auto"  #: auto (CUDA when present) | cpu | cuda | cuda:1 ...
    run_dir: str = "runs/default"  #: where ``pyrovae fit`` writes the run (config, checkpoints, figures)
    eval_samples: int = 5000  #: importance samples per datapoint for `evaluate` (ELBO and log p(x))
    #: steps of per-datapoint refinement of q before a second importance-sampled log p(x) in
    #: `evaluate` (0: none; :func:`pyrovae.diagnostics.refine.refined_log_likelihood`)
    eval_refine: int = 0
    #: folders searched (before the working directory) for the modules of import paths
    #: ``package.module:Name``; :func:`load_config` records the config's own folder here, so a run
    #: directory finds the same classes from anywhere
    paths: list[str] = field(default_factory=list)

    def __post_init__(self):
        require(
            "config",
            {
                "eval_samples": (
                    self.eval_samples,
                    int_in(self.eval_samples, 1, MAX_EVAL_SAMPLES),
                    f"an integer in [1, {MAX_EVAL_SAMPLES}]",
                ),
                "seed": (self.seed, int_in(self.seed, 0, MAX_SEED), f"an integer in [0, {MAX_SEED}]"),
                "eval_refine": (
                    self.eval_refine,
                    int_in(self.eval_refine, 0, 10**6),
                    "an integer in [0, 1000000]",
                ),
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

    def override(self, *settings: str | tuple[str, Any]) -> "Config":
        """This config with dotted keys set, as ``--set key=value`` does on the command line:
        ``config.override("train.epochs=3", ("data.root", "/data"))``; checked as a file is."""
        return config_from_dict(apply_overrides(self.to_dict(), settings))


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
    model = _component("model", raw.get("model"), d.model)
    data = dict(raw.get("data", {})) if isinstance(raw.get("data", {}), Mapping) else raw["data"]
    if isinstance(data, dict) and "pixels" not in data and isinstance(model.options.get("likelihood"), str):
        data["pixels"] = pixel_mode_for(model.options["likelihood"])  # recorded in the run's config.json
    scalars = {
        k: _check_type(k, raw[k], hints[k])
        for k in ("seed", "device", "run_dir", "eval_samples", "eval_refine", "paths")
        if k in raw
    }
    return Config(
        model=model,
        guide=_component("guide", raw.get("guide"), d.guide),
        data=_section(DataConfig, "data", data),
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
    if isinstance(raw, dict):
        raw.pop("sweep", None)  # what `pyrovae sweep` varies (pyrovae.run.sweep); the rest is one run
    config = config_from_dict(raw)
    if import_paths(config):  # its modules may sit beside it: recorded for every later command
        here = str(path.resolve().parent)
        config = config.replace(paths=[here, *(p for p in config.paths if p != here)])
    return config


def import_paths(config: Config) -> list[str]:
    """The import paths among the model, guide, prior and objective a config names."""
    names = (config.model.name, config.guide.name, config.model.options.get("prior"), config.train.objective)
    return [n for n in names if isinstance(n, str) and is_import_path(n)]


def with_module_folders(config: Config) -> Config:
    """The config with the folders its import paths were imported from added to ``paths``
    (:func:`pyrovae.registry.module_folder`), so that a run finds them from any directory."""
    found = [f for f in map(module_folder, import_paths(config)) if f is not None]
    return config.replace(paths=list(dict.fromkeys([*config.paths, *found])))


def parse_setting(item: str | tuple[str, Any], example: str = "train.epochs=3") -> tuple[str, Any]:
    """``"section.key=value"`` as (key, value), the value read as TOML, else taken as a string."""
    if not isinstance(item, str):
        return item
    if "=" not in item:
        raise ConfigError(f"{item!r} must look like section.key=value, e.g. {example}")
    key, text = item.split("=", 1)
    try:
        return key.strip(), tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), text


def apply_overrides(raw: Mapping[str, Any], settings: Iterable[str | tuple[str, Any]]) -> dict:
    """A copy of the config data ``raw`` (a config file's layout) with dotted keys set, in
    order: ``section.key=value`` strings (the value read as TOML, else taken as a string) or
    ``(key, value)`` pairs. The one way to override a config: the command line's flags and
    ``--set`` both come here; :func:`config_from_dict` then checks the result."""
    raw = json.loads(json.dumps(raw))
    for key, value in map(parse_setting, settings):
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return raw
