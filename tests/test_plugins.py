"""Models and guides from the user's own module (an import path in the config) and from an installed
plugin package (entry points), through every command; fit --resume with overrides; checkpoints
that cannot be read; seeds of sample and evaluate."""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import run_cli

MODULE = '''
"""A two-site VAE of the user's own, written as Pyro's examples write it."""
import pyro
import pyro.distributions as dist
import torch
from torch import nn


class TwoSiteVAE(nn.Module):
    """style ~ StudentT(3, 0, 1)^2, content ~ N(0, I_6), x ~ Bernoulli(f(style, content))."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.dec = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 784))

    def forward(self, x):
        n = x.shape[0]
        with pyro.plate("data", n):
            s = pyro.sample("style", dist.StudentT(3.0, x.new_zeros(n, 2), 1.0).to_event(1))
            c = pyro.sample("content", dist.Normal(x.new_zeros(n, 6), 1.0).to_event(1))
            logits = self.dec(torch.cat([s, c], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x.reshape(n, -1))


class TwoSiteGuide(nn.Module):
    """q(style | x) q(content | x, style), the draw concatenated with the (N, H) feature."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU())
        self.style, self.content = nn.Linear(hidden, 4), nn.Linear(hidden + 2, 12)

    def forward(self, x):
        h = self.enc(x)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.style(h).chunk(2, -1)
            s = pyro.sample("style", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))
            loc, raw = self.content(torch.cat([h, s], -1)).chunk(2, -1)
            pyro.sample("content", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))
'''

CONFIG = """
run_dir = "{run}"
device = "cpu"
eval_samples = 20
[model]
name = "{model}"
[guide]
name = "{guide}"
[data]
train_size = 256
val_limit = 64
test_limit = 32
[train]
epochs = 1
batch_size = 64
"""


def pyrovae(*args, cwd, check=True):
    """``pyrovae ARGS --no-progress`` run in this process from ``cwd``: exit code, what it
    printed on stdout, and on stderr with the warnings it gave."""
    return run_cli([*args, "--no-progress"], cwd, check)


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """A run of a model and guide named by import path, its module beside the config."""
    home = tmp_path_factory.mktemp("own")
    (home / "ownsite.py").write_text(MODULE)  # a name no other test's module has: one process
    config = home / "two.toml"
    run = home / "runs" / "two"
    config.write_text(CONFIG.format(run=run, model="ownsite:TwoSiteVAE", guide="ownsite:TwoSiteGuide"))
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # the module is found beside the config
    out = pyrovae("fit", str(config), cwd=elsewhere)
    assert "trained 4 steps" in out.stdout
    return run, elsewhere


def test_an_import_path_reaches_every_command(own_run):
    run, elsewhere = own_run
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["model"]["name"] == "ownsite:TwoSiteVAE" and recorded["paths"] == [str(run.parents[1])]
    for name in ("samples.png", "reconstructions.png", "latent.png"):
        assert (run / name).stat().st_size > 0
    out = pyrovae("evaluate", str(run), "--num-samples", "20", cwd=elsewhere)
    assert "log p(x)" in out.stdout
    report = json.loads((run / "eval_test.json").read_text())
    assert report["num_datapoints"] == 32 and report["log_likelihood"]["mean"] < 0
    out = pyrovae("diagnose", str(run), "--limit", "16", "--num-samples", "20", cwd=elsewhere)
    assert "active units of style" in out.stdout and "active units of content" in out.stdout
    out = pyrovae("latent", str(run), "--site", "style", cwd=elsewhere)
    assert "latent.png" in out.stdout
    bad = pyrovae("latent", str(run), "--site", "z", cwd=elsewhere, check=False)
    assert bad.returncode == 2 and "latent sites are ['style', 'content']" in bad.stderr


def test_sample_seed_repeats_its_grid(own_run):
    run, elsewhere = own_run
    grids = []
    for seed in (1, 1, 2):
        out = run.parent / f"s{len(grids)}.png"
        pyrovae("sample", str(run), "--seed", str(seed), "--out", str(out), cwd=elsewhere)
        grids.append(out.read_bytes())
    assert grids[0] == grids[1] and grids[0] != grids[2]


def test_a_module_that_cannot_be_imported_is_named_in_one_line(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(run=tmp_path / "r", model="nowhere_at_all:Model", guide="mlp"))
    out = pyrovae("fit", str(config), cwd=tmp_path, check=False)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()
    assert len(last) == 1 and "cannot import module 'nowhere_at_all'" in last[0] and "PYTHONPATH" in last[0]


def test_resume_applies_safe_overrides_and_refuses_the_others(own_run, tmp_path):
    run, elsewhere = own_run
    copy = tmp_path / "two"
    shutil.copytree(run, copy)
    out = pyrovae("fit", "--resume", str(copy), "--set", "train.max_steps=6", cwd=elsewhere)
    assert "train.max_steps = 6" in out.stdout and "trained 6 steps" in out.stdout
    lines = [json.loads(line) for line in (copy / "resumes.jsonl").read_text().splitlines()]
    assert lines[-1]["overrides"] == {"train.max_steps": 6}
    assert json.loads((copy / "config.json").read_text())["train"]["max_steps"] == 6
    for flag in (["--seed", "3"], ["--set", "train.lr=0.1"]):
        bad = pyrovae("fit", "--resume", str(copy), *flag, cwd=elsewhere, check=False)
        assert bad.returncode == 2 and "fit --resume cannot change" in bad.stderr


