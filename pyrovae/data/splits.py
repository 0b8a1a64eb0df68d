"""Datasets as tensors on the training device and pixel modes (batches: :mod:`pyrovae.data.batches`).

A split is loaded once into one tensor of shape (N, C, H, W) on the device: uint8 for 8-bit
and binarized images (a quarter of float32's memory), converted to floats in [0, 1] batch by
batch, and batched by indexing a shuffled permutation, so the training step does no
per-sample work. Pixel modes:

- ``dynamic``: x ~ Bernoulli(intensity), resampled each time a batch is drawn
  (Burda et al. 2015, section 5);
- ``static``: binarized once with a fixed seed (or the fixed binarization of
  ``binarized_mnist``, Salakhutdinov & Murray 2008);
- ``8bit``: the 256 levels k / 255 of 8-bit images, for the discrete likelihoods
  (:mod:`pyrovae.blocks.discretized`), whose log p(x) is a probability and gives bits/dim;
- ``continuous``: grey levels in [0, 1] (k / 255 for 8-bit images), for densities.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyrovae import data as formats  # own and published: their readers load when first used
from pyrovae.errors import DataError, unknown_name

NAMED = ("mnist", "fashion_mnist", "binarized_mnist", "cifar10", "svhn", "celeba", "omniglot")
NAMED += ("mnist_factors", "dsprites")  # with ground-truth factors: pyrovae.data.factors
#: folder: data.path = DIR; tensor: data.path = FILE; then the sequences (pyrovae.data.sequences)
DATASETS = (*NAMED, "folder", "tensor", "chorales", "jsb", "sequences")
PIXEL_MODES = ("dynamic", "static", "8bit", "continuous")  #: how stored images become observations
CELEBA_SIZE = 64  #: CelebA images are cropped and resized to this square (pyrovae.data.published)
SHAPES = {name: (1, 28, 28) for name in ("mnist", "fashion_mnist", "binarized_mnist", "omniglot")}
SHAPES.update(cifar10=(3, 32, 32), svhn=(3, 32, 32), celeba=(3, CELEBA_SIZE, CELEBA_SIZE))
SHAPES.update(mnist_factors=(1, 28, 28), dsprites=(1, 64, 64))
#: piano rolls of 88 keys; 0 steps stands for any length (each batch is cut to its longest sequence)
SHAPES.update(chorales=(0, 88), jsb=(0, 88))
DEFAULT_VAL_SIZE = {"mnist": 10000, "fashion_mnist": 10000, "cifar10": 5000, "svhn": 5000, "celeba": 10000,
                    "omniglot": 1000}  # fmt: skip  # images held out of the training set; own data: a tenth
DEFAULT_VAL_SIZE.update(mnist_factors=3000, dsprites=10000)
STATIC_BINARIZATION_SEED = 1234  #: seed of the one binarization of pixels = "static"
EVAL_BINARIZATION_SEED = 104729  #: seed of the one binarization a dynamic test set is evaluated on
VAL_BINARIZATION_SEED = 7919  #: likewise for the validation set during training

_TORCHVISION = {
    "mnist": (
        "MNIST",
        [
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ],
    ),
    "fashion_mnist": (
        "FashionMNIST",
        [
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ],
    ),
}
BINARIZED_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
BINARIZED_MNIST_SIZES = {"train": 50000, "valid": 10000, "test": 10000}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$PYROVAE_DATA``, else ``./data``."""
    if root is None:
        root = os.environ.get("PYROVAE_DATA") or "data"
    return Path(root).expanduser()


def cache_dir() -> Path:
    """Where pyrovae unpacks archives it must not write beside: ``$PYROVAE_CACHE`` or ``~/.cache/pyrovae``."""
    return Path(os.environ.get("PYROVAE_CACHE") or Path.home() / ".cache" / "pyrovae")


