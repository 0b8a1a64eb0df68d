"""Long runs: an evaluation killed in the middle (SIGKILL) and started again continues from its
kept chunks to the numbers of an uninterrupted one, bit for bit, on a plain Pyro pair written
here; the kept chunks of another pass are not taken for this one; every process that trains a
run is a segment with its wall and CPU time; a resume extends a run, but not its cosine."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import PYRO_PAIR, run_cli

import pyrovae
from pyrovae.errors import ConfigError
from pyrovae.guides import MLPGuide
from pyrovae.models import VAE
from pyrovae.run.config import Config
from pyrovae.run.experiment import resumed_config
from pyrovae.training.segments import read_segments, totals
from pyrovae.training.settings import TrainConfig

CONFIG = """
run_dir = "{run}"
device = "cpu"
[model]
name = "longpair:Decoder"
[guide]
name = "longpair:Encoder"
[data]
train_size = 256
val_limit = 32
[train]
epochs = 1
batch_size = 32
"""
EVAL = ["--limit", "60", "--num-samples", "12000", "--threads", "1", "--compile", "capture"]


def kept_done(path) -> int:
    try:
        return torch.load(path, weights_only=True)["done"]
    except Exception:  # not written yet, or being replaced
        return 0


def test_a_killed_evaluation_continues_to_the_same_numbers(tmp_path):
    (tmp_path / "longpair.py").write_text(PYRO_PAIR)
    (tmp_path / "pair.toml").write_text(CONFIG.format(run=tmp_path / "run"))
    run_cli(["fit", "pair.toml", "--no-progress", "--threads", "1"], tmp_path)
    shutil.copytree(tmp_path / "run", tmp_path / "again")
    run_cli(["evaluate", "run", *EVAL, "--no-progress"], tmp_path)
    whole = torch.load(tmp_path / "run" / "eval_test.pt", weights_only=True)["is"]

    again, kept = tmp_path / "again", tmp_path / "again" / "eval_test.kept.pt"
    cmd = [sys.executable, "-m", "pyrovae", "evaluate", "again", *EVAL, "--keep-every", "0"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(tmp_path)}, text=True)
    while kept_done(kept) < 6 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the evaluation ended before it was killed"
    stopped = kept_done(kept)
    assert 6 <= stopped < 60  # killed in the middle, its finished chunks on disk

    out = run_cli(["evaluate", "again", *EVAL, "--keep-every", "0", "--no-progress"], tmp_path)
    resumed = torch.load(again / "eval_test.pt", weights_only=True)["is"]
    assert {k: torch.equal(v, resumed[k]) for k, v in whole.items()} == dict.fromkeys(whole, True)
    assert not kept.exists()  # removed once eval_test.json is written
    summary = json.loads((again / "eval_test.json").read_text())
    assert summary["resumed_from"] == stopped and summary["segments"]["segments"] == 2
    segments = read_segments(again / "eval_test.segments.jsonl")
    assert [s["resumed"] for s in segments] == [False, True] and segments[-1]["done"] == 60
    assert f"from datapoint {stopped} of 60" in out.stdout

    # kept chunks of another pass (another K) are not this one's: it starts from the beginning
    torch.save(torch.load(tmp_path / "run" / "eval_test.pt", weights_only=True), again / "unused.pt")
    shutil.copy(again / "eval_test.json", tmp_path / "first.json")
    fake = {"key": {"num_samples": 7}, "done": 30, "out": torch.zeros(5, 60)}
    torch.save(fake, kept)
    run_cli(["evaluate", "again", *EVAL, "--keep-every", "0", "--no-progress"], tmp_path)
    assert "resumed_from" not in json.loads((again / "eval_test.json").read_text())
    assert torch.equal(
        torch.load(again / "eval_test.pt", weights_only=True)["is"]["log_likelihood"], whole["log_likelihood"]
    )


def test_a_resume_extends_a_run_but_not_its_cosine():
    stored = Config(train=TrainConfig(epochs=4))
    longer = resumed_config(stored, ["train.epochs=40"])
    assert longer.train.epochs == 40
    cosine = Config(train=TrainConfig(epochs=4, lr_schedule="cosine"))
    assert resumed_config(cosine, ["device=cpu"]).device == "cpu"
    for key in ("train.epochs=40", "train.max_steps=9"):
        with pytest.raises(
            ConfigError, match='cannot change train.* a run with train.lr_schedule = "cosine"'
        ):
            resumed_config(cosine, [key])


def test_each_process_that_trains_a_run_is_a_segment(tmp_path):
    """pyrovae.fit from Python: a run stopped after 3 steps and resumed has two segments, the
    second from the first's last checkpoint, each with its wall and CPU seconds."""
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((64, 1, 4, 4), 0.3), generator=torch.Generator().manual_seed(1))

    def fit(**train):
        torch.manual_seed(0)
        model, guide = VAE((1, 4, 4), 2, hidden=[8]), MLPGuide((1, 4, 4), 2, hidden=[8])
        cfg = TrainConfig(epochs=2, batch_size=16, checkpoint_every=1, **train)
        return pyrovae.fit(
            model, guide, x, config=cfg, device="cpu", run_dir=tmp_path, progress=False, resume=not train
        )

    fit(max_steps=3)
    fit()
    one, two = read_segments(tmp_path / "segments.jsonl")
    assert (one["segment"], one["resumed"], one["step_from"], one["step"]) == (1, False, 0, 3)
    assert (two["segment"], two["resumed"], two["step_from"], two["step"]) == (2, True, 3, 8)
    assert all(s["cpu_s"] > 0 and s["wall_s"] > 0 and s["threads"] >= 1 for s in (one, two))
    assert totals([one, two])["segments"] == 2
