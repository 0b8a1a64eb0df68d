"""The house rules, checked on the folders: short files and functions; each folder imports only
the folders below it; no import circle; every name imported from its one home; a cheap
``import pyrovae``; ruff clean; every package installed."""

import ast
import functools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: pyrovae's folders, lowest first: a module imports only from its own folder and the ones
#: before it; the top-level modules (errors, sites, hooks, registry, facade) are the first
LAYERS = ("vocabulary", "runtime", "blocks", "data", "inference", "training", "diagnostics", "run")
USER = ("models", "guides")  #: top-level folders installed as pyrovae.models / pyrovae.guides
HIGHEST_FOR_USER = "inference"  #: what models and guides may build on
LIBRARY = sorted((ROOT / "pyrovae").rglob("*.py"))
SOURCES = sorted([*LIBRARY, *(ROOT / "models").glob("*.py"), *(ROOT / "guides").glob("*.py")])
EVERY_PY = sorted(
    p for p in ROOT.rglob("*.py") if not ({".venv", "build", ".git"} & set(p.relative_to(ROOT).parts))
)


def module_name(path: Path) -> str:
    """The dotted name a source file installs as."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in USER:
        parts.insert(0, "pyrovae")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_of(module: str) -> Path | None:
    """The file of a dotted pyrovae module (a package's ``__init__.py``), or None."""
    parts = module.split(".")
    if parts[0] != "pyrovae":
        return None
    base = ROOT.joinpath(*parts[1:]) if len(parts) > 1 and parts[1] in USER else ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


@functools.cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def imports(path: Path) -> list[tuple[ast.AST, str]]:
    """(node, module) for every pyrovae module a file imports, at any depth, with a name
    imported from a package resolved to its submodule when it is one."""
    out = []
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Import):
            out += [(node, a.name) for a in node.names if a.name.split(".")[0] == "pyrovae"]
        elif (
            isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("pyrovae")
        ):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((node, sub if source_of(sub) is not None else node.module))
    return out


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    if len(parts) > 1 and parts[1] in USER:
        return LAYERS.index(HIGHEST_FOR_USER) + 0.5  # above what they build on, below training
    return 0 if len(parts) > 1 else len(LAYERS)  # the package facade itself: the top


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


def test_every_folder_imports_only_the_folders_below_it():
    """Library folders never import the run folder; lower layers never import higher ones;
    models and guides build on blocks and inference only."""
    offenders = []
    for path in SOURCES:
        own = module_name(path)
        if own in ("pyrovae", "pyrovae.__main__"):  # the facade and the entry point sit on top
            continue
        for node, target in imports(path):
            if layer(target) > layer(own):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} ({own}) imports {target}")
    assert not offenders, offenders


def test_the_engine_imports_its_modules_at_the_top():
    """No pyrovae import inside a function (the way import circles hide); a facade loads lazily
    by name (:mod:`pyrovae.facade`)."""
    lazy = []
    for path in SOURCES:
        inside = {
            id(n)
            for f in ast.walk(parsed(path))
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
        }
        lazy += [
            f"{path.relative_to(ROOT)}:{n.lineno} imports {t}" for n, t in imports(path) if id(n) in inside
        ]
    assert not lazy, lazy


def test_no_import_circle():
    graph = {module_name(p): {t for _, t in imports(p)} - {module_name(p)} for p in SOURCES}
    for name in graph:  # a package's facade imports nothing until a name is used
        if source_of(name) is not None and source_of(name).name == "__init__.py":
            graph[name] = {t for t in graph[name] if t == "pyrovae.facade"}
    circles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                circles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not circles, circles


def _defined(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def test_every_name_is_imported_from_its_home():
    """No re-export and no alias: ``from pyrovae.x import name`` names a module or a name that
    ``pyrovae.x`` itself defines, unless ``pyrovae.x`` is a package facade; the same for
    ``module.name`` read off an imported module. Library, tests, benchmarks alike."""
    strays = []
    for path in EVERY_PY:
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyrovae")):
                continue
            home = source_of(node.module)
            for a in node.names:
                sub = source_of(f"{node.module}.{a.name}")
                if sub is not None:
                    if sub.name != "__init__.py":
                        aliases[a.asname or a.name] = sub
                elif home is not None and home.name != "__init__.py" and a.name not in _defined(home):
                    strays.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{a.name}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
            ):
                home = aliases[node.value.id]
                if node.attr not in _defined(home) and node.attr not in ("os", "__file__"):
                    strays.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not strays, strays


def test_import_pyrovae_loads_none_of_the_engine():
    """``import pyrovae`` loads its facade alone (no torch, no matplotlib); a name loads its home."""
    code = (
        "import sys, pyrovae; first = sorted(m for m in sys.modules if m.startswith(('pyrovae', 'torch', "
        "'matplotlib', 'arviz'))); pyrovae.estimators.elbo; "
        "print(first, 'pyrovae.inference.estimators' in sys.modules, 'pyrovae.inference.ais' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # the inference facade (no engine in it) is loaded once more, as pyrovae.estimators, so that
    # `from pyrovae.estimators import elbo` works
    loaded = ["['pyrovae',", "'pyrovae.estimators',", "'pyrovae.facade',", "'pyrovae.inference']"]
    assert out.split() == [*loaded, "True", "False"], out


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
