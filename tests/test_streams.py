"""Library calls leave the caller's random streams as they found them (pyrovae.runtime.seeds)."""

import random

import numpy as np
import torch

import pyrovae
from pyrovae.diagnostics import posterior_quality
from pyrovae.guides import MLPGuide
from pyrovae.inference.scoring import evaluate_data
from pyrovae.models import LinearGaussian


def _draws():
    return torch.randn(4), np.random.rand(3), random.random()


def _seed(s):
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def test_fit_and_seeded_evaluations_leave_the_callers_streams_as_found():
    model, guide = LinearGaussian((1, 1, 5), 2), MLPGuide((1, 1, 5), 2, hidden=[8])
    x = torch.randn(40, 1, 1, 5)
    _seed(11)
    expected = _draws()
    _seed(11)
    for seed in (0, 0):  # two fits with the default seed used to leave the same draws behind
        cfg = pyrovae.TrainConfig(max_steps=3, batch_size=16)
        pyrovae.fit(model, guide, x, config=cfg, seed=seed, device="cpu", progress=False)
    evaluate_data(model, guide, x, num_samples=3, seed=5)
    posterior_quality(model, guide, x[:4], num_samples=30, seed=2)
    got = _draws()
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]
