"""Each dataset loader on small files written in the dataset's real on-disk format."""

import json

import numpy as np
import pytest
import torch

from pyrovae.data import fixtures
from pyrovae.data import splits as data
from pyrovae.errors import ConfigError, DataError
from pyrovae.run import cli
from pyrovae.run.config import DataConfig


def _load(name, split, root, pixels="8bit", **kw):
    return data.load_split(name, split, pixels=pixels, root=root, **kw)


def test_cifar10_batches_and_archive(tmp_path):
    wrote = fixtures.write_cifar10(tmp_path, per_batch=6, test=7)
    train = _load("cifar10", "train", tmp_path, val_size=5)
    val, test = _load("cifar10", "val", tmp_path, val_size=5), _load("cifar10", "test", tmp_path)
    assert train.images.dtype == torch.uint8 and train.shape == (3, 32, 32)
    assert (len(train), len(val), len(test)) == (25, 5, 7)
    assert np.array_equal(torch.cat([train.images, val.images]).numpy(), wrote["train"][0])
    assert np.array_equal(test.labels.numpy(), wrote["test"][1])
    x = test.observe()
    assert x.dtype == torch.float32 and np.allclose(x.numpy() * 255, wrote["test"][0])
    import tarfile

    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    import shutil

    shutil.rmtree(tmp_path / "cifar-10-batches-py")
    assert torch.equal(_load("cifar10", "test", tmp_path).images, test.images)


def test_svhn_mat(tmp_path):
    wrote = fixtures.write_svhn(tmp_path, train=12, test=5)
    test = _load("svhn", "test", tmp_path)
    assert np.array_equal(test.images.numpy(), wrote["test"][0])
    assert np.array_equal(test.labels.numpy(), wrote["test"][1])  # label 10 read back as digit 0
    assert len(_load("svhn", "train", tmp_path, val_size=2)) == 10


def test_celeba_crop_partition_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROVAE_CACHE", str(tmp_path / "cache"))
    counts = fixtures.write_celeba(tmp_path, n=8)
    test = _load("celeba", "test", tmp_path)
    assert test.shape == (3, 64, 64) and len(test) == counts["test"]
    train = _load("celeba", "train", tmp_path, val_size=1)
    assert len(train) == counts["train"] - 1
    assert list((tmp_path / "cache").glob("celeba64-*.npz"))
    import shutil

    shutil.rmtree(tmp_path / "celeba" / "img_align_celeba")  # read again from the cache
    assert torch.equal(_load("celeba", "test", tmp_path).images, test.images)


def test_omniglot_archives_and_chardata(tmp_path):
    counts = fixtures.write_omniglot(tmp_path, alphabets=2, characters=2, drawers=2)
    train = _load("omniglot", "train", tmp_path, pixels="dynamic", val_size=0)
    assert train.shape == (1, 28, 28) and len(train) == counts["train"]
    assert sorted(train.labels.unique().tolist()) == [0, 1]  # alphabets
    assert train.images.float().mean() < 0.3 * 255  # strokes are the bright (1) pixels, background 0
    wrote = fixtures.write_chardata(tmp_path, train=9, test=4)
    test = _load("omniglot", "test", tmp_path)  # chardata.mat present: the IWAE split
    assert np.array_equal(test.images.numpy(), wrote["test"][0])
    assert np.array_equal(test.labels.numpy(), wrote["test"][1])


