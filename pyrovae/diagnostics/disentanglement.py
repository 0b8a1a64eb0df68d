"""Disentanglement metrics of a code against ground-truth factors.

``codes`` (N, D) are posterior means E_q[z | x_n]; ``factors`` (N, K) the integer grid index of
each ground-truth factor of x_n (its class, or its step on a grid of values).

- :func:`mig`: the mutual information gap (Chen et al. 2018, eq. 6), with each code dimension
  discretized into ``bins`` equal-width bins as Locatello et al. (2019) do;
- :func:`dci`: disentanglement, completeness and informativeness (Eastwood & Williams 2018,
  sec. 2) from the importances |w| of a Lasso regression of each standardized factor on the
  standardized code, informativeness as the held-out R^2;
- :func:`factor_vae_score`: the majority-vote accuracy of Kim & Mnih (2018, sec. 4): the code
  dimension of least normalized variance when one factor is held fixed should name the factor;
- :func:`sap`: the separated attribute predictability (Kumar et al. 2018, sec. 3): per factor, the
  gap between the two code dimensions that predict it best (R^2 of a linear fit).

A code equal to the factors scores 1 on each, a code independent of them about 0, and every
metric is unchanged when the code's dimensions are permuted.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from pyrovae.errors import DataError

#: the disentanglement metrics of ``pyrovae diagnose --disentanglement``, with their meaning
METRICS = {
    "mig": "mutual information gap (Chen et al. 2018, eq. 6)",
    "dci": "disentanglement, completeness, informativeness (Eastwood & Williams 2018)",
    "factor_vae": "majority-vote accuracy of the least-varying dimension (Kim & Mnih 2018)",
    "sap": "separated attribute predictability (Kumar et al. 2018)",
}


def _check(codes, factors) -> tuple[np.ndarray, np.ndarray]:
    codes, factors = np.asarray(codes, dtype=np.float64), np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or codes.shape[0] != factors.shape[0] or codes.shape[0] < 2:
        raise DataError(
            f"codes (N, D) and factors (N, K) need the same N >= 2 rows, got {codes.shape} and "
            f"{factors.shape}"
        )
    if not np.issubdtype(factors.dtype, np.integer):
        raise DataError("factors must be integer indices (a class, or a step on a grid of values)")
    return codes, factors


def _discretize(x: np.ndarray, bins: int) -> np.ndarray:
    lo, hi = x.min(0), x.max(0)
    edges = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
    return np.minimum((edges * bins).astype(np.int64), bins - 1)


def _mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in nats of two integer sequences, from their joint histogram."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1.0)
    joint /= joint.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / outer[nz])).sum())


def _entropy(a: np.ndarray) -> float:
    p = np.unique(a, return_counts=True)[1] / len(a)
    return float(-(p * np.log(p)).sum())


def mig(codes, factors, bins: int = 20) -> float:
    """(1/K) sum_k (I(z_j*; v_k) - I(z_j**; v_k)) / H(v_k), j* and j** the two code dimensions
    most informative about factor k (Chen et al. 2018, eq. 6); factors with one value skipped."""
    codes, factors = _check(codes, factors)
    z = _discretize(codes, bins)
    gaps = []
    for k in range(factors.shape[1]):
        h = _entropy(factors[:, k])
        if h == 0:
            continue
        mi = sorted((_mutual_information(z[:, j], factors[:, k]) for j in range(z.shape[1])), reverse=True)
        gaps.append((mi[0] - (mi[1] if len(mi) > 1 else 0.0)) / h)
    return float(np.mean(gaps))


def _standardize(x: np.ndarray) -> np.ndarray:
    sd = x.std(0)
    return (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)


def lasso(x: np.ndarray, y: np.ndarray, alpha: float, iterations: int = 200) -> np.ndarray:
    """``argmin_w (1/2N) |y - x w|^2 + alpha |w|_1`` by cyclic coordinate descent (Friedman et
    al. 2010, eq. 5), for standardized x and centred y."""
    n, d = x.shape
    w, r = np.zeros(d), y.copy()
    norms = (x**2).sum(0) / n
    for _ in range(iterations):
        for j in range(d):
            if norms[j] == 0:
                continue
            rho = x[:, j] @ r / n + norms[j] * w[j]
            new = np.sign(rho) * max(abs(rho) - alpha, 0.0) / norms[j]
            r += x[:, j] * (w[j] - new)
            w[j] = new
    return w


class DCI(NamedTuple):
    """Disentanglement, completeness and informativeness (Eastwood & Williams 2018, sec. 2), and
    the importance matrix R (D, K) they are read from."""

    disentanglement: float
    completeness: float
    informativeness: float
    importance: np.ndarray


def dci(codes, factors, alpha: float = 0.01, test_fraction: float = 0.2, seed: int = 0) -> DCI:
    """DCI from ``R[j, k] = |w[j, k]|`` of a Lasso regression (``alpha``) of standardized factor k
    on the standardized code: disentanglement ``sum_j rho_j (1 - H_K(P[j]))`` with ``P[j, k] =
    R[j, k] / sum_k R[j, k]`` and ``rho_j`` the share of dimension j in R; completeness the mean
    over k of ``1 - H_D(R[:, k] / sum_j R[j, k])``; informativeness the mean held-out R^2
    (``test_fraction`` of the rows, drawn with ``seed``)."""
    codes, factors = _check(codes, factors)
    n, d, k = codes.shape[0], codes.shape[1], factors.shape[1]
    test = np.random.default_rng(seed).permutation(n) < max(1, int(test_fraction * n))
    x, ys = _standardize(codes), _standardize(factors.astype(np.float64))
    r, scores = np.zeros((d, k)), []
    for f in range(k):
        w = lasso(x[~test], ys[~test, f] - ys[~test, f].mean(), alpha)
        r[:, f] = np.abs(w)
        err = ys[test, f] - ys[~test, f].mean() - x[test] @ w
        var = ((ys[test, f] - ys[test, f].mean()) ** 2).mean()
        scores.append(1.0 - (err**2).mean() / var if var > 0 else 0.0)

    def one_minus_entropy(p: np.ndarray, base: int) -> np.ndarray:
        p = p / np.where(p.sum(-1, keepdims=True) > 0, p.sum(-1, keepdims=True), 1.0)
        h = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(-1) / math.log(base)
        return 1.0 - h if base > 1 else np.ones(p.shape[0])

    total = r.sum()
    rho = r.sum(1) / total if total > 0 else np.zeros(d)
    disentangled = float((rho * one_minus_entropy(r, k)).sum())
    complete = float(one_minus_entropy(r.T, d).mean()) if total > 0 else 0.0
    return DCI(disentangled, complete, float(np.mean(scores)), r)


class Score(NamedTuple):
    """A stochastic metric's mean over repeats and its standard error."""

    mean: float
    stderr: float


