"""Disentanglement metrics on constructed codes: a code equal to the factors scores the maximum,
a random code about zero, a permuted code the same as the unpermuted."""

import itertools

import numpy as np
import pytest

from pyrovae.diagnostics.disentanglement import dci, factor_vae_score, lasso, mig, sap
from pyrovae.errors import DataError


@pytest.fixture(scope="module")
def grid():
    """Every combination of three factors (4, 5 and 6 values), three times: independent factors."""
    return np.array(list(itertools.product(range(4), range(5), range(6))) * 3)


def scores(codes, factors):
    d = dci(codes, factors)
    return {
        "mig": mig(codes, factors),
        "disentanglement": d.disentanglement,
        "completeness": d.completeness,
        "informativeness": d.informativeness,
        "factor_vae": factor_vae_score(codes, factors, repeats=3).mean,
        "sap": sap(codes, factors),
    }


def test_a_code_equal_to_the_factors_scores_the_maximum(grid):
    s = scores(grid.astype(float), grid)
    for name, value in s.items():
        assert value == pytest.approx(1.0, abs=0.02), name


def test_a_random_code_scores_about_zero(grid):
    codes = np.random.default_rng(0).normal(size=(len(grid), 6))
    s = scores(codes, grid)
    assert s["mig"] < 0.1 and s["sap"] < 0.05 and s["informativeness"] < 0.05
    assert s["factor_vae"] < 0.6  # chance is 1/3 for three factors


def test_a_permuted_code_scores_the_same(grid):
    rng = np.random.default_rng(1)
    codes = np.concatenate([grid + 0.3 * rng.normal(size=grid.shape), rng.normal(size=(len(grid), 2))], 1)
    order = rng.permutation(codes.shape[1])
    a, b = scores(codes, grid), scores(codes[:, order], grid)
    for name in a:
        assert a[name] == pytest.approx(b[name], abs=1e-9), name
    assert 0.3 < a["mig"] < 1 and 0.5 < a["disentanglement"] < 1  # a noisy, partly disentangled code


def test_mixing_two_dimensions_lowers_disentanglement(grid):
    codes = grid.astype(float)
    mixed = codes.copy()
    mixed[:, 0], mixed[:, 1] = codes[:, 0] + codes[:, 1], codes[:, 0] - codes[:, 1]
    assert mig(mixed, grid) < mig(codes, grid) - 0.3
    assert dci(mixed, grid).disentanglement < dci(codes, grid).disentanglement - 0.2


def test_lasso_is_least_squares_at_zero_penalty():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 3))
    x = (x - x.mean(0)) / x.std(0)
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=200)
    y = y - y.mean()
    np.testing.assert_allclose(lasso(x, y, 0.0), np.linalg.lstsq(x, y, rcond=None)[0], atol=1e-6)
    assert lasso(x, y, 10.0).tolist() == [0.0, 0.0, 0.0]  # a large penalty zeroes every weight


def test_bad_inputs_are_named():
    with pytest.raises(DataError, match="need the same N"):
        mig(np.zeros((5, 2)), np.zeros((4, 2), dtype=int))
    with pytest.raises(DataError, match="must be integer indices"):
        sap(np.zeros((5, 2)), np.zeros((5, 2)))
