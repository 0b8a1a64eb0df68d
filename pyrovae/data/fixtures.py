"""Small datasets written in each published on-disk format, with random pixels: for tests,
benchmarks run without the real data, and trying the loaders (:mod:`pyrovae.data.published`,
:mod:`pyrovae.data.sequences`).

Every writer takes a data root and a seed and returns the uint8 arrays it wrote
(``{"train": (images, labels), "test": (...)}`` in (N, C, H, W) as the loader returns them), so
that a test can compare what was read back with what was written.
"""

from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np


def _images(rng, n: int, shape) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_cifar10(root: Path, per_batch: int = 20, test: int = 20, seed: int = 0) -> dict:
    """cifar-10-batches-py/data_batch_1..5 and test_batch: pickled dicts of b"data" (N, 3072)
    uint8 rows (R, G, B planes) and b"labels"."""
    rng, folder = np.random.default_rng(seed), Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict = {"train": ([], [])}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        images, labels = _images(rng, n, (3, 32, 32)), rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": images.reshape(n, -1), b"labels": labels, b"batch_label": name.encode()}, f)
        if name == "test_batch":
            out["test"] = (images, np.array(labels))
        else:
            out["train"][0].append(images)
            out["train"][1].extend(labels)
    out["train"] = (np.concatenate(out["train"][0]), np.array(out["train"][1]))
    return out


def write_svhn(root: Path, train: int = 30, test: int = 10, seed: int = 0) -> dict:
    """svhn/{train,test}_32x32.mat: X of shape (32, 32, 3, N) uint8 and y (N, 1) in 1..10 (10 is 0)."""
    from scipy.io import savemat

    rng, folder, out = np.random.default_rng(seed), Path(root) / "svhn", {}
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("test", test)):
        images, digits = _images(rng, n, (3, 32, 32)), rng.integers(0, 10, n)
        y = np.where(digits == 0, 10, digits).reshape(n, 1).astype(np.uint8)
        savemat(folder / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": y})
        out[split] = (images, digits)
    return out


def write_celeba(root: Path, n: int = 12, seed: int = 0) -> dict:
    """celeba/img_align_celeba/NNNNNN.jpg (178 x 218 RGB) and list_eval_partition.txt, the
    last quarter in the test partition (2), one in the validation partition (1)."""
    from PIL import Image

    rng, folder = np.random.default_rng(seed), Path(root) / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(
            folder / "img_align_celeba" / name
        )
        lines.append(f"{name} {2 if i >= n - n // 4 else 1 if i == 0 else 0}")
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return {"train": n - n // 4, "test": n // 4}


def write_omniglot(root: Path, alphabets: int = 2, characters: int = 2, drawers: int = 3,
                   zipped: bool = True, seed: int = 0) -> dict:  # fmt: skip
    """omniglot-py/images_background(.zip) and images_evaluation(.zip): 105 x 105 PNGs, black
    strokes on white, in ALPHABET/characterNN/ folders."""
    from PIL import Image

    rng, folder, counts = np.random.default_rng(seed), Path(root) / "omniglot-py", {}
    for split, part in (("train", "images_background"), ("test", "images_evaluation")):
        files = {}
        for a in range(alphabets):
            for c in range(characters):
                for d in range(drawers):
                    strokes = rng.random((105, 105)) < 0.1
                    path = f"{part}/Alphabet_{split}_{a}/character{c + 1:02d}/{c:04d}_{d + 1:02d}.png"
                    files[path] = Image.fromarray(~strokes)  # mode "1": True is white
        for path, image in files.items():
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target)
        if zipped:
            with zipfile.ZipFile(folder / f"{part}.zip", "w") as zf:
                for path in files:
                    zf.write(folder / path, path)
            shutil.rmtree(folder / part)
        counts[split] = len(files)
    return counts


def write_chardata(root: Path, train: int = 15, test: int = 5, seed: int = 0) -> dict:
    """omniglot/chardata.mat as in the IWAE code: data (784, N) and testdata floats in [0, 1],
    each image stored column-major; targetchar / testtargetchar (1, N) in 1..."""
    from scipy.io import savemat

    rng, out, mat = np.random.default_rng(seed), {}, {}
    for split, key, n in (("train", "data", train), ("test", "testdata", test)):
        images = np.round(rng.random((n, 1, 28, 28)) * 255).astype(np.uint8)
        columns = images[:, 0].transpose(0, 2, 1).reshape(n, 784).T / 255.0  # column-major images
        mat[key] = columns
        chars = rng.integers(0, 7, n)
        mat[{"data": "targetchar", "testdata": "testtargetchar"}[key]] = (chars + 1).reshape(1, n)
        out[split] = (images, chars)
    (Path(root) / "omniglot").mkdir(parents=True, exist_ok=True)
    savemat(Path(root) / "omniglot" / "chardata.mat", mat)
    return out


def write_folder(folder: Path, classes=("cats", "dogs"), per_class: int = 6, size=(16, 12),
                 mode: str = "RGB", seed: int = 0) -> np.ndarray:  # fmt: skip
    """PNG images of ``size`` (H, W) in a class sub-folder each (no sub-folders when
    ``classes`` is empty: ``per_class`` unlabelled images); returns them as (N, C, H, W)."""
    from PIL import Image

    rng, folder, written = np.random.default_rng(seed), Path(folder), []
    channels = 3 if mode == "RGB" else 1
    for c in classes or [None]:
        target = folder / c if c else folder
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            array = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
            Image.fromarray(array if channels == 3 else array[..., 0], mode).save(target / f"img{i:03d}.png")
            written.append(array.transpose(2, 0, 1))
    return np.stack(written)


def write_jsb(root: Path, pieces=(24, 6, 6), steps=(4, 14), seed: int = 0) -> dict:
    """``JSB Chorales.pickle`` in its published form (:func:`pyrovae.data.sequences.jsb`): ``pieces``
    train / valid / test chorales of ``steps`` (least, most) quarter notes, each step a chord of three
    or four MIDI pitches that moves by a step at a time (so that a sequence model has something to
    learn); returns the pieces written."""
    rng, out = np.random.default_rng(seed), {}
    for split, count in zip(("train", "valid", "test"), pieces):
        out[split] = []
        for _ in range(count):
            chord = np.sort(rng.choice(np.arange(48, 80), 4, replace=False))
            piece = []
            for _ in range(int(rng.integers(steps[0], steps[1] + 1))):
                chord = np.clip(chord + rng.integers(-2, 3, 4), 21, 108)
                piece.append(tuple(int(p) for p in np.unique(chord)))
            out[split].append(piece)
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / "JSB Chorales.pickle").write_bytes(pickle.dumps(out))
    return out
