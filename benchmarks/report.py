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
