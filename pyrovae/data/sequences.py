"""Sequences: polyphonic piano rolls and the user's own (N, T, D) tensors, with their lengths.

Every reader returns ``{split: (rolls, lengths)}``: ``rolls`` (N, T, D), zero past each
sequence's end, ``lengths`` (N,) int64; :func:`pyrovae.hooks.prefix_mask` turns lengths into the
(N, T) mask a sequence model takes, so that no padded step is ever counted.

- ``chorales``: the 371 four-part Bach chorales of music21's corpus (Riemenschneider's
  numbering, as ``music21.corpus.chorales.Iterator`` gives them) as 88-key rolls sampled at every
  quarter note (a key is on at step t when a note of that pitch sounds at quarter-note time t,
  ties joined); split
  by position i in that order: i % 5 == 3 validation, i % 5 == 4 test, the rest training (223 /
  74 / 74). Built once (about a minute) and cached as ``chorales/music21_rolls.pt`` in the
  cache folder (:func:`pyrovae.data.splits.cache_dir`).
- ``jsb``: the JSB Chorales pickle of Boulanger-Lewandowski et al. (2012), ``JSB Chorales.pickle``
  under the data root: ``{"train" | "valid" | "test": [[(MIDI pitches sounding), ...] per step]
  per piece]}``, its own split.
- ``sequences``, the user's own: a ``torch.save``d dict with ``"x"`` (N, T, D) and ``"lengths"``
  (N,) or a prefix ``"mask"`` (N, T) (:func:`read_sequences`), the test part from ``test_path`` or
  held out by ``test_fraction``.

:func:`parts` gives each dataset's parts by name; ``chorales`` and ``jsb`` have their own
validation split, the user's sequences lend the last ``val_size`` of the training part.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import torch

from pyrovae.data.own import load_file, train_and_test
from pyrovae.data.splits import Split, part
from pyrovae.errors import DataError
from pyrovae.hooks import prefix_mask

KEYS = 88  #: piano keys, A0 (MIDI 21) to C8 (MIDI 108)
LOWEST = 21  #: the MIDI number of the lowest key
CHORALES_CACHE = Path("chorales") / "music21_rolls.pt"
JSB_FILE = "JSB Chorales.pickle"
SPLITS = ("train", "valid", "test")
DATASETS = ("chorales", "jsb", "sequences")  #: sequence datasets (sequences: data.path = FILE)


def as_split(x: torch.Tensor, lengths: torch.Tensor, pixels: str | None = None) -> Split:
    """Sequences ``x`` (N, T, D) of ``lengths`` steps as the Split that :func:`pyrovae.fit` and the
    estimators take (its ``labels`` hold the lengths). Binary uint8 sequences (piano rolls) are
    kept as 0/1 levels; ``pixels`` defaults to "static" for them (observed as they are) and to
    "continuous" for floats."""
    binary = x.dtype == torch.uint8 and int(x.max()) <= 1
    pixels = pixels or ("static" if binary else "continuous")
    if pixels == "8bit":
        raise DataError('sequences are not 8-bit images: set pixels = "static" (binary) or "continuous"')
    if lengths.shape != x.shape[:1] or int(lengths.min()) < 1 or int(lengths.max()) > x.shape[1]:
        raise DataError(f"give one length in 1..{x.shape[1]} (T) per sequence ({x.shape[0]})")
    return Split(x, lengths.long().clone(), pixels, maximum=1 if binary else 255)


def load(name: str, split: str, pixels: str, root: Path, cache: Path, val_size, source: dict) -> Split:
    """``split`` of the sequence dataset ``name`` (:func:`parts`; the user's own lend the last
    ``val_size`` training sequences to "val") as a Split of sequences and lengths (:func:`as_split`)."""
    found = parts(name, root, cache, **source)
    x, lengths = found[split] if split in found else part(*found["train"], name, split, val_size)
    return as_split(x, lengths, pixels)


def parts(name: str, root: Path, cache: Path, path=None, test_path=None, test_fraction=0.1, **_) -> dict:
    """``{"train" | "val" | "test": (x, lengths)}`` of the sequence dataset ``name`` (the user's
    own sequences have no "val": it is cut from "train")."""
    if name != "sequences":
        out = chorales(cache) if name == "chorales" else jsb(root)
        return {"train": out["train"], "val": out["valid"], "test": out["test"]}
    if path is None:
        raise DataError('data.name = "sequences" needs data.path (a .pt / .npz file of "x" and "lengths")')
    read = lambda where: read_sequences(Path(where).expanduser())  # noqa: E731
    return train_and_test(read, path, test_path, test_fraction, alike_from=2, what="sequences")


def stack_rolls(rolls: list[torch.Tensor], where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (T_i, D) rolls with zeros to (N, max T_i, D); their lengths as int64 (N,)."""
    if not rolls:
        raise DataError(f"{where} holds no sequences")
    lengths = torch.tensor([r.shape[0] for r in rolls], dtype=torch.int64)
    if int(lengths.min()) < 1:
        raise DataError(f"{where} holds a sequence of no steps; drop it")
    out = rolls[0].new_zeros(len(rolls), int(lengths.max()), rolls[0].shape[1])
    for i, r in enumerate(rolls):
        out[i, : r.shape[0]] = r
    return out, lengths


