"""Datasets with ground-truth factors, for the disentanglement metrics.

- ``mnist_factors``: real MNIST digits moved by known transformations, every combination of a
  grid: digit class (10), rotation (5 angles, -40 to 40 degrees), scale (3, 0.8 to 1.2), x and
  y shift (5 each, -4 to 4 pixels), applied to ``BASES`` base images per class (the first
  training images of the class for the training split, the first test images for the test
  split: the test digits are instances never trained on). Factors: digit, rotation, scale, x,
  y; the base image is a nuisance, not a factor. Built from MNIST's own files, so it needs no
  download beyond MNIST; 30,000 training and 7,500 test images.
- ``dsprites``: the published ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` (Matthey et
  al. 2017) in ``<root>/dsprites/``: 737,280 64x64 binary images, every combination of shape
  (3), scale (6), orientation (40), x (32) and y (32) (colour is constant); every tenth image
  is the test split, the rest the training split. Factors: shape, scale, orientation, x, y.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from pyrovae.data import splits
from pyrovae.errors import DataError

#: the factor names of each dataset, in the order of its factor columns
FACTOR_NAMES = {
    "mnist_factors": ("digit", "rotation", "scale", "x", "y"),
    "dsprites": ("shape", "scale", "orientation", "x", "y"),
}
#: the factors whose values are classes, not steps on an ordered grid (the metrics treat them as such)
CATEGORICAL = {"mnist_factors": ("digit",), "dsprites": ("shape",)}
ROTATIONS = (-40.0, -20.0, 0.0, 20.0, 40.0)  #: degrees
SCALES = (0.8, 1.0, 1.2)
SHIFTS = (-4.0, -2.0, 0.0, 2.0, 4.0)  #: pixels, in x and in y
BASES = {"train": 8, "test": 2}  #: base images per digit class in each split
DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"


def transform(images: torch.Tensor, rotation: float, scale: float, dx: float, dy: float) -> torch.Tensor:
    """``images`` (N, 1, H, W) in [0, 1] rotated by ``rotation`` degrees and scaled by ``scale``
    about their centre, then shifted by (dx, dy) pixels (bilinear resampling, zeros outside)."""
    n, _, h, w = images.shape
    a = math.radians(rotation)
    cos, sin = math.cos(a) / scale, math.sin(a) / scale
    theta = torch.tensor([[cos, -sin, -2 * dx / w], [sin, cos, -2 * dy / h]], dtype=images.dtype)
    grid = F.affine_grid(theta.expand(n, 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def mnist_factors(
    images: torch.Tensor, labels: torch.Tensor, bases: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (M, 1, 28, 28), factors (M, 5)) from the first ``bases`` images of each
    class of MNIST ``images`` (uint8 (N, 1, 28, 28)) and ``labels``, every grid combination."""
    picked = []
    for digit in range(10):
        rows = torch.nonzero(labels == digit).flatten()[:bases]
        if len(rows) < bases:
            raise DataError(f"mnist_factors needs {bases} images of digit {digit}, found {len(rows)}")
        picked.append(rows)
    rows = torch.cat(picked)
    base = images[rows].float() / 255
    out, factors = [], []
    grid = itertools.product(enumerate(ROTATIONS), enumerate(SCALES), enumerate(SHIFTS), enumerate(SHIFTS))
    for (ri, r), (si, s), (xi, dx), (yi, dy) in grid:
        out.append(transform(base, r, s, dx, dy))
        idx = torch.tensor([ri, si, xi, yi]).expand(len(rows), 4)
        factors.append(torch.cat([labels[rows].unsqueeze(1), idx], 1))
    images = (torch.cat(out).clamp(0, 1) * 255).round().to(torch.uint8)
    return images, torch.cat(factors).long()


def read_dsprites(root: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train", "test"}: (images uint8 (N, 1, 64, 64) of 0 or 255, factors (N, 5)) from the published
    ``.npz`` (only its arrays are read: no pickled object is loaded)."""
    path = Path(root) / "dsprites" / DSPRITES_FILE
    if not path.exists():
        raise DataError(
            f"dsprites is not at {path}: download {DSPRITES_FILE} (github.com/deepmind/dsprites-dataset) "
            "into <data root>/dsprites/"
        )
    with np.load(path, allow_pickle=False) as f:
        if "imgs" not in f.files or "latents_classes" not in f.files:
            raise DataError(f"{path} has no imgs/latents_classes arrays: is it the dSprites .npz?")
        # 0/1 pixels stored as 0/255: every pixel mode reads them as the binary images they are
        images = torch.from_numpy(np.ascontiguousarray(f["imgs"], dtype=np.uint8) * np.uint8(255)).unsqueeze(
            1
        )
        classes = torch.from_numpy(np.asarray(f["latents_classes"], dtype=np.int64))
    if classes.ndim != 2 or classes.shape[1] != 6 or classes.shape[0] != images.shape[0]:
        raise DataError(
            f"{path}: latents_classes must be (N, 6) beside imgs (N, 64, 64), got {tuple(classes.shape)}"
        )
    factors = classes[:, 1:]  # colour (column 0) is constant
    test = torch.arange(images.shape[0]) % 10 == 0
    return {"train": (images[~test], factors[~test]), "test": (images[test], factors[test])}


def read(name: str, which: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 1, H, W), factors (N, 5)) of the official ``which`` ("train" or
    "test") part of factor dataset ``name``."""
    if name == "dsprites":
        return read_dsprites(root)[which]
    mnist = splits.torchvision_dataset("mnist", root, train=which == "train")
    return mnist_factors(mnist.data.unsqueeze(1), mnist.targets, BASES[which])


def load_factors(name: str, split: str, *, root=None, val_size: int | None = None) -> torch.Tensor:
    """The ground-truth factors (N, K) of ``split`` of a factor dataset, row for row as
    :func:`load_split` loads its images (:mod:`pyrovae.data.factors`)."""
    if name not in FACTOR_NAMES:
        raise DataError(
            f"dataset {name!r} has no ground-truth factors; the factor datasets are {', '.join(FACTOR_NAMES)}"
        )
    images, factors = read(name, "test" if split == "test" else "train", splits.data_root(root))
    return splits.part(images, factors, name, split, val_size)[1]