def test_folder_classes_split_and_resize(tmp_path):
    written = fixtures.write_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=10, size=(8, 6))
    kw = dict(path=str(tmp_path / "imgs"), test_fraction=0.2)
    train, test = (
        _load("folder", "train", tmp_path, val_size=0, **kw),
        _load("folder", "test", tmp_path, **kw),
    )
    assert (len(train), len(test)) == (24, 6) and train.shape == (3, 8, 6)
    both = torch.cat([train.images, test.images]).numpy()
    assert sorted(map(bytes, both)) == sorted(map(bytes, written))  # the same images, reshuffled
    assert set(train.labels.tolist()) <= {0, 1, 2}
    again = _load("folder", "test", tmp_path, **kw)
    assert torch.equal(again.images, test.images)  # the held-out part is fixed
    grey = _load("folder", "test", tmp_path, size=[4, 4], channels=1, **kw)
    assert grey.shape == (1, 4, 4)
    assert data.image_shape("folder", **kw) == train.shape  # from the first image alone
    assert data.image_shape("folder", size=[4, 4], channels=1, **kw) == grey.shape


def test_tensor_files(tmp_path):
    x = torch.randint(0, 256, (20, 2, 3), dtype=torch.uint8)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", np.arange(20))
    split = _load("tensor", "train", tmp_path, val_size=0, path=str(tmp_path / "x.npy"),
                  labels_path=str(tmp_path / "y.npy"), test_fraction=0.25)  # fmt: skip
    assert split.shape == (1, 2, 3) and len(split) == 15 and split.images.dtype == torch.uint8
    assert torch.equal(split.images[:, 0], x[split.labels])  # labels travel with their images
    torch.save({"images": x.float() / 255, "labels": torch.arange(20)}, tmp_path / "f.pt")
    as_float = _load(
        "tensor", "test", tmp_path, path=str(tmp_path / "f.pt"), test_path=str(tmp_path / "f.pt")
    )
    assert as_float.images.dtype == torch.uint8  # floats that are all k / 255 are stored as 8 bits
    np.savez(tmp_path / "z.npz", images=np.random.rand(10, 1, 4, 4).astype(np.float32))
    cont = _load("tensor", "test", tmp_path, pixels="continuous", path=str(tmp_path / "z.npz"))
    assert cont.images.dtype == torch.float32 and (cont.labels == -1).all()


