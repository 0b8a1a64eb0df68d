"""The documentation builds with warnings as errors, its examples and the notebooks run as
written, and every public name has a docstring."""

import os
import re
from pathlib import Path

import matplotlib
import nbformat
import pytest
from nbclient import NotebookClient

matplotlib.use("Agg")

ROOT = Path(__file__).parents[1]


OWN_MODEL = ROOT / "docs" / "guide" / "own_model.md"


def test_own_model_example_runs(capsys):
    text = OWN_MODEL.read_text()
    code = re.search(r"<!-- example -->\n```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(OWN_MODEL), "exec"), namespace)
    assert namespace["result"].step == 2 * 40  # 5000 images, batch 128
    assert namespace["result"].compile == "capture"  # as the guide says
    mean = namespace["mean"]
    assert -300 < mean < namespace["log_px"].mean().item() < -100
    assert "validation ELBO" in capsys.readouterr().out


def test_own_model_tutorial_idiom_runs_captured(capsys):
    text = OWN_MODEL.read_text()
    code = re.search(r"<!-- example-tutorial -->\n```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(OWN_MODEL), "exec"), namespace)
    assert namespace["result"].step == 16  # 2000 images, batch 128
    assert namespace["result"].compile == "capture"
    assert "capture" in capsys.readouterr().out


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_there():
    expected = {"quickstart", "own_model", "own_data", "diagnostics", "priors", "cvae", "sequences"}
    assert {p.stem for p in NOTEBOOKS} >= expected


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_saved_from_a_top_to_bottom_run(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert any(o.output_type in ("display_data", "execute_result") for c in code for o in c.outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path, monkeypatch):
    monkeypatch.setenv("PYROVAE_SMOKE", "1")  # the kernel inherits the environment
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()  # raises on a failing cell
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")


PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if not {"_build", "_generated"} & set(p.parts))
#: every python block of the guide but the two examples above and fragments (a line of a model)
BLOCKS = [
    (page, i, match.group(2))
    for page in PAGES
    for i, match in enumerate(re.finditer(r"(<!-- [^\n]* -->\n)?```python\n(.*?)```", page.read_text(), re.S))
    if not match.group(1)
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small trained default VAE at runs/mnist_vae (where the guide's examples look), and a
    model, guide and data x from it."""
    import pyrovae
    from pyrovae.run import cli

    where = tmp_path_factory.mktemp("docs")
    sets = [
        "data.train_size=512",
        "data.val_limit=64",
        "data.test_limit=64",
        "train.epochs=1",
        "eval_samples=4",
    ]
    args = ["fit", str(ROOT / "configs" / "mnist_vae.toml"), "--run-dir", str(where / "runs" / "mnist_vae")]
    assert cli.main([*args, "--no-progress", *(a for s in sets for a in ("--set", s))]) == 0
    run = pyrovae.load_run(where / "runs" / "mnist_vae", device="cpu")
    x = pyrovae.evaluation_data(run.config, "test").images[:12]
    return where, {"model": run.model, "guide": run.guide, "x": x}


@pytest.mark.parametrize("page, index, code", BLOCKS, ids=lambda v: v.stem if isinstance(v, Path) else None)
def test_every_example_of_the_guide_runs(page, index, code, trained, monkeypatch):
    where, names = trained
    monkeypatch.chdir(where)
    exec(compile(code, f"{page}:{index}", "exec"), dict(names))


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    """A broken cross-reference, a docstring Sphinx cannot read or a missing page fails."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "_generated" / "api" / "pyrovae.inference.html").exists()
    assert (tmp_path / "_generated" / "notebooks" / "quickstart.html").exists()


def test_every_public_name_has_a_docstring():
    """Each name a package facade exports: a function or class with its own docstring (not the
    one a dataclass writes), a constant with a ``#:`` comment (what the API reference shows)."""
    import importlib
    import inspect

    from sphinx.pycode import ModuleAnalyzer

    from pyrovae.facade import _exports, _is_module

    missing = []
    for init in [ROOT / "pyrovae" / "__init__.py", *sorted((ROOT / "pyrovae").glob("*/__init__.py"))]:
        for module, attribute in _exports(str(init)).values():
            if _is_module(f"{module}.{attribute}"):
                continue
            obj = getattr(importlib.import_module(module), attribute)
            if inspect.isclass(obj) or callable(obj):
                doc = (obj.__doc__ or "").strip()
                ok = bool(doc) and not doc.startswith(f"{attribute}(")  # a dataclass's own signature
            else:
                ok = ("", attribute) in ModuleAnalyzer.for_module(module).find_attr_docs()
            if not ok:
                missing.append(f"{module}.{attribute}")
    assert not missing, sorted(set(missing))


def test_every_config_key_has_its_meaning_in_the_code():
    """The config reference is generated from the fields' ``#:`` comments: none may be missing."""
    import dataclasses

    from sphinx.pycode import ModuleAnalyzer

    from pyrovae.run.config import Config, DataConfig
    from pyrovae.training.settings import TrainConfig

    bare = []
    for cls in (Config, DataConfig, TrainConfig):
        docs = ModuleAnalyzer.for_module(cls.__module__).find_attr_docs()
        bare += [
            f"{cls.__name__}.{f.name}"
            for f in dataclasses.fields(cls)
            if not docs.get((cls.__name__, f.name))
        ]
    assert not bare, bare


def _marked(text: str, mark: str) -> str:
    return re.search(rf"<!-- {re.escape(mark)} -->\n```\w+\n(.*?)```", text, re.S).group(1)


def test_the_own_model_tutorial_runs_as_written(tmp_path, capsys):
    """The tutorial's file and config, saved as it says, and its commands run from their folder
    (on a slice of MNIST, few samples), then its comparison against a default VAE."""
    from helpers import run_cli

    text = OWN_MODEL.read_text()
    for name in ("twosite.py", "two.toml"):
        (tmp_path / name).write_text(_marked(text, f"file: {name}"))
    small = ["--set", "data.train_size=512", "--set", "data.val_limit=64", "--set", "data.test_limit=64"]
    small += ["--set", "train.epochs=1", "--set", "eval_samples=20"]
    extra = {"fit": small, "evaluate": [], "diagnose": ["--limit", "32", "--num-samples", "20"]}
    commands = [line.split("#")[0].split() for line in _marked(text, "commands").splitlines() if line.strip()]
    default = ["fit", str(ROOT / "configs" / "mnist_vae.toml"), "--run-dir", "runs/mnist_vae", *small]
    said = []
    for args in [*commands, ["pyrovae", *default], ["pyrovae", "evaluate", "runs/mnist_vae"]]:
        assert args[0] == "pyrovae"
        out = run_cli([*args[1:], *extra.get(args[1], []), "--no-progress"], tmp_path)
        said.append(out.warned.count("do not broadcast over a leading particle dim"))
    assert said[:3] == [0, 1, 1] and said[-1] == 0  # the two-site pair's evaluate and diagnose: once each
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(_marked(text, "compare"), str(OWN_MODEL), "exec"), {})
    finally:
        os.chdir(old)
    assert "two-site VAE minus default VAE" in capsys.readouterr().out
    for name in ("samples.png", "latent.png", "reconstructions.png", "eval_test.json", "diagnostics.json"):
        assert (tmp_path / "runs" / "two" / name).exists()
