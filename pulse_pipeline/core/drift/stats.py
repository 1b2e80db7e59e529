"""Two-sample drift statistics, numpy only: each takes a reference side and a recent side.

- `mmd_test`: squared maximum mean discrepancy (unbiased estimate) with an RBF kernel whose
  width is the median pairwise distance of the pooled sample (the median heuristic:
  k(a, b) = exp(-|a - b|^2 / (2 * median^2))), and a permutation p-value: the share of
  random relabellings of the pooled sample whose MMD^2 is at least the observed one.
- `domain_classifier_auc`: how well an L2-regularized logistic regression tells the sides
  apart, as the ROC AUC of its out-of-fold scores (stratified k-fold): 0.5 = the sides look
  the same to it, 1.0 = fully separable. Classes are weighted to balance, so unequal sides do
  not move the score.
- `distribution_drift`: PSI and Jensen-Shannon divergence of binned values (labels, score
  bins, length bins), with 0.5 added to every bin's count on both sides (so an empty bin
  gives a finite PSI), and a permutation p-value of the largest PSI over the columns (PSI
  grows with the number of bins on small samples even when nothing moved).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERMUTATIONS = 200
SMOOTHING = 0.5  # added to every bin's count, both sides (a Jeffreys prior)
LENGTH_BINS = 10  # length drift: bins at the deciles of the reference lengths (and outside its range)
SCORE_BINS = 10  # score drift: equal-width bins across the family's score_range
MEDIAN_POINTS = 1000  # the kernel width is the median distance among at most this many points


@dataclass(frozen=True)
class MMDResult:
    mmd2: float
    p_value: float
    bandwidth: float  # the median pairwise distance used as the kernel width


@dataclass(frozen=True)
class DistributionDrift:
    psi: list[float]  # per column
    js: list[float]  # per column, base 2 (0 = same, 1 = disjoint)
    p_value: float  # of the largest PSI over the columns, by permutation

    @property
    def max_psi(self) -> float:
        return max(self.psi)

    @property
    def max_js(self) -> float:
        return max(self.js)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both classes")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average rank within each run of tied scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for lo, hi in zip(starts, ends, strict=True):
        ranks[order[lo:hi]] = (lo + hi + 1) / 2.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _sq_distances(z: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", z, z)
    d = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    np.maximum(d, 0.0, out=d)
    np.fill_diagonal(d, 0.0)
    return d


def mmd_test(
    reference: np.ndarray, recent: np.ndarray, *, permutations: int = PERMUTATIONS, seed: int = 0
) -> MMDResult:
    """Unbiased MMD^2 between the sides with a median-heuristic RBF kernel, and its permutation p-value."""
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(recent, dtype=np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("MMD needs at least two points per side")
    rng = np.random.default_rng(seed)
    kernel = _sq_distances(np.vstack([x, y]))
    some = np.sort(rng.permutation(m + n)[:MEDIAN_POINTS])  # the median on at most 1000 points
    median = float(np.median(kernel[np.ix_(some, some)][np.triu_indices(len(some), k=1)]))
    if median <= 0:  # every point identical: no kernel width, no discrepancy
        return MMDResult(0.0, 1.0, 0.0)
    np.multiply(kernel, -1.0 / (2.0 * median), out=kernel)
    np.exp(kernel, out=kernel)
    labels = np.zeros((m + n, permutations + 1))
    labels[:m, 0] = 1.0  # column 0: the observed split; the others: random relabellings
    for j in range(1, permutations + 1):
        labels[rng.permutation(m + n)[:m], j] = 1.0
    k_a = kernel @ labels  # [N, P+1]
    k_1 = kernel.sum(axis=1)
    xx = np.einsum("ij,ij->j", labels, k_a) - m  # sums over x-x pairs minus the diagonal (k = 1)
    xy = k_a.sum(axis=0) - xx - m  # x-y pairs: rows in x, all columns, minus x-x
    yy = (k_1.sum() - 2 * k_a.sum(axis=0) + xx + m) - n  # y-y pairs minus the diagonal
    stats = xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)
    observed = stats[0]
    p_value = (1 + int(np.sum(stats[1:] >= observed - 1e-12))) / (permutations + 1)
    return MMDResult(float(observed), float(p_value), float(np.sqrt(median)))


def _fit_logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray, c: float) -> np.ndarray:
    """Newton's method on sum(weight * log loss) + |w|^2 / (2c), the bias unpenalized; returns [w, b]."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    beta = np.zeros(xb.shape[1])
    penalty = np.full(xb.shape[1], 1.0 / c)
    penalty[-1] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ beta, -30, 30)))
        grad = xb.T @ (weights * (p - y)) + penalty * beta
        hess = (xb * (weights * p * (1 - p))[:, None]).T @ xb + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < 1e-6:
            break
    return beta


