"""Package facades that load nothing until a name is first used (PEP 562's module
``__getattr__``; the pattern of scientific Python's SPEC 1), so that ``import pyrovae`` stays
cheap. A facade lists its exports as ordinary imports under ``if TYPE_CHECKING:`` (what type
checkers and editors read); :func:`lazy` reads those statements from the file and imports a
name's home module only when the name is asked for."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path
from typing import Callable


def _exports(path: str) -> dict[str, tuple[str, str]]:
    """``{name: (module, attribute)}`` of the imports under ``if TYPE_CHECKING:`` in ``path``."""
    out = {}
    for node in ast.parse(Path(path).read_text()).body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                for alias in stmt.names if isinstance(stmt, ast.ImportFrom) else ():
                    out[alias.asname or alias.name] = (stmt.module, alias.name)
    return out


def lazy(package: str, path: str) -> tuple[Callable, Callable, list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for the facade ``package`` in file ``path``."""
    exports = _exports(path)

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = exports[name]
        submodule = f"{module}.{attribute}"
        if _is_module(submodule):
            return importlib.import_module(submodule)
        return getattr(importlib.import_module(module), attribute)

    return __getattr__, lambda: sorted(exports), sorted(exports)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
