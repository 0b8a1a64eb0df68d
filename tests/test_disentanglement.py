"""Disentanglement metrics on constructed codes: a code equal to the factors scores the maximum,
a random code about zero, a permuted code the same as the unpermuted."""

import itertools

import numpy as np
import pytest

from pyrovae.diagnostics.disentanglement import Score, dci, factor_vae_score, mig, sap
from pyrovae.errors import DataError


@pytest.fixture(scope="module")
def grid():
    """Every combination of three factors (4, 5 and 6 values), three times: independent factors."""
    return np.array(list(itertools.product(range(4), range(5), range(6))) * 3)


def scores(codes, factors, categorical=(), importance="trees"):
    d = dci(codes, factors, categorical, importance=importance)
    return {
        "mig": mig(codes, factors).value,
        **d.parts,
        "factor_vae": factor_vae_score(codes, factors, repeats=3).value,
        "sap": sap(codes, factors, categorical).value,
    }


@pytest.mark.parametrize("importance", ["trees", "lasso"])
def test_a_code_equal_to_the_factors_scores_the_maximum(grid, importance):
    s = scores(grid.astype(float), grid, importance=importance)
    for name, value in s.items():
        assert value == pytest.approx(1.0, abs=0.02), name


def test_random_codes_score_about_zero_on_every_metric_over_many_seeds(grid):
    """12 random codes of 6 dimensions: every metric near 0 (the FactorVAE score near chance,
    1/3 for three factors) on every seed; Lasso importances once scored such codes 0.10 to 0.84."""
    worst = {}
    for seed in range(12):
        codes = np.random.default_rng(seed).normal(size=(len(grid), 6))
        for name, value in scores(codes, grid, categorical=(0,)).items():
            worst[name] = max(worst.get(name, -np.inf), value)
    assert worst["mig"] < 0.05 and worst["sap"] < 0.05 and worst["disentanglement"] < 0.1, worst
    assert worst["completeness"] < 0.1 and worst["informativeness"] < 0.4, worst  # accuracy; chance 1/4..1/6
    assert worst["factor_vae"] < 0.6, worst


def test_categorical_factors_are_classes_whatever_their_labels(grid):
    """A code that names the class of factor 0 by one dimension: relabelling the class (a
    bijection) leaves SAP and DCI where they were; read as numbers, it moves them."""
    rng = np.random.default_rng(3)
    codes = np.concatenate([grid + 0.2 * rng.normal(size=grid.shape), rng.normal(size=(len(grid), 2))], 1)
    relabelled = grid.copy()
    relabelled[:, 0] = np.array([2, 0, 3, 1])[grid[:, 0]]
    for metric in (sap, lambda c, f, cat: dci(c, f, cat)):
        a, b = metric(codes, grid, (0,)).value, metric(codes, relabelled, (0,)).value
        assert a == pytest.approx(b, abs=0.02)
    assert sap(codes, relabelled).value < sap(codes, relabelled, (0,)).value - 0.1


def test_every_metric_returns_one_result_type(grid):
    codes = grid.astype(float)
    for score in (
        mig(codes, grid),
        dci(codes, grid),
        factor_vae_score(codes, grid, repeats=2),
        sap(codes, grid),
    ):
        assert isinstance(score, Score) and isinstance(score.value, float)
    assert dci(codes, grid).matrix.shape == (3, 3)


def test_a_permuted_code_scores_the_same(grid):
    rng = np.random.default_rng(1)
    codes = np.concatenate([grid + 0.3 * rng.normal(size=grid.shape), rng.normal(size=(len(grid), 2))], 1)
    order = rng.permutation(codes.shape[1])
    a, b = scores(codes, grid), scores(codes[:, order], grid)
    for name in a:  # boosted trees break ties between equal splits by feature order
        tol = 0.01 if name in ("disentanglement", "completeness", "informativeness") else 1e-9
        assert a[name] == pytest.approx(b[name], abs=tol), name
    assert 0.3 < a["mig"] < 1 and 0.5 < a["disentanglement"] < 1  # a noisy, partly disentangled code


def test_mixing_two_dimensions_lowers_disentanglement(grid):
    codes = grid.astype(float)
    mixed = codes.copy()
    mixed[:, 0], mixed[:, 1] = codes[:, 0] + codes[:, 1], codes[:, 0] - codes[:, 1]
    assert mig(mixed, grid).value < mig(codes, grid).value - 0.3
    assert dci(mixed, grid).value < dci(codes, grid).value - 0.2


def test_bad_inputs_are_named():
    with pytest.raises(DataError, match="need the same N"):
        mig(np.zeros((5, 2)), np.zeros((4, 2), dtype=int))
    with pytest.raises(DataError, match="must be integer indices"):
        sap(np.zeros((5, 2)), np.zeros((5, 2)))