def test_unreadable_checkpoints_get_one_line_and_last_falls_back(own_run, tmp_path):
    run, elsewhere = own_run
    copy = tmp_path / "two"
    shutil.copytree(run, copy)
    (copy / "best.pt").write_bytes(b"not a checkpoint")
    bad = pyrovae("evaluate", str(copy), cwd=elsewhere, check=False)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "best.pt is not a readable" in lines[0]
    assert "weights_only" not in lines[0]
    (copy / "checkpoint.pt").unlink()
    (copy / "checkpoint.pt").write_bytes(b"torn")
    out = pyrovae("evaluate", str(copy), "--checkpoint", "last", "--num-samples", "5", cwd=elsewhere)
    assert "log p(x)" in out.stdout and "step-" in out.warned


PLUGIN_SETUP = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "pyrovae-twosite"
version = "0.1"

[project.entry-points."pyrovae.models"]
twosite = "twosite_plugin:TwoSiteVAE"

[project.entry-points."pyrovae.guides"]
twosite = "twosite_plugin:TwoSiteGuide"

[tool.setuptools]
py-modules = ["twosite_plugin"]
"""


def test_an_installed_plugin_registers_its_model_and_guide(tmp_path, monkeypatch):
    source, site = tmp_path / "src", tmp_path / "site"
    source.mkdir()
    (source / "pyproject.toml").write_text(textwrap.dedent(PLUGIN_SETUP))
    (source / "twosite_plugin.py").write_text(MODULE)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(site), str(source)], check=True, capture_output=True)
    monkeypatch.syspath_prepend(str(site))  # as PYTHONPATH would
    listing = pyrovae("list", cwd=tmp_path).stdout
    assert "twosite" in listing and "StudentT" in listing
    config = tmp_path / "p.toml"
    config.write_text(CONFIG.format(run=tmp_path / "r", model="twosite", guide="twosite"))
    pyrovae("fit", str(config), cwd=tmp_path)
    out = pyrovae("evaluate", str(tmp_path / "r"), "--num-samples", "5", cwd=tmp_path)
    assert "log p(x)" in out.stdout


def test_estimators_import_as_a_module_and_reprs_are_short():
    code = "from pyrovae.estimators import elbo; import pyrovae; print(pyrovae.estimators.elbo is elbo)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr
    from pyrovae.inference.checks import as_split
    from pyrovae.training.loop import FitResult

    text = repr(as_split(torch.rand(1000, 1, 28, 28)))
    assert text.startswith("Split(1000 images of (1, 28, 28)") and len(text) < 120
    assert len(repr(FitResult(3, 1, -90.0, [{"kind": "step", "loss": 1.0}] * 500))) < 200


def test_evaluate_honours_its_seed_when_given_data(own_run):
    import pyrovae

    run_dir, _ = own_run
    run = pyrovae.load_run(run_dir, device="cpu")
    data = pyrovae.evaluation_data(run.config, "test").head(8)
    first, again, other = (
        pyrovae.evaluate(run, data, num_samples=5, seed=s)["per_datapoint"]["elbo"] for s in (1, 1, 2)
    )
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_a_guide_may_set_its_own_latent_dim():
    from pyrovae.run.config import Config
    from pyrovae.run.recipes import build

    config = Config().override("model.latent_dim=6", "guide.latent_dim=6")
    model, guide = build(config, (1, 28, 28))
    x = torch.rand(3, 1, 28, 28)
    assert guide.params(x)[0].shape == (3, 6)


def test_a_module_in_the_working_directory_is_recorded_for_later_commands(tmp_path):
    home, configs, elsewhere = (tmp_path / d for d in ("home", "configs", "elsewhere"))
    for d in (home, configs, elsewhere):
        d.mkdir()
    (home / "cwdsite.py").write_text(MODULE)
    run = tmp_path / "runs" / "cwd"
    (configs / "c.toml").write_text(
        CONFIG.format(run=run, model="cwdsite:TwoSiteVAE", guide="cwdsite:TwoSiteGuide")
    )
    pyrovae("fit", str(configs / "c.toml"), cwd=home)  # found in the working directory
    assert str(home) in json.loads((run / "config.json").read_text())["paths"]
    sys.modules.pop("cwdsite")  # as a new process would: found again through the recorded folder
    assert "log p(x)" in pyrovae("evaluate", str(run), "--num-samples", "5", cwd=elsewhere).stdout
    broken = configs / "b.toml"
    (home / "brokensite.py").write_text("raise ValueError('a bug in the module')\n")
    broken.write_text(CONFIG.format(run=tmp_path / "b", model="brokensite:M", guide="mlp"))
    out = pyrovae("fit", str(broken), cwd=home, check=False)
    assert (
        out.returncode == 2
        and "importing 'brokensite' failed (ValueError: a bug in the module)" in out.stderr
    )