def factor_vae_score(codes, factors, batch: int = 64, votes: int = 800, repeats: int = 5,
                     seed: int = 0, min_std: float = 0.05) -> Score:  # fmt: skip
    """Kim & Mnih (2018, sec. 4): each vote fixes one factor at a value drawn from its rows, takes
    ``batch`` rows sharing it, divides the code by its standard deviation over all rows and
    votes (argmin_j variance of dimension j, k); dimensions of std below ``min_std`` (collapsed)
    are left out. A majority-vote classifier from dimensions to factors is fitted on half the
    votes and scored on the other half; mean and standard error over ``repeats``."""
    codes, factors = _check(codes, factors)
    rng = np.random.default_rng(seed)
    std = codes.std(0)
    kept = np.flatnonzero(std >= min_std)
    if len(kept) == 0:
        raise DataError(f"every code dimension has a standard deviation below {min_std}: nothing to score")
    z = codes[:, kept] / std[kept]
    ks = [k for k in range(factors.shape[1]) if len(np.unique(factors[:, k])) > 1]
    accs = []
    for _ in range(repeats):
        table = np.zeros((2, len(kept), factors.shape[1]))
        for v in range(votes):
            k = ks[rng.integers(len(ks))]
            value = factors[rng.integers(len(factors)), k]
            rows = np.flatnonzero(factors[:, k] == value)
            pick = rows[rng.integers(len(rows), size=batch)]
            table[v % 2, np.argmin(z[pick].var(0)), k] += 1
        guess = table[0].argmax(1)  # each dimension's factor, from the training votes
        test = table[1]
        accs.append(test[np.arange(len(kept)), guess].sum() / test.sum())
    return Score(
        float(np.mean(accs)), float(np.std(accs, ddof=1) / math.sqrt(repeats)) if repeats > 1 else 0.0
    )


def sap(codes, factors) -> float:
    """mean_k (S_j*k - S_j**k), S_jk the R^2 of a linear fit of factor k on code dimension j
    (the squared correlation), j* and j** the two best (Kumar et al. 2018, sec. 3)."""
    codes, factors = _check(codes, factors)
    x, y = _standardize(codes), _standardize(factors.astype(np.float64))
    corr = (x.T @ y) / codes.shape[0]  # (D, K): standardized columns, so these are correlations
    s = np.sort(corr**2, axis=0)[::-1]
    keep = factors.std(0) > 0
    top2 = s[1] if s.shape[0] > 1 else np.zeros(s.shape[1])
    return float((s[0] - top2)[keep].mean())
