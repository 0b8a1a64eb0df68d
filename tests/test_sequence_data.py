"""Sequence data: the JSB Chorales pickle in its published form, the chorales built from
music21's corpus, and the user's own (N, T, D) tensors with lengths or a mask."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from music21 import note, stream

from pyrovae.data.sequences import (
    JSB_FILE,
    chorale_steps,
    chorales,
    jsb,
    read_sequences,
)
from pyrovae.errors import DataError
from pyrovae.hooks import prefix_mask


def test_jsb_pickle_reads_into_rolls_with_lengths(tmp_path):
    """Each step's tuple of MIDI pitches becomes keys pitch - 21; pieces pad to the longest
    with zeros and keep their lengths; the three splits are the pickle's."""
    pieces = {
        "train": [[(60, 64, 67), (62,), ()], [(21, 108)]],
        "valid": [[(48,)] * 4],
        "test": [[(), (72, 76)]],
    }
    (tmp_path / JSB_FILE).write_bytes(pickle.dumps(pieces))
    out = jsb(tmp_path)
    rolls, lengths = out["train"]
    assert rolls.shape == (2, 3, 88) and lengths.tolist() == [3, 1]
    assert rolls[0, 0].nonzero().flatten().tolist() == [39, 43, 46]
    assert rolls[0, 2].sum() == 0 and rolls[1, 0].nonzero().flatten().tolist() == [0, 87]
    assert rolls[1, 1:].sum() == 0  # past its end: zeros, and the length says so
    assert out["valid"][0].shape == (1, 4, 88) and out["test"][1].tolist() == [2]


def test_jsb_refuses_pitches_off_the_keyboard_and_a_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found.*chorales"):
        jsb(tmp_path)
    (tmp_path / JSB_FILE).write_bytes(
        pickle.dumps({"train": [[(20,)]], "valid": [[(60,)]], "test": [[(60,)]]})
    )
    with pytest.raises(DataError, match="MIDI pitch 20 at step 0 is off the 88 keys"):
        jsb(tmp_path)
    (tmp_path / JSB_FILE).write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataError, match="is not the JSB Chorales pickle"):
        jsb(tmp_path)


def test_chorale_steps_sample_each_quarter_note():
    """A note sounds at step t when it is on at quarter-note time t: a half note from 0
    covers steps 0 and 1, a dotted quarter from 0.5 only step 1, a tie is one note."""
    part = stream.Part()
    part.insert(0.0, note.Note("C4", quarterLength=2.0))
    part.insert(0.5, note.Note("E4", quarterLength=1.5))
    tied_a, tied_b = note.Note("G4", quarterLength=1.0), note.Note("G4", quarterLength=1.0)
    tied_a.tie, tied_b.tie = note.tie.Tie("start"), note.tie.Tie("stop")
    part.insert(2.0, tied_a)
    part.insert(3.0, tied_b)
    score = stream.Score([part])
    assert chorale_steps(score) == [{60}, {60, 64}, {67}, {67}]


def test_chorales_from_music21_split_by_position(tmp_path):
    """The first five chorales: positions 0-2 train, 3 valid, 4 test; four voices at most per
    step, every step of a piece within its length, nothing cached for a partial build."""
    out = chorales(tmp_path, limit=5)
    assert [out[s][0].shape[0] for s in ("train", "valid", "test")] == [3, 1, 1]
    for rolls, lengths in out.values():
        assert rolls.dtype == torch.uint8 and rolls.shape[-1] == 88
        assert int(rolls.sum(-1).max()) <= 4
        assert (rolls.sum(-1) > 0).sum(1).le(lengths).all()
        assert rolls[~prefix_mask(lengths, rolls.shape[1])].sum() == 0
    assert not list(tmp_path.rglob("*.pt"))


def test_own_sequences_with_lengths_or_a_prefix_mask(tmp_path):
    x = torch.randn(3, 4, 2)
    torch.save({"x": x, "lengths": torch.tensor([4, 2, 1])}, tmp_path / "a.pt")
    got, lengths = read_sequences(tmp_path / "a.pt")
    assert lengths.tolist() == [4, 2, 1]
    torch.testing.assert_close(got[0], x[0])
    assert got[1, 2:].abs().sum() == 0 and got[2, 1:].abs().sum() == 0
    torch.save({"x": x, "mask": prefix_mask(lengths, 4)}, tmp_path / "b.pt")
    torch.testing.assert_close(read_sequences(tmp_path / "b.pt")[0], got)
    np.savez(tmp_path / "c.npz", x=x.numpy(), lengths=np.array([4, 2, 1]))
    torch.testing.assert_close(read_sequences(tmp_path / "c.npz")[0], got)


@pytest.mark.parametrize(
    "saved, message",
    [
        ({"x": torch.zeros(2, 3, 1)}, 'one of "lengths"'),
        ({"x": torch.zeros(2, 3), "lengths": torch.tensor([1, 1])}, r"must be \(N, T, D\)"),
        ({"x": torch.zeros(2, 3, 1), "lengths": torch.tensor([4, 1])}, "every length must lie in 1..3"),
        ({"x": torch.zeros(2, 3, 1), "mask": torch.tensor([[1, 0, 1], [1, 1, 1]])}, "must mark a prefix"),
        ({"x": torch.full((1, 2, 1), float("nan")), "lengths": torch.tensor([2])}, "NaN or inf"),
        (torch.zeros(2, 3, 1), 'must hold a dict with "x"'),
    ],
)
def test_own_sequences_refuse_what_is_not_a_set_of_sequences(tmp_path, saved, message):
    torch.save(saved, tmp_path / "s.pt")
    with pytest.raises(DataError, match=message):
        read_sequences(tmp_path / "s.pt")
