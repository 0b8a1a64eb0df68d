"""Datasets from the data root, pixel modes, the batch iterator and clear errors."""

import gzip
import urllib.error

import pytest
import torch

from pyrovae.data import splits as data
from pyrovae.data.batches import Batches
from pyrovae.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def mnist():
    return {s: data.load_split("mnist", s, pixels="continuous") for s in ("train", "val", "test")}


def test_mnist_splits_hold_out_validation(mnist):
    assert [len(mnist[s]) for s in ("train", "val", "test")] == [50000, 10000, 10000]
    assert mnist["train"].shape == (1, 28, 28)
    assert mnist["train"].images.dtype == torch.uint8  # 8-bit on the device, floats per batch
    x = mnist["train"].values()
    assert x.dtype == torch.float32 and x.min() == 0 and x.max() == 1
    # class counts of the official test set (LeCun et al.), so the right files were read
    assert torch.bincount(mnist["test"].labels).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    # validation = the last 10,000 official training images, disjoint from training
    full = data.load_split("mnist", "train", pixels="continuous", val_size=0)
    assert torch.equal(full.images[50000:], mnist["val"].images)


def test_pixel_modes(mnist):
    x = mnist["train"].slice(500)
    dyn = data.Split(x.images, x.labels, "dynamic")
    a, b = dyn.observe(), dyn.observe()
    assert set(a.unique().tolist()) == {0.0, 1.0} and not torch.equal(a, b)
    # the dynamic draw has the intensities as its mean
    draws = torch.stack([dyn.observe(slice(0, 50)) for _ in range(400)]).mean(0)
    assert (draws - x.values(slice(0, 50))).abs().max() < 0.15
    s1 = data.load_split("mnist", "test", pixels="static").slice(500)
    s2 = data.load_split("mnist", "test", pixels="static").slice(500)
    assert torch.equal(s1.images, s2.images) and set(s1.images.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(s1.observe(), s1.observe())


def test_binarized_mnist():
    sizes = {s: data.load_split("binarized_mnist", s, pixels="static") for s in ("train", "val", "test")}
    assert [len(sizes[s]) for s in ("train", "val", "test")] == [50000, 10000, 10000]
    test = sizes["test"].images
    assert set(test.unique().tolist()) == {0.0, 1.0}
    assert int(test.sum()) == 1_038_896  # number of ones stated with the files
    with pytest.raises(DataError, match="static"):
        data.load_split("binarized_mnist", "test", pixels="dynamic")


def test_corrupt_amat_is_named(tmp_path):
    bad = tmp_path / "BinarizedMNIST" / "binarized_mnist_test.amat.gz"
    bad.parent.mkdir()
    bad.write_bytes(gzip.compress(b"0 1 2\n0 1 0\n"))
    with pytest.raises(DataError, match="binarized_mnist_test.amat.gz is not a binarized-MNIST"):
        data.load_split("binarized_mnist", "test", pixels="static", root=tmp_path)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_missing_dataset_offline_says_where_to_put_which_files(tmp_path, monkeypatch, name, folder):
    import torchvision

    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)  # FashionMNIST inherits it
    with pytest.raises(DataError, match=rf"train-images-idx3-ubyte\.gz.*{folder}/raw"):
        data.load_split(name, "train", root=tmp_path)


def test_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path))
    assert data.data_root("given") == data.data_root("given")
    assert str(data.data_root("given")) == "given"
    assert data.data_root() == tmp_path
    monkeypatch.delenv("PYROVAE_DATA")
    assert str(data.data_root()) == "data"


def test_unknown_names():
    with pytest.raises(ConfigError, match="Did you mean 'mnist'"):
        data.load_split("mnsit", "train")
    with pytest.raises(ConfigError, match="pixel mode"):
        data.load_split("mnist", "train", pixels="binary")


def test_batches_cover_each_datapoint_once_and_resume():
    split = data.Split(torch.arange(10.0)[:, None], torch.zeros(10), "continuous")
    batches = Batches(split, 4, seed=3)
    assert len(batches) == 3
    epoch0 = list(batches.epoch(0))
    assert [len(b) for b in epoch0] == [4, 4, 2]
    assert sorted(torch.cat(epoch0)[:, 0].tolist()) == list(range(10))
    assert not torch.equal(torch.cat(epoch0), torch.cat(list(batches.epoch(1))))
    assert all(torch.equal(a, b) for a, b in zip(epoch0[1:], batches.epoch(0, start=1)))


def test_ranks_split_each_global_batch_of_one_permutation():
    split = data.Split(torch.arange(11.0)[:, None], torch.zeros(11), "continuous")
    single = list(Batches(split, 4, seed=5).epoch(2))  # global batches of 2 ranks x 2
    ranks = [list(Batches(split, 2, seed=5, rank=r, world=2).epoch(2)) for r in range(2)]
    assert len(Batches(split, 2, seed=5, rank=0, world=2)) == 3
    for b, whole in enumerate(single):  # 4, 4, 3: the last split 2 + 1
        assert torch.equal(torch.cat([ranks[0][b], ranks[1][b]]), whole)
    assert [len(b) for b in ranks[1]] == [2, 2, 1]
    tiny = data.Split(torch.arange(9.0)[:, None], torch.zeros(9), "continuous")
    assert len(Batches(tiny, 4, rank=0, world=2)) == 1  # a last batch of 1 cannot feed 2 ranks
    with pytest.raises(DataError, match="among 4 ranks"):
        Batches(data.Split(torch.zeros(3, 1), torch.zeros(3), "continuous"), 1, rank=0, world=4)


def test_unpacking_is_atomic_and_ignores_a_half_written_file(tmp_path, monkeypatch):
    """A run started beside another that is unpacking the same archives reads only complete files:
    an unpacked file without its archive copy beside it (a writer mid-way) is unpacked afresh."""
    monkeypatch.setenv("PYROVAE_CACHE", str(tmp_path / "cache"))
    raw = data.data_root() / "MNIST" / "raw"
    cached = tmp_path / "cache" / "torchvision" / "MNIST" / "raw"
    cached.mkdir(parents=True)
    for archive in raw.glob("*.gz"):
        (cached / archive.stem).write_bytes(gzip.decompress(archive.read_bytes()))
        (cached / archive.name).write_bytes(archive.read_bytes())
    half = cached / "t10k-images-idx3-ubyte"
    half.write_bytes(half.read_bytes()[:1000])
    (cached / "t10k-images-idx3-ubyte.gz").unlink()  # its writer has not finished
    test = data.load_split("mnist", "test", root=data.data_root())
    assert len(test) == 10000 and torch.bincount(test.labels)[0] == 980
    assert half.stat().st_size == 16 + 10000 * 28 * 28
    assert [p.name for p in cached.parent.parent.iterdir()] == ["MNIST"]  # no private folder left
    before = half.stat().st_mtime_ns
    data.load_split("mnist", "train", root=data.data_root())
    assert half.stat().st_mtime_ns == before  # complete and current: kept
