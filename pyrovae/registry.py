"""Name -> model / guide factory, and import paths for classes written anywhere.

A file in ``models/`` or ``guides/`` that decorates a class with
``@register_model("name")`` or ``@register_guide("name")`` is picked up by
``pyrovae list``, configs and the CLI with no other change: the packages import every
module they hold. An installed package registers its own under the entry-point groups
:data:`ENTRY_POINTS` (how pytest finds its plugins). Wherever a config names a model, guide,
prior or objective it may instead give an import path ``package.module:Name`` (the form of
entry points and of LightningCLI's ``class_path``), imported from the folders of
:func:`search_paths`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import os
import sys
from typing import Any, Callable, Iterable, Iterator

from pyrovae.errors import ConfigError, unknown_name
from pyrovae.hooks import Takes, latent_sites, takes

MODELS: dict[str, Callable[..., Any]] = {}
GUIDES: dict[str, Callable[..., Any]] = {}
#: the entry-point group of each kind an installed package may register under
ENTRY_POINTS = {
    "model": "pyrovae.models",
    "guide": "pyrovae.guides",
    "prior": "pyrovae.priors",
    "objective": "pyrovae.objectives",
}


def is_import_path(name: str) -> bool:
    """Whether ``name`` is an import path ``package.module:Name`` rather than a registered name."""
    return isinstance(name, str) and ":" in name


@contextlib.contextmanager
def search_paths(folders: Iterable[str] = ()) -> Iterator[None]:
    """Import with ``folders`` (a config's folder, recorded in its runs) and the working
    directory searched first, as ``python -m`` would; ``sys.path`` is restored after."""
    extra = [os.path.abspath(f) for f in (*folders, os.getcwd())]
    saved = list(sys.path)
    sys.path[:0] = [f for f in extra if f not in sys.path]
    try:
        yield
    finally:
        sys.path[:] = saved


def import_object(kind: str, spec: str, folders: Iterable[str] = ()) -> Any:
    """The object an import path ``package.module:Name`` names, for a config's ``kind`` (model,
    guide, prior, objective); one line naming the module and the fix when it cannot be imported."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(f"{kind} {spec!r} is not an import path; write it as package.module:Name")
    with search_paths(folders):
        try:
            obj = importlib.import_module(module)
        except ImportError as e:
            missing = getattr(e, "name", None)
            why = f"no module {missing!r}" if missing else f"{type(e).__name__}: {e}"
            raise ConfigError(
                f"{kind} {spec!r}: cannot import module {module!r} ({why}); put {module.split('.')[0]} "
                "beside the config, in the working directory or on PYTHONPATH, or pip install the "
                "package that holds it"
            ) from None
        except Exception as e:  # noqa: BLE001 - the module's own code failed as it was imported
            first = (str(e).strip().splitlines() or [""])[0]
            raise ConfigError(
                f"{kind} {spec!r}: importing {module!r} failed ({type(e).__name__}: {first})"
            ) from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{kind} {spec!r}: module {module!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


def module_folder(spec: str) -> str | None:
    """The folder on ``sys.path`` that the top-level package of an import path was imported from
    (to record beside a run), or None for one imported from an installed distribution."""
    top = sys.modules.get(spec.partition(":")[0].split(".")[0])
    where = getattr(top, "__file__", None)
    if where is None or "site-packages" in where or "dist-packages" in where:
        return None
    path = os.path.dirname(os.path.abspath(where))
    return os.path.dirname(path) if os.path.basename(where) == "__init__.py" else path


def plugins(kind: str) -> dict[str, Any]:
    """{name: object} registered by installed packages under ``kind``'s entry-point group."""
    out = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINTS[kind]):
        try:
            out[ep.name] = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin is named, not a traceback
            dist = ep.dist.name if ep.dist is not None else "an installed package"
            raise ConfigError(
                f"the {kind} {ep.name!r} that {dist} registers ({ep.value}) cannot be loaded "
                f"({type(e).__name__}: {e}); reinstall or uninstall {dist}"
            ) from None
    return out


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
    """Whether a guide class can serve a model class: the same latent sites, the same
    arguments (``takes``: "image" by default, "image,label", "quadrants", "sequence"; a guide
    that takes "any" serves every model with its sites) and the methods the guide runs on its
    model (``needs_model``: a guide over the model's own recurrence, the VRNN's)."""
    same_sites = set(latent_sites(model_cls)) == set(latent_sites(guide_cls))
    has = all(hasattr(model_cls, name) for name in getattr(guide_cls, "needs_model", ()))
    return same_sites and has and takes(guide_cls) in (Takes.ANY, takes(model_cls))


def guides_for(model_name: str) -> list[str]:
    """The registered guides that fit the registered model ``model_name``."""
    _load_all()
    return [g for g, cls in GUIDES.items() if fits(MODELS[model_name], cls)]


def _load_all() -> None:
    importlib.import_module("pyrovae.models")
    importlib.import_module("pyrovae.guides")
    for kind, table in (("model", MODELS), ("guide", GUIDES)):
        for name, cls in plugins(kind).items():
            table.setdefault(name, cls)


def lookup(kind: str, name: str, folders: Iterable[str] = ()) -> Any:
    """The model or guide class a config names: registered (here or by a plugin) or imported."""
    if is_import_path(name):
        return import_object(kind, name, folders)
    table = MODELS if kind == "model" else GUIDES
    _load_all()
    if name not in table:
        raise unknown_name(kind, name, table)
    return table[name]


def accepts(cls: Any, option: str) -> bool:
    """Whether the constructor of ``cls`` takes ``option`` (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return option in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def offered(cls: Any, values: dict, options: Iterable[str] = ()) -> dict:
    """The ``values`` (``x_shape``, ``latent_dim``, ...) that the constructor of ``cls`` takes and
    the config's own ``options`` do not set: what a class written anywhere is given."""
    options = set(options)
    return {k: v for k, v in values.items() if k not in options and accepts(cls, k)}


def _build(table: dict, kind: str, name: str, kwargs: dict, folders: Iterable[str] = ()):
    cls = lookup(kind, name, folders)
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


def build_model(name: str, folders: Iterable[str] = (), **kwargs):
    """Construct the model ``name`` (registered, or an import path ``package.module:Name``
    searched in ``folders`` too); unknown names and options raise ConfigError."""
    return _build(MODELS, "model", name, kwargs, folders)


def build_guide(name: str, folders: Iterable[str] = (), **kwargs):
    """Construct the guide ``name`` (registered, or an import path); as :func:`build_model`."""
    return _build(GUIDES, "guide", name, kwargs, folders)


def summary(obj: Any) -> str:
    """The whole first paragraph of an object's docstring, on one line."""
    return " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())


def available() -> dict[str, dict[str, str]]:
    """{"models": {name: summary}, "guides": {name: summary}} for ``pyrovae list``, plugins included."""
    _load_all()
    return {
        "models": {k: summary(v) for k, v in sorted(MODELS.items())},
        "guides": {k: summary(v) for k, v in sorted(GUIDES.items())},
    }
