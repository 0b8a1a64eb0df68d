"""The README's example and the notebooks run as written."""

import re
from pathlib import Path

import matplotlib
import nbformat
import pytest
from nbclient import NotebookClient

matplotlib.use("Agg")

ROOT = Path(__file__).parents[1]


def test_readme_example_runs(capsys):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- example -->\n```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["result"].step == 2 * 40  # 5000 images, batch 128
    assert namespace["result"].compile == "capture"  # as the README says
    mean = namespace["mean"]
    assert -300 < mean < namespace["log_px"].mean().item() < -100
    assert "validation ELBO" in capsys.readouterr().out


def test_readme_tutorial_idiom_runs_captured(capsys):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- example-tutorial -->\n```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["result"].step == 16  # 2000 images, batch 128
    assert namespace["result"].compile == "capture"
    assert "capture" in capsys.readouterr().out


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_there():
    expected = {"quickstart", "own_model", "own_data", "diagnostics", "priors", "cvae"}
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