def _error(tmp_path, name, **kw):
    with pytest.raises(DataError) as e:
        _load(name, "train", tmp_path, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


MISSING = [
    ("cifar10", "cifar-10-batches-py"),
    ("svhn", "train_32x32.mat"),
    ("celeba", "list_eval_partition.txt"),
    ("omniglot", "chardata.mat"),
]


@pytest.mark.parametrize("name,files", MISSING)
def test_missing_files_say_which_and_where(tmp_path, name, files):
    message = _error(tmp_path, name)
    assert files in message and str(tmp_path) in message


def test_bad_own_data_gets_one_line_naming_the_fix(tmp_path):
    from PIL import Image

    (tmp_path / "empty").mkdir()
    assert "holds no images" in _error(tmp_path, "folder", path=str(tmp_path / "empty"))
    mixed = tmp_path / "mixed"
    fixtures.write_folder(mixed, classes=(), per_class=2, size=(5, 5))
    Image.new("RGB", (7, 5)).save(mixed / "zz.png")
    assert "data.size" in _error(tmp_path, "folder", path=str(mixed))
    np.save(tmp_path / "rank.npy", np.zeros((3, 4), np.uint8))
    assert "(N, C, H, W)" in _error(tmp_path, "tensor", path=str(tmp_path / "rank.npy"))
    np.save(tmp_path / "int.npy", np.zeros((3, 1, 4, 4), np.int32))
    assert "uint8" in _error(tmp_path, "tensor", path=str(tmp_path / "int.npy"))
    bad = np.zeros((3, 1, 4, 4), np.float32)
    bad[1, 0, 2, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert "NaN" in _error(tmp_path, "tensor", path=str(tmp_path / "nan.npy"))
    np.savez(tmp_path / "lab.npz", images=np.zeros((3, 1, 4, 4), np.uint8), labels=np.arange(4))
    assert "4 labels for 3 images" in _error(tmp_path, "tensor", path=str(tmp_path / "lab.npz"))
    np.save(tmp_path / "last.npy", np.zeros((3, 5, 5, 3), np.uint8))
    assert "channels-last" in _error(tmp_path, "tensor", path=str(tmp_path / "last.npy"))
    with pytest.raises(ConfigError, match="data.path"):
        DataConfig(name="folder")


def test_cifar_fixture_trains_and_evaluates_from_the_cli(tmp_path, capsys):
    fixtures.write_cifar10(tmp_path / "data", per_batch=8, test=6)
    run = tmp_path / "run"
    sets = ["data.val_size=8", "train.max_steps=3", "train.batch_size=8", "model.channels=[16,8]",
            "guide.channels=[8,16]", "model.latent_dim=4", "model.blocks=1", "guide.blocks=1"]  # fmt: skip
    argv = [
        "fit",
        "configs/cifar10_resnet_dlm.toml",
        "--data-root",
        str(tmp_path / "data"),
        "--run-dir",
        str(run),
    ]
    assert cli.main([*argv, *(a for s in sets for a in ("--set", s)), "--no-progress"]) == 0
    assert cli.main(["evaluate", str(run), "--num-samples", "4", "--no-progress"]) == 0
    out = json.loads((run / "eval_test.json").read_text())
    assert out["num_datapoints"] == 6 and out["discrete"]
    d = 3 * 32 * 32
    assert out["log_likelihood_bits_per_dim"] == pytest.approx(
        -out["log_likelihood"]["mean"] / (d * np.log(2))
    )
    assert "bits per dim" in capsys.readouterr().out


def test_own_folder_trains_from_the_cli_and_pairings_are_checked_first(tmp_path, capsys):
    fixtures.write_folder(tmp_path / "imgs", classes=("a", "b"), per_class=12, size=(8, 8), mode="L")
    base = ["fit", "configs/mnist8bit_conv_dlm.toml", "--run-dir", str(tmp_path / "run"), "--no-progress"]
    sets = ["data.name=folder", f"data.path={tmp_path / 'imgs'}", "train.max_steps=2", "train.batch_size=4",
            "model.channels=[8,4]", "guide.channels=[4,8]", "model.latent_dim=2"]  # fmt: skip
    flags = [a for s in sets for a in ("--set", s)]
    assert cli.main([*base, *flags, "--set", "model.likelihood=bernoulli"]) != 0
    assert "bernoulli likelihood models binary" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written
    assert cli.main([*base, *flags]) == 0
    assert cli.main(["evaluate", str(tmp_path / "run"), "--num-samples", "3", "--no-progress"]) == 0
    out = json.loads((tmp_path / "run" / "eval_test.json").read_text())
    assert out["num_datapoints"] == 2 and out["discrete"]  # a tenth of 24 images held out
    with pytest.warns(UserWarning, match="density"):
        assert (
            cli.main([*base, *flags, "--run-dir", str(tmp_path / "g"), "--set", "model.likelihood=gaussian"])
            == 0
        )
    cli.main(["evaluate", str(tmp_path / "g"), "--num-samples", "3", "--no-progress"])
    assert "not comparable" in capsys.readouterr().out


def test_fit_takes_an_8bit_split_from_python():
    import pyrovae
    from pyrovae.guides import ConvGuide
    from pyrovae.models import VAE
    from pyrovae.training.settings import TrainConfig

    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    split = data.Split(images, torch.full((64,), -1), "8bit")
    model = VAE((3, 8, 8), 2, decoder="conv", channels=[8, 4], likelihood="discretized_logistic")
    guide = ConvGuide((3, 8, 8), 2, channels=[4, 8])
    result = pyrovae.fit(
        model,
        guide,
        split,
        config=TrainConfig(max_steps=30, batch_size=16, lr=1e-2, log_every=5),
        progress=False,
    )
    losses = [r["loss"] for r in result.metrics if r["kind"] == "step" and r.get("loss") is not None]
    assert losses[-1] < losses[0]  # learns the uniform-ish pixels' scale
    assert split.images.dtype == torch.uint8  # still 8-bit: converted batch by batch
