"""Datasets with ground-truth factors: MNIST digits moved on a known grid (from the real MNIST
files), dSprites from a file written in its published format, and `pyrovae diagnose
--disentanglement` on a run trained on them."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrovae.data import factors as fx
from pyrovae.data import load_split
from pyrovae.data.factors import load_factors
from pyrovae.data.splits import data_root, torchvision_dataset
from pyrovae.errors import DataError

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture(scope="module")
def test_split():
    return load_split("mnist_factors", "test"), load_factors("mnist_factors", "test")


def test_mnist_factors_hold_every_grid_combination_of_real_test_digits(test_split):
    split, factors = test_split
    assert split.images.shape == (7500, 1, 28, 28) and split.images.dtype == torch.uint8
    assert factors.shape == (7500, 5) and torch.equal(split.labels, factors[:, 0])
    rows, counts = torch.unique(factors, dim=0, return_counts=True)
    grid = 10 * len(fx.ROTATIONS) * len(fx.SCALES) * len(fx.SHIFTS) ** 2
    assert len(rows) == grid and (counts == fx.BASES["test"]).all()  # every combination, per base image
    mnist = torchvision_dataset("mnist", data_root(), train=False)
    first_three = mnist.data[(mnist.targets == 3).nonzero()[0, 0]]
    identity = (factors == torch.tensor([3, 2, 1, 2, 2])).all(1).nonzero()[0, 0]  # 0 degrees, x1, no shift
    torch.testing.assert_close(split.images[identity, 0], first_three, atol=1, rtol=0)
    right = (factors == torch.tensor([3, 2, 1, 4, 2])).all(1).nonzero()[0, 0]  # 4 pixels right
    torch.testing.assert_close(split.images[right, 0, :, 4:], first_three[:, :-4], atol=1, rtol=0)


def write_dsprites(root: Path, n_per: int = 2) -> np.ndarray:
    """A small file in the published layout: imgs (N, 64, 64) uint8, latents_classes and
    latents_values (N, 6), and a pickled metadata dict, as the real .npz holds them."""
    grid = itertools.product(range(3), range(2), range(2), range(n_per), range(n_per))
    classes = np.array([(0, *rest) for rest in grid])
    imgs = np.zeros((len(classes), 64, 64), dtype=np.uint8)
    for i, (_, shape, scale, _, x, y) in enumerate(classes):
        imgs[i, 10 * y + 5 : 10 * y + 10 + 2 * scale, 10 * x + 5 : 10 * x + 10 + shape] = 1
    (root / "dsprites").mkdir(parents=True)
    metadata = np.array({"date": "fixture"}, dtype=object)
    values = classes.astype(np.float64)
    np.savez(root / "dsprites" / fx.DSPRITES_FILE, imgs=imgs, latents_classes=classes, latents_values=values,
             metadata=metadata)  # fmt: skip
    return classes


def test_dsprites_reads_its_published_npz(tmp_path):
    classes = write_dsprites(tmp_path)
    test = load_split("dsprites", "test", root=tmp_path, pixels="static")
    factors = load_factors("dsprites", "test", root=tmp_path)
    assert test.images.shape == (5, 1, 64, 64)  # every tenth of 48 images
    np.testing.assert_array_equal(
        test.values().numpy()[:, 0], np.load(tmp_path / "dsprites" / fx.DSPRITES_FILE)["imgs"][::10]
    )
    np.testing.assert_array_equal(factors.numpy(), classes[::10, 1:])
    train = load_factors("dsprites", "train", root=tmp_path, val_size=2)
    assert len(train) == 48 - 5 - 2
    with pytest.raises(DataError, match="dsprites is not at"):
        load_split("dsprites", "test", root=tmp_path / "nowhere")
    with pytest.raises(DataError, match="has no ground-truth factors"):
        load_factors("mnist", "test")


def pyrovae(*args, check=True):
    out = subprocess.run([sys.executable, "-m", "pyrovae", *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"pyrovae {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def test_diagnose_scores_disentanglement_on_a_factor_dataset(tmp_path):
    run = tmp_path / "run"
    sets = ['data.name="mnist_factors"', "data.train_size=3000", "data.val_limit=200", "data.test_limit=400"]
    sets += ["train.epochs=1", "model.latent_dim=6", "eval_samples=10"]
    pyrovae("fit", str(CONFIGS / "mnist_vae.toml"), "--run-dir", str(run), "--device", "cpu", "--no-progress",
            *[a for s in sets for a in ("--set", s)])  # fmt: skip
    out = pyrovae(
        "diagnose", str(run), "--limit", "400", "--num-samples", "30", "--disentanglement", "--no-progress"
    )
    d = json.loads((run / "diagnostics.json").read_text())["disentanglement"]
    assert d["factors"] == ["digit", "rotation", "scale", "x", "y"] and d["num_datapoints"] == 400
    for key in ("mig", "dci_disentanglement", "dci_completeness", "sap"):
        assert 0 <= d[key] <= 1, key
    assert 0 < d["dci_informativeness"] <= 1 and 0 < d["factor_vae"]["mean"] <= 1
    assert "MIG" in out.stdout and "FactorVAE" in out.stdout