def _folds(positive: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of each row, each class dealt round-robin in a random order (stratified)."""
    fold = np.empty(len(positive), dtype=np.int64)
    for cls in (True, False):
        idx = np.flatnonzero(positive == cls)
        fold[rng.permutation(idx)] = np.arange(len(idx)) % k
    return fold


def domain_classifier_auc(
    reference: np.ndarray, recent: np.ndarray, *, folds: int = 5, c: float = 1.0, seed: int = 0
) -> float:
    """Out-of-fold ROC AUC of a logistic regression telling recent (positive) from reference rows."""
    x = np.vstack([reference, recent]).astype(np.float64)
    positive = np.r_[np.zeros(len(reference), bool), np.ones(len(recent), bool)]
    k = min(folds, len(reference), len(recent))
    if k < 2:
        raise ValueError("the domain classifier needs at least two rows per side")
    fold = _folds(positive, k, np.random.default_rng(seed))
    scores = np.empty(len(x))
    for f in range(k):
        train, test = fold != f, fold == f
        mean = x[train].mean(axis=0)
        std = x[train].std(axis=0) + 1e-8
        y = positive[train].astype(float)
        n_pos = y.sum()
        weights = np.where(y == 1, len(y) / (2 * n_pos), len(y) / (2 * (len(y) - n_pos)))
        beta = _fit_logistic((x[train] - mean) / std, y, weights, c)
        scores[test] = ((x[test] - mean) / std) @ beta[:-1] + beta[-1]
    return roc_auc(scores, positive)


def _probabilities(counts: np.ndarray) -> np.ndarray:
    smoothed = counts + SMOOTHING
    return smoothed / smoothed.sum(axis=-1, keepdims=True)


def psi(reference_counts: np.ndarray, recent_counts: np.ndarray) -> float:
    """Population stability index of two count vectors over the same bins (smoothed)."""
    p, q = (
        _probabilities(np.asarray(reference_counts, float)),
        _probabilities(np.asarray(recent_counts, float)),
    )
    return float(np.sum((q - p) * np.log(q / p)))


def js_divergence(reference_counts: np.ndarray, recent_counts: np.ndarray) -> float:
    """Jensen-Shannon divergence, base 2, of two count vectors over the same bins (smoothed)."""
    p, q = (
        _probabilities(np.asarray(reference_counts, float)),
        _probabilities(np.asarray(recent_counts, float)),
    )
    mid = (p + q) / 2
    return float(max(0.0, 0.5 * np.sum(p * np.log2(p / mid)) + 0.5 * np.sum(q * np.log2(q / mid))))


def _psi_rows(ref_counts: np.ndarray, new_counts: np.ndarray) -> np.ndarray:
    p, q = _probabilities(ref_counts), _probabilities(new_counts)
    return np.sum((q - p) * np.log(q / p), axis=-1)


def distribution_drift(
    reference_bins: np.ndarray,
    recent_bins: np.ndarray,
    n_bins: int,
    *,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> DistributionDrift:
    """PSI and JS per column of bin indices ([rows] or [rows, columns], values in 0..n_bins-1),
    and the permutation p-value of the largest PSI."""
    ref = np.asarray(reference_bins, dtype=np.int64).reshape(len(reference_bins), -1)
    new = np.asarray(recent_bins, dtype=np.int64).reshape(len(recent_bins), -1)
    m, cols = ref.shape

    def counts(rows: np.ndarray) -> np.ndarray:
        return np.stack([np.bincount(rows[:, c], minlength=n_bins) for c in range(cols)]).astype(float)

    ref_counts, new_counts = counts(ref), counts(new)
    psis = _psi_rows(ref_counts, new_counts)
    js = [js_divergence(a, b) for a, b in zip(ref_counts, new_counts, strict=True)]
    pooled = np.vstack([ref, new])
    total = ref_counts + new_counts
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(permutations):
        perm_ref = counts(pooled[rng.permutation(len(pooled))[:m]])
        if _psi_rows(perm_ref, total - perm_ref).max() >= psis.max() - 1e-12:
            exceed += 1
    return DistributionDrift(psis.tolist(), js, (1 + exceed) / (permutations + 1))


def categorical_bins(reference: list[str], recent: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Bin indices of categorical values over the categories either side holds (sorted)."""
    names = sorted(set(reference) | set(recent))
    index = {name: i for i, name in enumerate(names)}
    as_bins = lambda values: np.array([index[v] for v in values], dtype=np.int64)  # noqa: E731
    return as_bins(reference), as_bins(recent), names


def quantile_edges(reference: np.ndarray, bins: int = LENGTH_BINS) -> np.ndarray:
    """Edges at the reference's quantiles, plus its minimum and just above its maximum, so values
    outside what the reference held fall in bins of their own (repeated edges merged)."""
    ref = np.asarray(reference, float)
    inner = np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(np.r_[ref.min(), inner, np.nextafter(ref.max(), np.inf)])


def score_edges(low: float, high: float, bins: int = SCORE_BINS) -> np.ndarray:
    """Inner edges of equal-width bins across [low, high]; values outside fall in the end bins."""
    return np.linspace(low, high, bins + 1)[1:-1]


def to_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each value: 0 below the first edge ... len(edges) from the last edge up."""
    return np.searchsorted(edges, np.asarray(values, float), side="right")
