"""The user's own images: an image folder or a tensor file, read into (images, labels).

- ``folder``: image files (PNG, JPEG, BMP, GIF, TIFF, WebP, PPM/PGM) in ``path``; when it
  holds sub-folders, each is a class and its index in sorted order the label, as
  torchvision's ``ImageFolder``; otherwise the images are unlabelled. ``size = [H, W]``
  resizes every image (bilinear); without it all images must share one size. ``channels``
  1 or 3 (default: 1 when the first image is grey, else 3).
- ``tensor``: a ``.pt`` file holding a tensor, a (images, labels) pair or a dict with
  ``images`` (and ``labels``), or a ``.npy`` / ``.npz`` file likewise; images of shape
  (N, C, H, W) or (N, H, W), uint8 0..255 or float in [0, 1]; labels from the same file or
  ``labels_path``.

Images are returned as uint8 when they are 8-bit (float files whose values are all k / 255
included), else as float32 in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pyrovae.errors import DataError

SPLIT_SEED = 27182  #: the fixed shuffle that holds out an own dataset's test part
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _files(folder: Path) -> tuple[list[Path], list[int]]:
    if not folder.is_dir():
        raise DataError(f"data.path {folder} is not a folder; point it at a folder of images")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    is_image = lambda p: p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES  # noqa: E731
    if classes:
        pairs = [
            (p, i) for i, c in enumerate(classes) for p in sorted((folder / c).rglob("*")) if is_image(p)
        ]
    else:
        pairs = [(p, -1) for p in sorted(folder.iterdir()) if is_image(p)]
    if not pairs:
        raise DataError(
            f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}), neither directly nor in class "
            "sub-folders; put the images there"
        )
    return [p for p, _ in pairs], [c for _, c in pairs]


def _open(path: Path, folder: Path, channels: int | None):
    """(the image at ``path`` as grey or RGB, its channels: ``channels``, else 1 for a grey file)."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        if channels is None:
            channels = 1 if image.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
        return image.convert("L" if channels == 1 else "RGB"), channels
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path} is not a readable image ({e}); remove it from {folder}") from e


def read_folder(folder: Path, size: tuple[int, int] | None, channels: int | None):
    """All images of ``folder`` as uint8 (N, C, H, W) and their class labels (see the module)."""
    from PIL import Image

    files, labels = _files(folder)
    images, first = [], None
    for path in files:
        image, channels = _open(path, folder, channels)
        if size is not None:
            image = image.resize((size[1], size[0]), Image.BILINEAR)
        first = first or (path, image.size)
        if image.size != first[1]:
            raise DataError(
                f"{path} is {image.size[0]}x{image.size[1]} (W x H) but {first[0].name} is "
                f"{first[1][0]}x{first[1][1]}: images of mixed sizes; set data.size = [H, W] to resize "
                "them all"
            )
        array = np.asarray(image, dtype=np.uint8)
        images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.long)


def load_file(path: Path) -> object:
    """What a .pt / .npy / .npz file holds (an .npz as a dict of its arrays); a file that is
    missing, of another kind or unreadable is a :class:`~pyrovae.errors.DataError`."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist; check data.path")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.keys()}
        if path.suffix in (".pt", ".pth"):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a foreign file fails in many ways
        raise DataError(
            f"{path} could not be read ({type(e).__name__}: {e}); save it with torch.save or numpy.save"
        ) from e
    raise DataError(f"{path}: data.path must be a .pt, .npy or .npz file, got {path.suffix!r}")


def _load_arrays(path: Path) -> tuple[object, object]:
    """(images, labels or None) as stored in a .pt / .npy / .npz file."""
    obj = load_file(path)
    if path.suffix == ".npz":
        if not obj:
            raise DataError(f"{path} holds no arrays; save them with numpy.savez(path, images=x)")
        image_key = next((k for k in ("images", "x", "data") if k in obj), next(iter(obj)))
        label_key = next((k for k in ("labels", "y", "targets") if k in obj and k != image_key), None)
        return obj[image_key], None if label_key is None else obj[label_key]
    if isinstance(obj, dict):
        images = next((obj[k] for k in ("images", "x", "data") if k in obj), None)
        if images is None:
            raise DataError(
                f"{path} holds a dict without an 'images' entry; save {{'images': x, 'labels': y}}"
            )
        return images, next((obj[k] for k in ("labels", "y", "targets") if k in obj), None)
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj[0], obj[1]
    return obj, None


def _as_images(raw, path: Path) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(raw)) if not isinstance(raw, torch.Tensor) else raw
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise DataError(f"{path}: images must have shape (N, C, H, W) or (N, H, W), got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        raise DataError(
            f"{path}: images of shape {tuple(x.shape)} look channels-last; save "
            "x.permute(0, 3, 1, 2) (N, C, H, W)"
        )
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point():
        raise DataError(f"{path}: images are {x.dtype}; save uint8 (0..255) or float in [0, 1]")
    x = x.float()
    if not torch.isfinite(x).all():
        raise DataError(f"{path}: images contain NaN or inf; clean them first")
    if x.min() < 0 or x.max() > 1:
        raise DataError(
            f"{path}: float images must lie in [0, 1], got [{x.min():.4g}, {x.max():.4g}]; divide by "
            "their maximum"
        )
    levels = torch.round(x * 255)
    return levels.to(torch.uint8) if (x * 255 - levels).abs().max() < 1e-3 else x.contiguous()


def read_tensor(path: Path, labels_path: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8, or float32 in [0, 1]) and labels (-1 when none) from a tensor file."""
    raw, labels = _load_arrays(path)
    images = _as_images(raw, path)
    if labels_path is not None:
        labels, _ = _load_arrays(labels_path)
    if labels is None:
        return images, torch.full((images.shape[0],), -1, dtype=torch.long)
    labels = torch.as_tensor(np.asarray(labels)).reshape(-1)
    where = labels_path or path
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{where}: {labels.shape[0]} labels for {images.shape[0]} images; give one label per image"
        )
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise DataError(f"{where}: labels must be integers, got fractional values")
    return images, labels.long()


