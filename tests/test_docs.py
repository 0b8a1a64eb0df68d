"""The README's example and the quickstart notebook run as written."""
import json
import re
from pathlib import Path

import matplotlib

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


def test_quickstart_notebook_runs_in_smoke_mode(monkeypatch):
    nb = json.loads((ROOT / "notebooks" / "quickstart.ipynb").read_text())
    monkeypatch.setenv("PYROVAE_SMOKE", "1")
    monkeypatch.chdir(ROOT / "notebooks")
    namespace: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "quickstart.ipynb", "exec"), namespace)
    assert namespace["report"]["num_datapoints"] == 500
    assert all(Path(p).exists() for p in namespace["paths"])
