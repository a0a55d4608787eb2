"""The statistics of a sweep's conclusion: a group's spread over seeds and a contrast between two groups.

Losses span decades, so everything is computed on logarithms: a group's centre is the geometric mean, and two
groups compare by the ratio of their values. Every distribution comes from ``scipy.stats``:

- a group's interval: exp(mean ± t(0.975, n−1) · sd / √n) of the log values (sd with ddof = 1);
- a contrast over shared seeds (common random numbers: a seed fixes the data and the initial weights): the
  geometric mean of the per-seed ratios, its paired-t 95% interval, and the exact two-sided sign-flip
  (permutation) test on the per-seed log ratios, all 2^n sign patterns. ``p_min`` = 2 / 2^n is the least p
  that n pairs can give: with 5 pairs, no result reaches 0.05;
- groups that share no seed: Welch's t-test on the log values.

Plain numbers in, plain numbers out: no MLflow, no config (tracking/groups.py feeds it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95  # every interval's confidence
ALPHA = 0.05  # the p a verdict calls a difference
EXACT_UP_TO = 20  # pairs whose 2^n sign patterns are all enumerated (about a million); more are sampled
SAMPLED = 100_000  # sign patterns drawn beyond that, from a fixed seed: the same report every time
SIGN_FLIP, SIGN_FLIP_SAMPLED, WELCH, NONE = "sign-flip", "sign-flip (sampled)", "welch", "none"


@dataclass(frozen=True)
class Spread:
    """A group's values over its seeds: the geometric mean with its t-interval in log space, and the order
    statistics. ``None`` where n is too small (no interval from one value)."""

    n: int
    gmean: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    median: float | None = None
    min: float | None = None
    max: float | None = None

    @property
    def constant(self) -> bool:
        """Every seed gave the same value: a zero-width interval, nothing that seeds vary."""
        return self.n > 1 and self.min == self.max


@dataclass(frozen=True)
class Quartiles:
    """Median and interquartile range (numpy's linear interpolation), over runs."""

    n: int
    median: float | None = None
    q1: float | None = None
    q3: float | None = None


@dataclass(frozen=True)
class Contrast:
    """``group`` against ``baseline`` on one metric: ratio = geometric mean of group / baseline."""

    metric: str
    group: str
    baseline: str
    pairs: int  # shared seeds compared (0: Welch's test on all values)
    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    test: str
    p: float | None
    p_min: float | None  # the least p this many pairs can give (sign-flip only)
    lower: int = 0  # pairs where the group's value is below the baseline's
    higher: int = 0  # ... above it


def _positive(values: Sequence[float]) -> np.ndarray:
    """The values a log scale can hold: finite and above zero."""
    a = np.asarray([v for v in values if v is not None], dtype=float)
    return a[np.isfinite(a) & (a > 0)]


def log_interval(logs: np.ndarray) -> tuple[float | None, float | None]:
    """The t-interval (``LEVEL``) of the mean of ``logs``, still in log space; zero width for equal values,
    None for fewer than two."""
    from scipy import stats

    n = len(logs)
    if n < 2:
        return None, None
    sem = stats.sem(logs)  # ddof = 1
    mean = float(np.mean(logs))
    if sem == 0:  # scipy's interval wants a positive scale: equal values have no spread to widen by
        return mean, mean
    low, high = stats.t.interval(LEVEL, n - 1, loc=mean, scale=sem)
    return float(low), float(high)


def spread(values: Sequence[float]) -> Spread:
    """A group's spread: geometric mean, its 95% t-interval in log space, median, min and max."""
    from scipy import stats

    a = _positive(values)
    if len(a) == 0:
        return Spread(0)
    low, high = log_interval(np.log(a))
    return Spread(
        n=len(a),
        gmean=float(stats.gmean(a)),
        ci_low=None if low is None else math.exp(low),
        ci_high=None if high is None else math.exp(high),
        median=float(np.median(a)),
        min=float(a.min()),
        max=float(a.max()),
    )


def quartiles(values: Sequence[float]) -> Quartiles:
    """Median and interquartile range of the finite values."""
    a = np.asarray([v for v in values if v is not None], dtype=float)
    a = a[np.isfinite(a)]
    if len(a) == 0:
        return Quartiles(0)
    q1, median, q3 = np.percentile(a, [25, 50, 75])
    return Quartiles(len(a), float(median), float(q1), float(q3))


def p_min(pairs: int) -> float:
    """The least two-sided p that the sign-flip test can give with ``pairs`` pairs: 2 / 2^n (1 for n ≤ 1)."""
    return min(1.0, 2.0 / 2.0**pairs)


def pairs_needed(alpha: float = ALPHA) -> int:
    """The fewest pairs whose ``p_min`` is below ``alpha``: 6 for 0.05."""
    n = 1
    while p_min(n) >= alpha:
        n += 1
    return n


def sign_flip(log_ratios: np.ndarray) -> tuple[float, str]:
    """(p, test): the two-sided sign-flip test of mean(log ratios) = 0 (scipy's one-sample permutation test),
    exact up to ``EXACT_UP_TO`` pairs, sampled beyond."""
    from scipy import stats

    if len(log_ratios) < 2:  # one pair: both signs are as extreme as each other (scipy needs two)
        return 1.0, SIGN_FLIP
    exact = len(log_ratios) <= EXACT_UP_TO
    result = stats.permutation_test(
        (log_ratios,),
        lambda d, axis: np.mean(d, axis=axis),
        permutation_type="samples",  # one sample: each pair's sign is flipped
        vectorized=True,
        n_resamples=np.inf if exact else SAMPLED,
        alternative="two-sided",
        rng=np.random.default_rng(0),
    )
    return float(min(1.0, result.pvalue)), SIGN_FLIP if exact else SIGN_FLIP_SAMPLED


def contrast(
    metric: str,
    group: str,
    values: Mapping[int, float],
    baseline: str,
    base_values: Mapping[int, float],
) -> Contrast:
    """``group`` against ``baseline`` on ``metric``, from each group's value per seed.

    Seeds both groups have are paired; without any, Welch's t-test on the log values. Two groups whose values
    are each the same on every seed (seeds do not vary them) are compared but not tested: ``test`` = none."""
    from scipy import stats

    mine = {s: v for s, v in values.items() if len(_positive([v]))}
    theirs = {s: v for s, v in base_values.items() if len(_positive([v]))}
    shared = sorted(set(mine) & set(theirs))
    fixed = spread(list(mine.values())).constant and spread(list(theirs.values())).constant
    if shared:
        d = np.log([mine[s] for s in shared]) - np.log([theirs[s] for s in shared])
        low, high = log_interval(d)
        p, test = (None, NONE) if fixed else sign_flip(d)
        return Contrast(
            metric, group, baseline, len(shared), math.exp(float(np.mean(d))),
            None if low is None else math.exp(low), None if high is None else math.exp(high),
            test, p, None if fixed else p_min(len(shared)), int(np.sum(d < 0)), int(np.sum(d > 0)),
        )
    a, b = np.log(list(mine.values())), np.log(list(theirs.values()))
    if len(a) == 0 or len(b) == 0:
        return Contrast(metric, group, baseline, 0, None, None, None, WELCH, None, None)
    ratio = math.exp(float(np.mean(a) - np.mean(b)))
    if fixed or len(a) < 2 or len(b) < 2:  # Welch needs a spread in both groups
        return Contrast(metric, group, baseline, 0, ratio, None, None, NONE if fixed else WELCH, None, None)
    result = stats.ttest_ind(a, b, equal_var=False)
    low, high = result.confidence_interval(LEVEL)
    return Contrast(metric, group, baseline, 0, ratio, math.exp(low), math.exp(high), WELCH,
                    float(result.pvalue), None)


NAMES = {"final_loss": "final loss", "step_ms": "step time"}


def _g(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.2g}"


def verdict(c: Contrast) -> str:
    """One line a person reads, e.g. ``adam vs sgd: final loss 0.012× (95% CI 0.004–0.036), lower on 5/5
    seeds, p = 0.0625 (the least 5 pairs can give); 5 pairs cannot reach p < 0.05, 6 can``."""
    head = f"{c.group} vs {c.baseline}: {NAMES.get(c.metric, c.metric)}"
    if c.ratio is None:
        return f"{head}: no values to compare"
    line = f"{head} {_g(c.ratio)}×"
    if c.ci_low is not None and c.ci_high is not None:
        line += f" ({LEVEL:.0%} CI {_g(c.ci_low)}–{_g(c.ci_high)})"
    if c.test == NONE:  # both configs give one value whatever the seed: the ratio is exact, not a sample
        return f"{line}, the same on every seed: seeds do not vary these configs, nothing to test"
    if c.pairs:
        side = "lower" if c.ratio < 1 else "higher"
        line += f", {side} on {c.lower if side == 'lower' else c.higher}/{c.pairs} seeds"
    else:
        line += ", no shared seeds (Welch's t-test on log values)"
    if c.p is None:
        return f"{line}, not tested: too few values"
    line += f", p = {c.p:.3g}"
    if c.p_min is not None and c.p <= c.p_min * (1 + 1e-9):
        line += f" (the least {c.pairs} pairs can give)"
    if c.p_min is not None and c.p_min >= ALPHA:
        return f"{line}; cannot decide: {c.pairs} pairs cannot reach p < {ALPHA:g}, {pairs_needed()} can"
    if c.p >= ALPHA:
        return f"{line}; no difference shown at p < {ALPHA:g}"
    return line


def band(logs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per column of ``logs`` (runs × steps, NaN where a run has no value): (runs counted, mean, low, high) of
    the log values, the interval the t one of :func:`log_interval` (NaN with fewer than two runs; zero width
    for equal values)."""
    from scipy import stats

    ok = np.isfinite(logs)
    n = ok.sum(axis=0)
    x = np.where(ok, logs, 0.0)
    mean = x.sum(axis=0) / np.maximum(n, 1)
    sd = np.sqrt((np.where(ok, logs - mean, 0.0) ** 2).sum(axis=0) / np.maximum(n - 1, 1))
    half = stats.t.ppf(0.5 + LEVEL / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(np.maximum(n, 1))
    half = np.where(n > 1, half, np.nan)
    mean = np.where(n > 0, mean, np.nan)
    return n, mean, mean - half, mean + half
