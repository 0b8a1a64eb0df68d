"""What every benchmark does with its table: print it, and append it to a markdown file when asked."""

from __future__ import annotations


def emit(table: str, append: str | None = None) -> None:
    """Print ``table``; with ``append`` (e.g. benchmarks/RESULTS.md) also add it to that file."""
    print(table)
    if append:
        with open(append, "a") as f:
            f.write("\n" + table)


def emit_table(device: str, command: str, lines: list[str], append: str | None = None) -> None:
    """:func:`emit` of ``lines`` under a "Device: ..." and a "Command: `...`" line."""
    emit("\n".join([f"Device: {device}", f"Command: `{command}`", "", *lines]) + "\n", append)


def row(cells) -> str:
    """One markdown table row of ``cells``."""
    return "| " + " | ".join(map(str, cells)) + " |"


def emit_measured(device: str, conditions: str, command: str, lines: list[str], append: str | None) -> None:
    """:func:`emit_table` with the device named as these tables name it ("cpu": its
    architecture and threads) and torch's version before ``conditions``."""
    import platform

    import torch

    name = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)" if device == "cpu" else device
    emit_table(f"{name}, torch {torch.__version__}; {conditions}", command, lines, append)


#: run in a fresh interpreter: drop the editable install's finder, put a checkout first on
#: sys.path, then run a module (``-m NAME``), a script or ``-c CODE`` as Python would
_BOOTSTRAP = """import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
tree, *sys.argv = sys.argv[1:]
sys.path.insert(0, tree)
if sys.argv[0] == "-m":
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
elif sys.argv[0] == "-c":
    exec(compile(sys.argv[1], "-c", "exec"), {"__name__": "__main__"})
else:
    sys.path.insert(0, __import__("os").path.dirname(sys.argv[0]))
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def in_checkout(tree: str | None, argv: list[str]) -> list[str]:
    """The command line that runs ``argv`` (``-m MODULE ...``, ``-c CODE`` or ``SCRIPT ...``)
    with the pyrovae of the checkout ``tree`` instead of the installed one (``None``: the
    installed one; so is the name ``installed``). A checkout holds ``pyrovae/`` but not ``pyrovae/models`` and
    ``pyrovae/guides``: link them first (``ln -s ../models pyrovae/models``, likewise guides)."""
    import os
    import sys

    if tree in (None, "installed"):
        return [sys.executable, *argv]
    if not os.path.isdir(os.path.join(tree, "pyrovae", "models")):
        raise SystemExit(f"{tree}: link pyrovae/models and pyrovae/guides first (ln -s ../models ...)")
    return [sys.executable, "-c", _BOOTSTRAP, os.path.abspath(tree), *argv]