@dataclass
class Split:
    """One split of a dataset: ``images`` (N, C, H, W) and ``labels`` (N,). Float images hold
    values in [0, 1]; uint8 images hold levels 0..``maximum`` (255, or 1 once binarized),
    divided by ``maximum`` as each batch is drawn."""

    images: torch.Tensor
    labels: torch.Tensor
    pixels: str
    maximum: int = 255

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        kind = f"{str(self.images.dtype)[6:]} on {self.images.device}, pixels={self.pixels!r}"
        return f"Split({len(self)} images of {self.shape}, {kind}, {int((self.labels >= 0).sum())} labelled)"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device), self.pixels, self.maximum)

    def slice(self, n: int | None) -> "Split":
        if n is None or n >= len(self):
            return self
        return Split(self.images[:n], self.labels[:n], self.pixels, self.maximum)

    def values(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """The stored values for ``index`` as floats in [0, 1] (before any binarization)."""
        x = self.images if index is None else self.images[index]
        if x.dtype == torch.uint8:
            return x.to(torch.get_default_dtype()).div_(self.maximum)
        return x

    def observe(
        self, index: torch.Tensor | slice | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The pixels the model sees for ``index``: a fresh Bernoulli draw in dynamic mode."""
        x = self.values(index)
        if self.pixels == "dynamic":
            return torch.bernoulli(x, generator=generator)
        return x

    def observe_fixed(self, seed: int) -> torch.Tensor:
        """All pixels with one seeded binarization in dynamic mode: data to validate or evaluate on."""
        return self.observe(generator=torch.Generator(device=self.images.device).manual_seed(seed))


def torchvision_dataset(name: str, root: Path, train: bool):
    """torchvision's dataset class for ``name`` over the data root, unpacking local archives into
    the cache."""
    import torchvision

    cls_name, files = _TORCHVISION[name]
    cls = getattr(torchvision.datasets, cls_name)
    raw = root / cls_name / "raw"
    if all((raw / f).exists() for f in files):
        try:
            return cls(str(root), train=train, download=False)
        except Exception as e:  # noqa: BLE001 - torchvision's parsers fail in many ways on a bad file
            raise DataError(
                f"{name}: the unpacked files in {raw} could not be read ({type(e).__name__}: {e}); "
                f"replace them with the original files {', '.join(files)}"
            ) from e
    if all((raw / f"{f}.gz").exists() for f in files):
        return cls(str(_unpack_into_cache(name, cls, files, raw)), train=train, download=False)
    try:
        return cls(str(root), train=train, download=True)
    except Exception as e:  # network errors come as URLError, RuntimeError, OSError...
        listing = ", ".join(f"{f}.gz" for f in files)
        raise DataError(
            f"{name} is not in {raw} and could not be downloaded ({type(e).__name__}: {e}). "
            f"Put the four files {listing} into {raw}, or point --data-root / $PYROVAE_DATA "
            "at a folder holding them."
        ) from e


def _unpack_into_cache(name: str, cls, files: list[str], raw: Path) -> Path:
    """The cache root holding ``cls``'s unpacked ``files``, unpacked from the archives in ``raw``
    (never beside the user's files) when missing or made from other archives. Each archive is
    checked, copied and unpacked by torchvision (no network) in a private folder, then moved into
    the cache file by file (``os.replace``, atomic): processes started together never read a
    half-written file. The archive copy, moved last, marks its unpacked file complete."""
    work = cache_dir() / "torchvision"
    done = work / cls.__name__ / "raw"

    def current(f: str) -> bool:
        stamp = done / f"{f}.gz"
        return (
            (done / f).exists()
            and stamp.exists()
            and stamp.stat().st_size == (raw / f"{f}.gz").stat().st_size
        )

    if all(current(f) for f in files):
        return work
    expected = {Path(url).name: md5 for url, md5 in cls.resources}
    work.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(dir=work, prefix=".unpack-"))
    try:
        (private / cls.__name__ / "raw").mkdir(parents=True)
        for f in files:
            check_md5(raw / f"{f}.gz", expected.get(f"{f}.gz"))
            shutil.copyfile(raw / f"{f}.gz", private / cls.__name__ / "raw" / f"{f}.gz")
        try:
            cls(str(private), train=True, download=True)  # unpacks every archive
        except RuntimeError as e:
            raise DataError(
                f"{name}: the archives in {raw} failed torchvision's md5 check ({e}); "
                "replace them with the original files"
            ) from e
        done.mkdir(parents=True, exist_ok=True)
        for f in files:
            for part in (f, f"{f}.gz"):
                os.replace(private / cls.__name__ / "raw" / part, done / part)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return work


def check_md5(path: Path, expected: str | None) -> None:
    """Raise DataError naming ``path`` and both checksums when its md5 is not ``expected``."""
    if expected is None:
        return
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise DataError(
            f"{path} is corrupt: its md5 is {digest.hexdigest()}, expected {expected}; replace it "
            "with the original file (or delete it and let torchvision download it)"
        )


def read_amat(path: Path, expected_rows: int | None = None) -> torch.Tensor:
    """Read a binarized-MNIST ``.amat`` file (gzipped or not): one image per line of 0/1 values."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    rows = raw.split(b"\n")
    if rows and rows[-1] == b"":
        rows.pop()
    width = len(rows[0]) if rows else 0
    ok = width > 0 and width % 2 == 1 and all(len(r) == width for r in rows)
    if ok:
        chars = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), width)
        ok = bool((chars[:, 1::2] == ord(" ")).all()) and bool(np.isin(chars[:, ::2], (48, 49)).all())
    if not ok or (expected_rows is not None and len(rows) != expected_rows):
        raise DataError(
            f"{path} is not a binarized-MNIST .amat file (one line per image of "
            f"space-separated 0/1 values, {expected_rows} lines); replace it with the original"
        )
    pixels = chars[:, ::2] - ord("0")
    side = int(round(pixels.shape[1] ** 0.5))
    return torch.from_numpy(pixels.astype(np.float32)).reshape(-1, 1, side, side)


def _binarized_mnist(root: Path, split: str) -> torch.Tensor:
    folder = root / "BinarizedMNIST"
    name = f"binarized_mnist_{split}.amat"
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.exists():
            return read_amat(candidate, BINARIZED_MNIST_SIZES[split])
    try:
        from torchvision.datasets.utils import download_url

        download_url(BINARIZED_MNIST_URL + name, str(folder), name)
    except Exception as e:
        raise DataError(
            f"binarized_mnist: {folder / name}(.gz) is missing and could not be downloaded "
            f"({type(e).__name__}: {e}). Put binarized_mnist_{{train,valid,test}}.amat(.gz) into "
            f"{folder}, or point --data-root / $PYROVAE_DATA at a folder holding BinarizedMNIST/."
        ) from e
    return read_amat(folder / name, BINARIZED_MNIST_SIZES[split])


def load_split(name: str, split: str, *, pixels: str = "dynamic", root=None, val_size: int | None = None,
               device="cpu", **source) -> Split:  # fmt: skip
    """Load ``split`` ("train", "val" or "test") of dataset ``name`` onto ``device``.

    The validation split is the last ``val_size`` images of the training set (default:
    :data:`DEFAULT_VAL_SIZE`, a tenth for own data), which training never sees;
    ``binarized_mnist`` has its own 50k/10k/10k splits. ``source`` holds the own-data
    options (``path``, ``test_path``, ``labels_path``, ``size``, ``channels``,
    ``test_fraction``; see :func:`pyrovae.data.own.splits`).
    """
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    if pixels not in PIXEL_MODES:
        raise unknown_name("pixel mode", pixels, PIXEL_MODES)
    if split not in ("train", "val", "test"):
        raise unknown_name("split", split, ("train", "val", "test"))
    root = data_root(root)
    if name in formats.sequences.DATASETS:
        return formats.sequences.load(name, split, pixels, root, cache_dir(), val_size, source).to(device)
    if name == "binarized_mnist":
        if pixels != "static":
            raise DataError(
                'binarized_mnist is binarized once already: set pixels = "static" '
                '(or use dataset "mnist" for dynamic or continuous pixels)'
            )
        images = _binarized_mnist(root, {"train": "train", "val": "valid", "test": "test"}[split])
        labels = torch.full((images.shape[0],), -1, dtype=torch.long)  # the .amat files carry no labels
        return Split(images.to(torch.uint8), labels, pixels, maximum=1).to(device)
    images, labels = raw_split(name, "test" if split == "test" else "train", root, source)
    images, labels = part(images, labels, name, split, val_size)
    return pixel_mode(images, labels.clone(), pixels, ("train", "val", "test").index(split)).to(device)


def part(images: torch.Tensor, rows: torch.Tensor, name: str, split: str, val_size: int | None):
    """(images, rows) of ``split`` from the official training part (the last ``val_size`` images
    are the validation split) or the test part as it is; ``rows`` are labels or factors."""
    if split == "test":
        return images, rows
    n = images.shape[0]
    val_size = (DEFAULT_VAL_SIZE.get(name) or n // 10) if val_size is None else val_size
    if not 0 <= val_size < n:
        raise DataError(
            f"data.val_size must be in [0, {n}) for {name}'s {n} training images, got {val_size}; "
            "set it lower (or leave it unset for the dataset's default)"
        )
    cut = n - val_size
    # the validation part is copied, so that the whole training part is not kept alive for it
    return (images[:cut], rows[:cut]) if split == "train" else (images[cut:].clone(), rows[cut:])


def pixel_mode(images: torch.Tensor, labels: torch.Tensor, pixels: str, offset: int = 0) -> Split:
    """A Split of ``images`` (uint8 levels or floats in [0, 1]) in pixel mode ``pixels``; static
    binarization is drawn here, once, with a seed fixed per split (``offset``)."""
    if pixels == "8bit" and images.dtype != torch.uint8:
        raise DataError(
            'pixels = "8bit" needs 8-bit images (uint8, or floats that are all k / 255); these are '
            'other floats: use pixels = "continuous"'
        )
    if pixels != "static":
        return Split(images, labels, pixels)
    g = torch.Generator().manual_seed(STATIC_BINARIZATION_SEED + offset)
    binary = torch.bernoulli(Split(images, labels, pixels).values().float(), generator=g)
    return Split(binary.to(torch.uint8), labels, pixels, maximum=1)


def raw_split(name: str, which: str, root: Path, source: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of the official ``which`` ("train" or "test") part of dataset ``name``:
    uint8 (N, C, H, W) levels (own float data: floats in [0, 1])."""
    if name in _TORCHVISION:
        ds = torchvision_dataset(name, root, train=which == "train")
        return ds.data.unsqueeze(1).contiguous(), ds.targets.clone()
    if name in ("folder", "tensor"):
        return formats.own.splits(name, **source)[which]
    if name in ("mnist_factors", "dsprites"):  # labels: the first factor (digit, shape)
        images, factors = formats.factors.read(name, which, root)
        return images, factors[:, 0].clone()
    published = formats.published
    readers = {"cifar10": published.cifar10, "svhn": published.svhn, "omniglot": published.omniglot}
    readers["celeba"] = lambda r: published.celeba(r, cache_dir())
    return readers[name](root)[which]


def image_shape(name: str, root=None, **source) -> tuple[int, ...]:
    """The image shape (C, H, W) of dataset ``name``, without loading it (own data: see
    :func:`pyrovae.data.own.image_shape`); the user's own sequences' (T, D) of their training part."""
    if name == "sequences":
        return formats.sequences.load(
            name, "train", "static", data_root(root), cache_dir(), None, source
        ).shape
    return SHAPES[name] if name in SHAPES else formats.own.image_shape(name, **source)