def image_shape(name: str, path=None, size=None, channels=None, labels_path=None, **_) -> tuple[int, ...]:
    """(C, H, W) of the images: for a folder from its first image (with ``size`` and
    ``channels``), without decoding the rest; a tensor file is read and checked whole."""
    if name != "folder" or path is None:
        return tuple(_read_own(name, path, size, channels, labels_path)[0].shape[1:])
    folder = Path(path).expanduser()
    image, channels = _open(_files(folder)[0][0], folder, channels)
    return (channels, *(size if size is not None else (image.size[1], image.size[0])))


def _read_own(name: str, path, size, channels, labels_path=None):
    if path is None:
        raise DataError(
            f'data.name = "{name}" needs data.path (the {"folder" if name == "folder" else "file"})'
        )
    if name == "folder":
        return read_folder(Path(path).expanduser(), None if size is None else tuple(size), channels)
    images, labels = read_tensor(Path(path).expanduser(), labels_path and Path(labels_path).expanduser())
    if channels is not None and images.shape[1] != channels:
        raise DataError(f"{path}: images have {images.shape[1]} channels but data.channels = {channels}")
    if size is not None and tuple(images.shape[2:]) != tuple(size):
        raise DataError(
            f"{path}: images are {tuple(images.shape[2:])} but data.size = {list(size)}; resize them"
        )
    return images, labels


def splits(name: str, path=None, test_path=None, labels_path=None, size=None, channels=None,
               test_fraction: float = 0.1) -> dict:  # fmt: skip
    """Train and test parts of an image folder or tensor file (:mod:`pyrovae.data.own`):
    :func:`train_and_test` of its (images, labels)."""

    def read(where):
        return _read_own(name, where, size, channels, labels_path if where == path else None)

    return train_and_test(read, path, test_path, test_fraction)


def train_and_test(read, path, test_path=None, test_fraction=0.1, alike_from=1, what="images") -> dict:
    """``{"train": rows, "test": rows}`` of the tensors ``read(path)`` returns (the data first,
    then others with one row per datapoint): the test part is ``read(test_path)`` when given (its
    data alike from dim ``alike_from`` on, and of one dtype), else the last ``test_fraction`` of
    the data shuffled with the fixed :data:`SPLIT_SEED` (:func:`hold_out`)."""
    train = read(path)
    if test_path is not None:
        test = read(test_path)
        a, b = train[0], test[0]
        if a.shape[alike_from:] != b.shape[alike_from:] or a.dtype != b.dtype:
            raise DataError(
                f"{test_path}: test {what} {tuple(b.shape[alike_from:])} {b.dtype} differ from the training "
                f"{what} {tuple(a.shape[alike_from:])} {a.dtype} in {path}; make them alike"
            )
        return {"train": train, "test": test}
    rows, held = hold_out(train[0].shape[0], test_fraction, path)
    return {"train": tuple(t[rows] for t in train), "test": tuple(t[held] for t in train)}


def hold_out(n: int, test_fraction: float, path) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, test rows) of ``n`` datapoints: the last ``test_fraction`` of them shuffled
    with the fixed :data:`SPLIT_SEED` is the test part."""
    n_test = int(round(test_fraction * n))
    if not 1 <= n_test < n:
        raise DataError(
            f"{path}: {n} datapoints cannot be split with test_fraction = {test_fraction}; add data, "
            "or give data.test_path"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return perm[: n - n_test], perm[n - n_test :]
