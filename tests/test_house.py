"""The house rules, checked: short files and functions, library code below run-level code, ruff clean."""

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_LEVEL = {
    "experiment",
    "cli",
    "reports",
    "configcheck",
    "__main__",
    "annealed",
}  #: modules that know configs and run dirs
SOURCES = sorted(
    [*(ROOT / "pyrovae").rglob("*.py"), *(ROOT / "models").glob("*.py"), *(ROOT / "guides").glob("*.py")]
)


def test_no_file_over_400_lines_and_no_function_over_80():
    long = []
    for path in SOURCES:
        text = path.read_text()
        if len(text.splitlines()) > 400:
            long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {size} lines")
    assert not long, long


def _imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names.update(module.split("."))
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(part for a in node.names for part in a.name.split("."))
    return names


def test_library_code_never_imports_run_level_code():
    offenders = []
    for path in (ROOT / "pyrovae").rglob("*.py"):
        if path.stem in RUN_LEVEL:
            continue
        hits = _imported_modules(ast.parse(path.read_text())) & RUN_LEVEL
        if hits:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(hits)}")
    assert not offenders, offenders


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is in the test extras")
def test_ruff_finds_nothing():
    for args in (["check", "."], ["format", "--check", "."]):
        out = subprocess.run(["ruff", *args], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_every_package_folder_is_installed():
    """A plain (not editable) ``pip install .`` ships only the packages pyproject.toml lists."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name: ROOT / path for name, path in setuptools["package-dir"].items()}
    found = set()
    for name, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            found.add(".".join((name, *parts)))
    assert found == set(setuptools["packages"])
