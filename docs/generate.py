"""The documentation pages generated from the code, so that they cannot drift from it: the API
reference (each facade's exports, documented from their docstrings at their home modules), the
config reference (the config dataclasses' fields, types, defaults and ``#:`` comments), the
registered models and guides, and the command line (the argument parser's help)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from pathlib import Path

from sphinx.pycode import ModuleAnalyzer

from pyrovae.facade import _exports

#: the API pages: a package facade's exports, or a module's members (the shared vocabulary)
FACADES = (
    "pyrovae.runtime",
    "pyrovae.blocks",
    "pyrovae.data",
    "pyrovae.inference",
    "pyrovae.training",
    "pyrovae.diagnostics",
    "pyrovae.run",
)
MODULES = ("pyrovae.hooks", "pyrovae.errors", "pyrovae.registry", "pyrovae.sites")


def _directive(module: str, name: str) -> str:
    obj = getattr(__import__(module, fromlist=[name]), name)
    if inspect.isclass(obj):
        return f".. autoclass:: {module}.{name}\n   :members:\n"
    if callable(obj):
        return f".. autofunction:: {module}.{name}\n"
    return f".. autodata:: {module}.{name}\n   :annotation:\n"


def _title(text: str) -> str:
    return f"{text}\n{'=' * len(text)}\n"


def api_page(package: str) -> str:
    """An API page: the package's docstring, then each export documented at its home."""
    init = Path(__import__(package, fromlist=["_"]).__file__)
    lines = [_title(f"``{package}``"), f".. automodule:: {package}\n   :no-members:\n"]
    for name, (module, attribute) in sorted(_exports(str(init)).items(), key=lambda kv: kv[1]):
        full = f"{module}.{attribute}"
        try:
            __import__(full)  # a module exported by name: linked, not documented twice
            lines.append(f"- ``{name}``: the module :mod:`{full}`\n")
        except ModuleNotFoundError:
            lines.append(_directive(module, attribute))
    return "\n".join(lines)


def module_page(module: str) -> str:
    return "\n".join([_title(f"``{module}``"), f".. automodule:: {module}\n   :members:\n"])


def _type_name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _default(field) -> str:
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    if hasattr(value, "options"):  # a model or guide: its registered name and options
        return f"`{value.name}` {dict(value.options)}"
    if dataclasses.is_dataclass(value):  # a table of its own
        return "see below"
    return "`null`" if value is None else f"`{value!r}`"


def config_fields(cls) -> str:
    """A table of a config dataclass: key, type, default and the field's ``#:`` comment."""
    docs = ModuleAnalyzer.for_module(cls.__module__).find_attr_docs()
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        meaning = " ".join(docs.get((cls.__qualname__, f.name), [])).strip()
        cells = [f"`{f.name}`", f"`{_type_name(hints[f.name])}`", _default(f), meaning]
        rows.append(row(*cells))
    return "\n".join(rows) + "\n"


def row(*cells: str) -> str:
    """A markdown table row, each ``|`` inside a cell escaped (``p(x | z)`` stays as written) and
    each Sphinx role of a docstring (``:mod:`x```) in MyST's form (``{mod}`x```)."""
    return "| " + " | ".join(re.sub(r":(\w+):`", r"{\1}`", c.replace("|", "\\|")) for c in cells) + " |"


def config_reference() -> str:
    from pyrovae.registry import available
    from pyrovae.run.config import Config, DataConfig
    from pyrovae.training.settings import TrainConfig

    parts = ["## Top-level keys\n", config_fields(Config), "## `[data]`\n", config_fields(DataConfig)]
    parts += ["## `[train]`\n", config_fields(TrainConfig)]
    for kind, table in available().items():
        parts.append(f"## Registered {kind} (`[{kind.rstrip('s')}] name = ...`)\n")
        parts.append("| name | what it is |\n| --- | --- |")
        parts += [row(f"`{name}`", doc) for name, doc in table.items()]
        parts.append("")
    return "\n".join(parts) + "\n"


def cli_reference() -> str:
    from pyrovae.run.cli import parser

    main = parser()
    commands = next(a for a in main._actions if a.dest == "command").choices
    parts = ["```text", main.format_help().rstrip(), "```\n"]
    for name, sub in commands.items():
        parts += [f"## `pyrovae {name}`\n", "```text", sub.format_help().rstrip(), "```\n"]
    return "\n".join(parts)


def write_generated(out: Path) -> None:
    """Write every generated page into ``out`` (a folder of the documentation's sources)."""
    api = out / "api"
    api.mkdir(parents=True, exist_ok=True)
    for package in FACADES:
        (api / f"{package}.rst").write_text(api_page(package))
    for module in MODULES:
        (api / f"{module}.rst").write_text(module_page(module))
    (out / "config_reference.md").write_text(config_reference())
    (out / "cli_reference.md").write_text(cli_reference())
