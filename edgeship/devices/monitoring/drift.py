"""The drift statistics, each on two samples: a reference (from the run) and a window (from the log).

- **PSI** (population stability index) over fixed bins: ``sum((a - e) * ln(a / e))`` of the bin
  proportions, each floored at ``PSI_EPS`` so an empty bin costs a bounded amount. Rule of thumb
  (and the default threshold): < 0.1 stable, 0.1-0.2 moderate, >= 0.2 a shift worth a look.
- **Two-sample Kolmogorov-Smirnov** (``scipy.stats.ks_2samp``) for numeric values logged raw.
- **Chi-square homogeneity** (``scipy.stats.chi2_contingency`` on the 2 x k table of counts) for
  categorical values, binned numeric values (``summary`` logs) and the prediction mix. It is a
  two-sample test on purpose: the references are samples too (wine's test split has 27 rows),
  and ``scipy.stats.chisquare`` against reference proportions would take them as exact and
  alarm on the reference's own noise.

scipy rather than evidently: these three tests are all a window needs, scipy is already
installed with scikit-learn, and evidently (a report framework with its own dependency tree)
would compute the same tests behind an API that changes between its minor versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

PSI_EPS = 1e-4
DEFAULT_BINS = 10


@dataclass(frozen=True)
class TestResult:
    """One statistic on one feature of one window."""

    psi: float
    statistic: float | None  # KS D or chi-square; None when the test cannot run
    p_value: float | None
    test: str  # "ks", "chi2" or "psi" (PSI only)

    def as_dict(self) -> dict[str, float | str | None]:
        return {"psi": round(self.psi, 6), "test": self.test,
                "statistic": None if self.statistic is None else round(self.statistic, 6),
                "p_value": None if self.p_value is None else float(f"{self.p_value:.6g}")}


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray,
        eps: float = PSI_EPS) -> float:
    """PSI of two histograms (counts or proportions over the same bins)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1 or not len(e):
        raise ValueError(f"PSI needs two histograms over the same bins, got {e.shape} and {a.shape}")
    if e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("PSI needs two non-empty histograms")
    ep = np.maximum(e / e.sum(), eps)
    ap = np.maximum(a / a.sum(), eps)
    return float(np.sum((ap - ep) * np.log(ap / ep)))


def quantile_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> list[float]:
    """Interior cut points at the ``bins``-quantiles of ``values`` (duplicates merged)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return []
    cuts = np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1])
    return [float(c) for c in np.unique(cuts)]


def histogram(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts of ``values`` in the ``len(edges) + 1`` bins cut at ``edges`` (as the device bins)."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64),
                          side="right")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)


def ks(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample KS: (D, p-value)."""
    r = stats.ks_2samp(np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64))
    return float(r.statistic), float(r.pvalue)


def chi_square(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, float]:
    """Chi-square homogeneity of two count vectors over the same categories: (statistic, p-value).

    Categories empty in both are dropped; with fewer than two left nothing can differ (p = 1).
    """
    r = np.asarray(reference_counts, dtype=np.float64)
    c = np.asarray(current_counts, dtype=np.float64)
    keep = (r + c) > 0
    if keep.sum() < 2 or r.sum() <= 0 or c.sum() <= 0:
        return 0.0, 1.0
    table = np.vstack([r[keep], c[keep]])
    stat, p, _, _ = stats.chi2_contingency(table, correction=False)
    return float(stat), float(p)


def numeric_drift(reference: np.ndarray, current: np.ndarray, edges: Sequence[float]) -> TestResult:
    """Raw numeric values: PSI over ``edges`` and KS."""
    d, p = ks(reference, current)
    return TestResult(psi(histogram(reference, edges), histogram(current, edges)), d, p, "ks")


def binned_drift(reference_counts: np.ndarray, current_counts: np.ndarray) -> TestResult:
    """Binned or categorical counts (summary logs, categorical features, predictions): PSI and chi-square."""
    stat, p = chi_square(reference_counts, current_counts)
    return TestResult(psi(reference_counts, current_counts), stat, p, "chi2")


def histogram_drift(reference: np.ndarray, current: np.ndarray) -> TestResult:
    """Mean intensity histograms (pixel fractions, not independent draws): PSI only."""
    return TestResult(psi(reference, current), None, None, "psi")
