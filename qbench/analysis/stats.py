"""Statistics over sessions: pure functions, no I/O.

The unit of replication is the session (a fresh process, a fresh model load): steps inside one
session are not independent. So a cell's figure is the median over sessions of each session's
median step time, and intervals resample whole sessions, never steps.

Intervals (95%):
  - BCa bootstrap (scipy.stats.bootstrap) over sessions, for ms/step and for ratios;
  - below 10 sessions percentile-type bootstrap intervals cover too little, so a t-interval on the
    log of the per-session ratio (or of ms/step) is also given, and each figure says which it uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_SESSIONS_FOR_BOOTSTRAP = 10
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str  # "bca-bootstrap", "t-log", or "n/a"

    def text(self, digits: int = 3) -> str:
        if self.method == "n/a":
            return "n/a"
        return f"{self.low:.{digits}g}-{self.high:.{digits}g} ({self.method})"


NO_INTERVAL = Interval(math.nan, math.nan, "n/a")


def median(values) -> float:
    return float(np.median(np.asarray(values, dtype=float)))


def quantiles(values, low: float = 0.25, high: float = 0.75) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(np.quantile(array, low)), float(np.quantile(array, high))


def t_interval_log(values) -> Interval:
    """t-interval on log(values), mapped back: for positive quantities such as ratios and ms."""
    from scipy import stats

    logs = np.log(np.asarray(values, dtype=float))
    n = logs.size
    if n < 2:
        return NO_INTERVAL
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * logs.std(ddof=1) / math.sqrt(n)
    centre = logs.mean()
    return Interval(math.exp(centre - half), math.exp(centre + half), "t-log")


def bootstrap_interval(samples: tuple, statistic, paired: bool = False, seed: int = 0) -> Interval:
    """BCa interval of `statistic` over `samples`; the statistic takes `axis` (scipy's vectorised form:
    all 2,000 resamples in one call each, with the same resamples and interval as one call a
    resample, tens of times faster)."""
    from scipy import stats

    if min(len(s) for s in samples) < 2 or all(np.ptp(s) == 0 for s in samples):
        return NO_INTERVAL
    result = stats.bootstrap(
        tuple(np.asarray(s, dtype=float) for s in samples),
        statistic,
        paired=paired,
        vectorized=True,
        confidence_level=CONFIDENCE,
        method="BCa",
        n_resamples=2000,
        random_state=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):
        return NO_INTERVAL
    return Interval(float(low), float(high), "bca-bootstrap")


def _median(values, axis=-1):
    return np.median(values, axis=axis)


def _ratio_of_medians(numerators, denominators, axis=-1):
    return np.median(numerators, axis=axis) / np.median(denominators, axis=axis)


def session_interval(values) -> Interval:
    """Interval for the median over sessions of a positive per-session figure."""
    if len(values) >= MIN_SESSIONS_FOR_BOOTSTRAP:
        return bootstrap_interval((values,), _median)
    return t_interval_log(values)


def ratio_interval(numerators, denominators, paired: bool) -> Interval:
    """Interval for median(numerators) / median(denominators), resampling sessions.

    Paired (the same sessions, e.g. eager vs graphs inside each session): the per-session ratio.
    Unpaired (different sessions, e.g. backend vs bf16): a two-sample bootstrap of the ratio of medians.
    """
    if paired:
        ratios = [n / d for n, d in zip(numerators, denominators, strict=True)]
        return session_interval(ratios)
    if min(len(numerators), len(denominators)) >= MIN_SESSIONS_FOR_BOOTSTRAP:
        return bootstrap_interval((numerators, denominators), _ratio_of_medians)
    if min(len(numerators), len(denominators)) < 2:
        return NO_INTERVAL
    # Welch-style t-interval on the difference of mean logs.
    from scipy import stats

    a, b = np.log(np.asarray(numerators, float)), np.log(np.asarray(denominators, float))
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        return NO_INTERVAL
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, dof) * math.sqrt(va + vb)
    centre = a.mean() - b.mean()
    return Interval(math.exp(centre - half), math.exp(centre + half), "t-log")


def coefficient_of_variation(values) -> float:
    array = np.asarray(values, dtype=float)
    return float(array.std(ddof=1) / array.mean()) if array.size > 1 else 0.0
