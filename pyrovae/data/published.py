"""Readers of image datasets in their published on-disk formats, offline: uint8 (N, C, H, W).

Each reader takes the data root and returns ``{"train": (images, labels), "test": (...)}``
with images as uint8 tensors and labels as int64 (-1 where a dataset has none). A missing
file is a :class:`~pyrovae.errors.DataError` naming the files and where to put them.

- ``cifar10``: ``cifar-10-batches-py/`` (the pickled batches) or ``cifar-10-python.tar.gz``;
- ``svhn``: ``svhn/train_32x32.mat`` and ``svhn/test_32x32.mat`` (cropped digits, label 10 is 0);
- ``celeba``: ``celeba/img_align_celeba/`` (or ``img_align_celeba.zip``) and
  ``celeba/list_eval_partition.txt``; each image centre-cropped to 148 x 148 and resized to
  64 x 64 (bilinear), the crop of Larsen et al. (2016) and most VAE papers; the decoded
  arrays are kept in the cache;
- ``omniglot``: the IWAE split (Burda et al. 2015) from ``omniglot/chardata.mat`` when it is
  there, else torchvision's ``omniglot-py/images_background`` and ``images_evaluation``
  (folders or zips), strokes as 1, resized to 28 x 28.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from pyrovae.data.splits import CELEBA_SIZE
from pyrovae.errors import DataError

CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CELEBA_CROP = 148  #: the centre square cut from each 178x218 image, then resized to CELEBA_SIZE


def _pair(images: np.ndarray, labels) -> tuple[torch.Tensor, torch.Tensor]:
    labels = np.full(len(images), -1) if labels is None else np.asarray(labels).reshape(-1)
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)), torch.from_numpy(
        labels.astype(np.int64)
    )


def _missing(name: str, where: Path, what: str) -> DataError:
    return DataError(
        f"{name}: {what} not found in {where}. Put the files there (downloaded elsewhere), or point "
        "--data-root / $PYROVAE_DATA at a folder holding them"
    )


def _unpickle(raw: bytes, where: str) -> tuple[np.ndarray, list]:
    try:
        batch = pickle.loads(raw, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return data, list(batch[b"labels"])
    except Exception as e:  # noqa: BLE001 - a foreign pickle fails in many ways
        raise DataError(f"{where} is not a CIFAR-10 batch ({type(e).__name__}: {e}); replace it") from e


def cifar10(root: Path) -> dict:
    """CIFAR-10 (Krizhevsky 2009) from its python pickled batches: 50,000 / 10,000 3x32x32."""
    folder, archive = root / "cifar-10-batches-py", root / "cifar-10-python.tar.gz"
    raws: dict[str, bytes] = {}
    if all((folder / f).exists() for f in CIFAR_FILES):
        raws = {f: (folder / f).read_bytes() for f in CIFAR_FILES}
    elif archive.exists():
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                if Path(member.name).name in CIFAR_FILES:
                    raws[Path(member.name).name] = tar.extractfile(member).read()
    if set(raws) != set(CIFAR_FILES):
        raise _missing(
            "cifar10", root, "cifar-10-batches-py/{data_batch_1..5,test_batch} or cifar-10-python.tar.gz"
        )
    parts = [_unpickle(raws[f], f) for f in CIFAR_FILES]
    train = (np.concatenate([p[0] for p in parts[:5]]), sum((p[1] for p in parts[:5]), []))
    return {"train": _pair(*train), "test": _pair(*parts[5])}


def svhn(root: Path) -> dict:
    """SVHN cropped digits (Netzer et al. 2011) from its MATLAB files: X (32, 32, 3, N), y (N, 1)."""
    from scipy.io import loadmat

    out = {}
    for split in ("train", "test"):
        path = root / "svhn" / f"{split}_32x32.mat"
        if not path.exists():
            raise _missing("svhn", root / "svhn", f"{split}_32x32.mat")
        try:
            mat = loadmat(path)
            images, labels = mat["X"].transpose(3, 2, 0, 1), mat["y"].reshape(-1) % 10
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path} is not an SVHN .mat file ({type(e).__name__}: {e}); replace it") from e
        out[split] = _pair(images, labels)
    return out


def _celeba_image(raw: bytes) -> np.ndarray:
    from PIL import Image

    image = Image.open(io.BytesIO(raw)).convert("RGB")
    w, h = image.size
    left, top = (w - CELEBA_CROP) // 2, (h - CELEBA_CROP) // 2
    image = image.crop((left, top, left + CELEBA_CROP, top + CELEBA_CROP))
    return np.asarray(image.resize((CELEBA_SIZE, CELEBA_SIZE), Image.BILINEAR)).transpose(2, 0, 1)


def celeba(root: Path, cache: Path) -> dict:
    """CelebA aligned faces (Liu et al. 2015), official partition (train 0, valid 1, test 2;
    valid joins train), 3x64x64 after the centre 148 crop."""
    folder = root / "celeba"
    partition = folder / "list_eval_partition.txt"
    if not partition.exists():
        raise _missing("celeba", folder, "list_eval_partition.txt")
    names = [line.split() for line in partition.read_text().splitlines() if line.strip()]
    stamp = cache / f"celeba64-{partition.stat().st_size}-{len(names)}.npz"
    if stamp.exists():
        with np.load(stamp) as z:
            return {s: _pair(z[s], None) for s in ("train", "test")}
    images_dir, archive = folder / "img_align_celeba", folder / "img_align_celeba.zip"
    if images_dir.is_dir():
        read = lambda n: (images_dir / n).read_bytes()  # noqa: E731
    elif archive.exists():
        zf = zipfile.ZipFile(archive)
        members = {Path(m).name: m for m in zf.namelist()}
        read = lambda n: zf.read(members[n])  # noqa: E731
    else:
        raise _missing("celeba", folder, "img_align_celeba/ (or img_align_celeba.zip)")
    split: dict[str, list] = {"train": [], "test": []}
    for name, part in names:
        try:
            split["test" if part == "2" else "train"].append(_celeba_image(read(name)))
        except (KeyError, FileNotFoundError) as e:
            raise _missing("celeba", images_dir, f"image {name} (listed in {partition.name})") from e
    arrays = {s: np.stack(v) if v else np.zeros((0, 3, 64, 64), np.uint8) for s, v in split.items()}
    cache.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(stamp)
    return {s: _pair(a, None) for s, a in arrays.items()}


def _omniglot_iwae(path: Path) -> dict:
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
        out = {}
        for split, key, target in (("train", "data", "targetchar"), ("test", "testdata", "testtargetchar")):
            # stored column-major (the IWAE code reshapes with order="F"): transpose each image
            images = mat[key].T.reshape(-1, 28, 28).transpose(0, 2, 1)[:, None]
            labels = mat[target].reshape(-1) - 1 if target in mat else None
            out[split] = _pair(np.round(images * 255), labels)
        return out
    except (KeyError, ValueError) as e:
        raise DataError(f"{path} is not the IWAE chardata.mat ({type(e).__name__}: {e}); replace it") from e


def _omniglot_pngs(files: list[tuple[str, bytes]]) -> tuple[np.ndarray, list[int]]:
    from PIL import Image

    alphabets = sorted({Path(n).parts[-3] for n, _ in files})
    images, labels = [], []
    for name, raw in sorted(files):
        image = Image.open(io.BytesIO(raw)).convert("L").resize((28, 28), Image.BILINEAR)
        images.append(255 - np.asarray(image)[None])  # strokes are black on white: make them 1
        labels.append(alphabets.index(Path(name).parts[-3]))
    return np.stack(images), labels


def omniglot(root: Path) -> dict:
    """Omniglot (Lake et al. 2015) as 1x28x28 grey levels: the IWAE split when
    ``omniglot/chardata.mat`` is there (labels: character), else torchvision's background
    (train) and evaluation (test) sets (labels: alphabet)."""
    if (root / "omniglot" / "chardata.mat").exists():
        return _omniglot_iwae(root / "omniglot" / "chardata.mat")
    folder, out = root / "omniglot-py", {}
    for split, part in (("train", "images_background"), ("test", "images_evaluation")):
        files = [(str(p), p.read_bytes()) for p in sorted((folder / part).rglob("*.png"))]
        if not files and (folder / f"{part}.zip").exists():
            with zipfile.ZipFile(folder / f"{part}.zip") as zf:
                files = [(n, zf.read(n)) for n in zf.namelist() if n.endswith(".png")]
        if not files:
            raise _missing(
                "omniglot", root, f"omniglot/chardata.mat, or .png images in omniglot-py/{part}(.zip)"
            )
        out[split] = _pair(*_omniglot_pngs(files))
    return out
