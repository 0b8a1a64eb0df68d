"""The steps every command takes the same way: the model and guide a config names, a split of
its data, and the evaluation data (one seeded binarization) that evaluate, AIS, BDMC,
diagnose, the figures, the benchmarks and the notebooks all read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pyrovae import hooks
from pyrovae.data.labelled import keep_labels
from pyrovae.data.splits import EVAL_BINARIZATION_SEED, Split, load_split
from pyrovae.errors import ConfigError
from pyrovae.registry import MODELS, build_guide, build_model, fits, guides_for, lookup, offered, search_paths
from pyrovae.run.config import Config


def build(config: Config, x_shape) -> tuple[Any, Any]:
    """The model and guide a config names (registered or import paths), for images of shape
    ``x_shape``. Each constructor is given ``x_shape`` where it takes it; the guide is given the
    model's ``latent_dim`` where it takes one and ``[guide]`` sets none (a tuple, one entry per
    latent site, for a model of several sites)."""
    with search_paths(config.paths):
        return _build(config, x_shape)


def _build(config: Config, x_shape) -> tuple[Any, Any]:
    folders = config.paths
    model_cls, guide_cls = (
        lookup("model", config.model.name, folders),
        lookup("guide", config.guide.name, folders),
    )
    shape = {"x_shape": tuple(x_shape)}
    model = build_model(
        config.model.name, folders, **offered(model_cls, shape, config.model.options), **config.model.options
    )
    if not fits(type(model), guide_cls):
        fitting = guides_for(config.model.name) if config.model.name in MODELS else []
        raise ConfigError(
            f"model {config.model.name!r} (latent sites {hooks.latent_sites(model)}, takes "
            f"{hooks.takes(model)}) does not fit guide {config.guide.name!r} (samples "
            f"{hooks.latent_sites(guide_cls)}, takes {hooks.takes(guide_cls)}); "
            f"guides that fit: {', '.join(fitting) or 'none registered'}"
        )
    given = shape | ({"latent_dim": model.latent_dim} if hasattr(model, "latent_dim") else {})
    guide = build_guide(
        config.guide.name, folders, **offered(guide_cls, given, config.guide.options), **config.guide.options
    )
    hooks.attach(model, guide)  # a VampPrior's guide; a guide that falls back on the model's prior network
    return model, guide


def load_data(config: Config, split: str, device="cpu") -> Split:
    """``split`` (train, val or test) of the config's dataset, cut to its limits; the training
    split of a semi-supervised run keeps only ``data.labelled`` labels."""
    d = config.data
    data = load_split(
        d.name, split, pixels=d.pixels, root=d.root, val_size=d.val_size, device=device, **d.source()
    )
    data = data.slice({"train": d.train_size, "val": d.val_limit, "test": d.test_limit}[split])
    if split == "train" and d.labelled is not None:  # semi-supervised: the other labels hidden
        data = keep_labels(data, d.labelled, config.seed)
    return data


@dataclass(frozen=True)
class EvaluationData:
    """A split as every evaluation reads it: ``images`` is one fixed binarization (seed
    ``seed + EVAL_BINARIZATION_SEED``; the values themselves for other pixel modes), the same
    for every estimator and every run, so that their figures compare datapoint by datapoint."""

    split: Split
    images: torch.Tensor
    name: str
    seed: int

    @property
    def labels(self) -> torch.Tensor:
        return self.split.labels

    def inputs(self, model: Any, rows: int | None = None) -> tuple:
        """The arguments of ``model`` and its guide for the first ``rows`` datapoints (all by
        default): :func:`pyrovae.hooks.evaluation_inputs`."""
        return hooks.evaluation_inputs(model, self.images[:rows], self.labels[:rows])

    @classmethod
    def of(cls, split: Split, name: str = "test", seed: int = 0) -> "EvaluationData":
        """``split`` (a loaded Split) binarized at the evaluation seed: the recipe itself."""
        return cls(split, split.observe_fixed(seed + EVAL_BINARIZATION_SEED), name, seed)

    def head(self, rows: int) -> "EvaluationData":
        """The first ``rows`` datapoints."""
        return EvaluationData(self.split.slice(rows), self.images[:rows], self.name, self.seed)


def evaluation_data(config: Config, split: str = "test", device="cpu", seed: int = 0) -> EvaluationData:
    """Load ``split`` once and binarize it at the evaluation seed (:class:`EvaluationData`)."""
    return EvaluationData.of(load_data(config, split, device), split, seed)