def roll_of_steps(steps, where: str) -> torch.Tensor:
    """A uint8 (T, 88) roll from T collections of MIDI pitches sounding at each step."""
    roll = torch.zeros(len(steps), KEYS, dtype=torch.uint8)
    for t, pitches in enumerate(steps):
        for p in pitches:
            key = int(p) - LOWEST
            if not 0 <= key < KEYS:
                raise DataError(f"{where}: MIDI pitch {p} at step {t} is off the 88 keys (21 to 108)")
            roll[t, key] = 1
    return roll


def jsb(root: Path) -> dict:
    """The JSB Chorales pickle (Boulanger-Lewandowski et al. 2012) in its published form."""
    path = Path(root) / JSB_FILE
    if not path.exists():
        raise DataError(
            f"jsb: {JSB_FILE!r} not found in {root}. Put the pickle there (downloaded elsewhere), "
            "point --data-root / $PYROVAE_DATA at its folder, or use the dataset 'chorales' "
            "(built from music21)"
        )
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f)
        pieces = {s: raw[s] for s in SPLITS}
    except Exception as e:  # noqa: BLE001 - a foreign pickle fails in many ways
        raise DataError(f"{path} is not the JSB Chorales pickle ({type(e).__name__}: {e}); replace it") from e
    return {
        s: stack_rolls([roll_of_steps(p, f"{path} ({s} piece {i})") for i, p in enumerate(v)], f"{path} {s}")
        for s, v in pieces.items()
    }


def chorale_steps(score) -> list[set[int]]:
    """The MIDI pitches sounding at each quarter note of a music21 score (ties joined)."""
    length = math.ceil(float(score.highestTime) - 1e-9)
    steps: list[set[int]] = [set() for _ in range(length)]
    for note in score.stripTies().flatten().notes:
        start, end = float(note.offset), float(note.offset + note.quarterLength)
        for t in range(max(0, math.ceil(start - 1e-9)), min(length, math.ceil(end - 1e-9))):
            steps[t].update(p.midi for p in note.pitches)
    return steps


def chorales(cache: Path, limit: int | None = None) -> dict:
    """The Bach chorales of music21's corpus as rolls (see the module's text), cached in the
    folder ``cache``; ``limit`` builds only the first chorales (uncached, for tests)."""
    cache = Path(cache) / CHORALES_CACHE
    if limit is None and cache.exists():
        return torch.load(cache)
    try:
        from music21 import corpus  # an optional dependency: pip install "pyrovae[music]"
    except ImportError as e:
        raise DataError('the dataset "chorales" needs music21: pip install "pyrovae[music]"') from e
    names = list(corpus.chorales.Iterator(returnType="filename"))[:limit]
    parts: dict[str, list] = {s: [] for s in SPLITS}
    for i, name in enumerate(names):
        split = {3: "valid", 4: "test"}.get(i % 5, "train")
        parts[split].append(roll_of_steps(chorale_steps(corpus.parse(name)), f"music21 {name}"))
    out = {s: stack_rolls(v, f"the chorales' {s} split") for s, v in parts.items() if v}
    if limit is None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        torch.save(out, tmp)
        os.replace(tmp, cache)
    return out


def read_sequences(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The user's sequences: a dict of ``"x"`` (N, T, D) and ``"lengths"`` (N,) or a prefix
    ``"mask"`` (N, T), saved by ``torch.save`` (.pt) or ``numpy.savez`` (.npz); returns (x zeroed
    past each end, lengths)."""
    raw = load_file(Path(path))
    if not isinstance(raw, dict) or "x" not in raw or ("lengths" in raw) == ("mask" in raw):
        raise DataError(
            f'{path} must hold a dict with "x" (N, T, D) and one of "lengths" (N,) or "mask" (N, T); '
            f"save one with torch.save({{'x': x, 'lengths': lengths}}, path)"
        )
    x = torch.as_tensor(raw["x"])
    if x.dim() != 3 or min(x.shape) < 1:
        raise DataError(f'{path}: "x" must be (N, T, D) with N, T, D >= 1, got shape {tuple(x.shape)}')
    n, steps, _ = x.shape
    if "mask" in raw:
        mask = torch.as_tensor(raw["mask"]).bool()
        if mask.shape != (n, steps):
            raise DataError(f'{path}: "mask" must be (N, T) = {(n, steps)}, got {tuple(mask.shape)}')
        lengths = mask.sum(1)
        if not torch.equal(mask, prefix_mask(lengths, steps)):
            raise DataError(
                f'{path}: "mask" must mark a prefix of each sequence (True up to its end, then False); '
                'a gap inside a sequence is not a length: give "lengths", or cut the sequence there'
            )
    else:
        lengths = torch.as_tensor(raw["lengths"]).long().reshape(-1)
    if lengths.shape != (n,) or int(lengths.min()) < 1 or int(lengths.max()) > steps:
        raise DataError(f"{path}: every length must lie in 1..{steps} (T), one per sequence ({n})")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise DataError(f"{path}: x holds NaN or inf; replace them, or end those sequences before them")
    return x * prefix_mask(lengths, steps)[..., None].to(x.dtype), lengths
