"""Name -> model / guide factory.

A file in ``models/`` or ``guides/`` that decorates a class with
``@register_model("name")`` or ``@register_guide("name")`` is picked up by
``pyrovae list``, configs and the CLI with no other change: the packages import every
module they hold.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from pyrovae.errors import ConfigError, unknown_name
from pyrovae.hooks import Takes, latent_sites, takes

MODELS: dict[str, Callable[..., Any]] = {}
GUIDES: dict[str, Callable[..., Any]] = {}


def _register(table: dict, kind: str, name: str):
    def deco(cls):
        if name in table and table[name] is not cls:
            raise ConfigError(f"{kind} name {name!r} is registered twice ({table[name]} and {cls})")
        table[name] = cls
        cls.registered_name = name
        return cls

    return deco


def register_model(name: str):
    """Class decorator: make a model constructible by ``name`` from configs and the CLI."""
    return _register(MODELS, "model", name)


def register_guide(name: str):
    """Class decorator: make a guide constructible by ``name`` from configs and the CLI."""
    return _register(GUIDES, "guide", name)


def fits(model_cls: Any, guide_cls: Any) -> bool:
    """Whether a guide class can serve a model class: the same latent sites and the same
    arguments (``takes``: "image" by default, "image,label", "quadrants"; a guide that takes
    "any" serves every model with its sites)."""
    same_sites = set(latent_sites(model_cls)) == set(latent_sites(guide_cls))
    return same_sites and takes(guide_cls) in (Takes.ANY, takes(model_cls))


def guides_for(model_name: str) -> list[str]:
    """The registered guides that fit the registered model ``model_name``."""
    _load_all()
    return [g for g, cls in GUIDES.items() if fits(MODELS[model_name], cls)]


def _load_all() -> None:
    importlib.import_module("pyrovae.models")
    importlib.import_module("pyrovae.guides")


def _build(table: dict, kind: str, name: str, kwargs: dict):
    _load_all()
    if name not in table:
        raise unknown_name(kind, name, table)
    cls = table[name]
    sig = inspect.signature(cls)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    unknown = [k for k in kwargs if k not in sig.parameters and not accepts_any]
    if unknown:
        options = [
            k for k, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY or p.default is not p.empty
        ]
        raise ConfigError(
            f"{kind} {name!r} takes no option(s) {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(options)}"
        )
    return cls(**kwargs)


def build_model(name: str, **kwargs):
    """Construct the registered model ``name``; unknown names and options raise ConfigError."""
    return _build(MODELS, "model", name, kwargs)


def build_guide(name: str, **kwargs):
    """Construct the registered guide ``name``; unknown names and options raise ConfigError."""
    return _build(GUIDES, "guide", name, kwargs)


def available() -> dict[str, dict[str, str]]:
    """{"models": {name: summary}, "guides": {name: summary}} for ``pyrovae list``."""
    _load_all()

    def summary(cls):
        return (inspect.getdoc(cls) or "").split("\n")[0]

    return {
        "models": {k: summary(v) for k, v in sorted(MODELS.items())},
        "guides": {k: summary(v) for k, v in sorted(GUIDES.items())},
    }
