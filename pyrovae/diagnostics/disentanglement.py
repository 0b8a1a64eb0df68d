"""Disentanglement metrics of a code against ground-truth factors, as the field's reference
implementation, disentanglement_lib (Locatello et al. 2019), defines them, through scikit-learn.

``codes`` (N, D) are posterior means E_q[z | x_n]; ``factors`` (N, K) the integer index of each
ground-truth factor of x_n: a class (``categorical``: its labels are names, any relabelling scores
the same) or a step on an ordered grid of values.

- :func:`mig`: the mutual information gap (Chen et al. 2018, eq. 6), each code dimension
  discretized into ``bins`` equal-width bins, I and H by ``sklearn.metrics.mutual_info_score``
  (disentanglement_lib ``mig.py``);
- :func:`dci`: disentanglement, completeness and informativeness (Eastwood & Williams 2018,
  sec. 2) from the feature importances of gradient-boosted trees classifying each factor from
  the code (``sklearn.ensemble.GradientBoostingClassifier``), informativeness their held-out
  accuracy (disentanglement_lib ``dci.py``); ``importance="lasso"``: ``|w|`` of an L1-penalized
  linear model instead (Eastwood & Williams' first choice: Lasso regression for an ordered
  factor, L1 logistic regression for a categorical one), informativeness the held-out R^2 or
  accuracy;
- :func:`factor_vae_score`: the majority-vote accuracy of Kim & Mnih (2018, sec. 4);
- :func:`sap`: the separated attribute predictability (Kumar et al. 2018, sec. 3): per factor,
  the gap between the two code dimensions that predict it best, by the R^2 of a linear fit for
  an ordered factor and by the held-out accuracy of a linear classifier
  (``sklearn.svm.LinearSVC``) for a categorical one (disentanglement_lib ``sap_score.py``).

Each returns a :class:`Score`. A code equal to the factors scores about 1 on each, a code
independent of them about 0 (chance, for the FactorVAE score), and every metric is unchanged
when the code's dimensions are permuted.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from pyrovae.errors import ConfigError, DataError

#: the disentanglement metrics of ``pyrovae diagnose --disentanglement``, with their meaning
METRICS = {
    "mig": "mutual information gap (Chen et al. 2018, eq. 6)",
    "dci": "disentanglement, completeness, informativeness (Eastwood & Williams 2018), boosted trees",
    "factor_vae": "majority-vote accuracy of the least-varying dimension (Kim & Mnih 2018)",
    "sap": "separated attribute predictability (Kumar et al. 2018)",
}
IMPORTANCE = ("trees", "lasso")  #: how DCI weighs each code dimension for each factor


class Score(NamedTuple):
    """A metric's value, its standard error over repeats (0 for a deterministic metric), its
    named parts (DCI's three, a score per factor) and, for DCI, the importance matrix (D, K)."""

    value: float
    stderr: float = 0.0
    parts: dict = {}
    matrix: np.ndarray | None = None


def _check(codes, factors, categorical: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    codes, factors = np.asarray(codes, dtype=np.float64), np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or codes.shape[0] != factors.shape[0] or codes.shape[0] < 2:
        raise DataError(
            f"codes (N, D) and factors (N, K) need the same N >= 2 rows, got {codes.shape} and "
            f"{factors.shape}"
        )
    if not np.issubdtype(factors.dtype, np.integer):
        raise DataError("factors must be integer indices (a class, or a step on a grid of values)")
    bad = [k for k in categorical if not 0 <= k < factors.shape[1]]
    if bad:
        raise DataError(f"categorical names factor columns {bad}, outside 0..{factors.shape[1] - 1}")
    return codes, factors


def _varying(factors: np.ndarray) -> list[int]:
    return [k for k in range(factors.shape[1]) if len(np.unique(factors[:, k])) > 1]


def _split(n: int, test_fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of the held-out rows (at least one, at most all but one)."""
    held = min(max(1, int(round(test_fraction * n))), n - 1)
    return np.random.default_rng(seed).permutation(n) < held


def _discretize(x: np.ndarray, bins: int) -> np.ndarray:
    lo, hi = x.min(0), x.max(0)
    edges = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
    return np.minimum((edges * bins).astype(np.int64), bins - 1)


def mig(codes, factors, bins: int = 20) -> Score:
    """(1/K) sum_k (I(z_j*; v_k) - I(z_j**; v_k)) / H(v_k), j* and j** the two code dimensions
    most informative about factor k (Chen et al. 2018, eq. 6); factors with one value skipped.
    ``parts``: each factor's gap."""
    from sklearn.metrics import mutual_info_score

    codes, factors = _check(codes, factors)
    z = _discretize(codes, bins)
    gaps = {}
    for k in _varying(factors):
        v = factors[:, k]
        mi = sorted((mutual_info_score(v, z[:, j]) for j in range(z.shape[1])), reverse=True)
        gaps[k] = (mi[0] - (mi[1] if len(mi) > 1 else 0.0)) / mutual_info_score(v, v)
    return Score(float(np.mean(list(gaps.values()))), 0.0, gaps)


def _importances(x, y, categorical: bool, importance: str, seed: int):
    """(|importance| of each code dimension, a fitted model with ``score``) for one factor."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import Lasso, LogisticRegression

    if importance == "trees":
        model = GradientBoostingClassifier(random_state=seed).fit(x, y)
        return model.feature_importances_, model
    if categorical:
        model = LogisticRegression(l1_ratio=1.0, C=1.0, solver="saga", max_iter=2000).fit(x, y)
        return np.abs(model.coef_).mean(0), model
    model = Lasso(alpha=0.01).fit(x, (y - y.mean()) / (y.std() or 1.0))
    return np.abs(model.coef_), _Standardized(model, y.mean(), y.std() or 1.0)


class _Standardized:
    """A regression of a standardized target, scored (R^2) on the target's own scale."""

    def __init__(self, model, mean: float, sd: float):
        self.model, self.mean, self.sd = model, mean, sd

    def score(self, x, y) -> float:
        return self.model.score(x, (y - self.mean) / self.sd)


def _one_minus_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """1 - H(p_row) / log(base) for each row of non-negative weights (all-zero rows score 0)."""
    from scipy.stats import entropy

    if base < 2:
        return np.ones(p.shape[0])
    total = p.sum(-1)
    h = np.array([entropy(row, base=base) if t > 0 else 1.0 for row, t in zip(p, total)])
    return 1.0 - h


def dci(
    codes,
    factors,
    categorical: Sequence[int] = (),
    importance: str = "trees",
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Score:
    """DCI (Eastwood & Williams 2018, sec. 2) from the importance matrix R (D, K): each factor
    predicted from the standardized code by gradient-boosted trees (``importance="trees"``,
    R[j, k] the trees' feature importance; informativeness their held-out accuracy, as
    disentanglement_lib) or by an L1-penalized linear model (``"lasso"``: ``R[j, k] = |w[j, k]|``;
    informativeness the held-out R^2 of an ordered factor, the accuracy of a ``categorical``
    one). Disentanglement ``sum_j rho_j (1 - H_K(R[j] / sum_k R[j, k]))`` with rho_j dimension
    j's share of R; completeness the mean over factors of ``1 - H_D(R[:, k] / sum_j R[j, k])``.
    ``value`` is the disentanglement; ``parts`` holds all three."""
    if importance not in IMPORTANCE:
        raise ConfigError(f"DCI importance must be one of {IMPORTANCE}, got {importance!r}")
    codes, factors = _check(codes, factors, categorical)
    test = _split(len(codes), test_fraction, seed)
    x = (codes - codes.mean(0)) / np.where(codes.std(0) > 0, codes.std(0), 1.0)
    ks = _varying(factors)
    r, informative = np.zeros((codes.shape[1], len(ks))), []
    for i, k in enumerate(ks):
        y = factors[:, k]
        weights, model = _importances(x[~test], y[~test], k in categorical, importance, seed)
        r[:, i] = weights
        informative.append(model.score(x[test], y[test]))
    total = r.sum()
    rho = r.sum(1) / total if total > 0 else np.zeros(len(r))
    parts = {
        "disentanglement": float((rho * _one_minus_entropy(r, len(ks))).sum()),
        "completeness": float(_one_minus_entropy(r.T, len(r)).mean()) if total > 0 else 0.0,
        "informativeness": float(np.mean(informative)),
    }
    return Score(parts["disentanglement"], 0.0, parts, r)


def factor_vae_score(
    codes, factors, batch: int = 64, votes: int = 800, repeats: int = 5, seed: int = 0, min_std: float = 0.05
) -> Score:
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
    ks = _varying(factors)
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
    stderr = float(np.std(accs, ddof=1) / math.sqrt(repeats)) if repeats > 1 else 0.0
    return Score(float(np.mean(accs)), stderr, {"chance": 1.0 / len(ks)})


def _predictability(z: np.ndarray, y: np.ndarray, categorical: bool, test: np.ndarray) -> float:
    """How well one code dimension ``z`` (N,) predicts factor ``y``: the R^2 of a linear fit
    (its squared correlation) for an ordered factor, the held-out accuracy of a linear
    classifier, balanced over classes, for a categorical one."""
    if not categorical:
        if z.std() == 0:
            return 0.0
        return float(np.corrcoef(z, y)[0, 1] ** 2)
    from sklearn.svm import LinearSVC

    if z.std() == 0 or len(np.unique(y[~test])) < 2:
        return 0.0
    model = LinearSVC(C=0.01, class_weight="balanced").fit(z[~test, None], y[~test])
    return float(model.score(z[test, None], y[test]))


def sap(codes, factors, categorical: Sequence[int] = (), test_fraction: float = 0.2, seed: int = 0) -> Score:
    """mean_k (S_j*k - S_j**k), S_jk how well code dimension j alone predicts factor k (R^2 of a
    linear fit for an ordered factor, held-out accuracy of a linear classifier for a
    ``categorical`` one), j* and j** the two best (Kumar et al. 2018, sec. 3). ``parts``: each
    factor's gap."""
    codes, factors = _check(codes, factors, categorical)
    test = _split(len(codes), test_fraction, seed)
    gaps = {}
    for k in _varying(factors):
        s = sorted(
            (
                _predictability(codes[:, j], factors[:, k], k in categorical, test)
                for j in range(codes.shape[1])
            ),
            reverse=True,
        )
        gaps[k] = s[0] - (s[1] if len(s) > 1 else 0.0)
    return Score(float(np.mean(list(gaps.values()))), 0.0, gaps)
