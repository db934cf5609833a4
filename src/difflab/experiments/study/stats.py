"""Paired comparisons of study arms: intervals of a mean difference, Holm's step-down correction, and the
"best arm and the arms tied with it" of one comparison group.

Arms of a study share their test points, seeds and every t / eps draw (common random numbers), so a
difference between two arms is *paired*: with per-unit values a_i, b_i of the same unit i (a test point, or
a training seed), d_i = a_i - b_i and the shared part of the noise cancels in d_i. Two kinds of unit:

- ``"points"``: per-point values of one run per arm (e.g. log q(x_i) - log p_theta(x_i) on the held-out
  points, or the per-point NELBO with the shared draws). The interval covers the evaluation noise (which
  test points, which t / eps draws) of these runs, *not* training-seed variance.
- ``"seeds"``: one value per training seed per arm, paired by seed. The interval covers seed variance and
  evaluation noise together.

Interval of the mean difference d̄ = (1/n) Σ d_i, s² = Σ (d_i - d̄)² / (n - 1), se = s / √n:

- t-interval (Student 1908): d̄ ± t_{n-1, 1-α/2} · se, two-sided p = 2 · P(T_{n-1} > |d̄| / se). Used for
  points (n in the hundreds, so it is the normal interval of the central limit theorem) and for seeds.
- percentile bootstrap (Efron & Tibshirani 1993, ch. 13): B resamples of the d_i with replacement, interval
  the α/2 and 1 - α/2 quantiles of the resampled means, p = 2 · min(P*(d̄* ≤ 0), P*(d̄* ≥ 0)). Used for seeds
  only when n ≥ 10 and the d_i are skewed (|sample skewness| > 1): with fewer seeds a bootstrap has too few
  distinct resamples (10 for n = 3) and under-covers, so small n keeps the t-interval.

Holm (1979) over the m comparisons of a group: sort p ascending, p_(1) ≤ ... ≤ p_(m); the adjusted values
are p̃_(j) = max_{k ≤ j} min(1, (m - k + 1) p_(k)), and comparison j is significant at level α when
p̃_(j) < α. This controls the family-wise error over the group (any single false "worse") at α, for any
dependence between the comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as _st

UNITS = ("points", "seeds")
LEVEL = 0.95
MIN_BOOTSTRAP_N = 10
SKEW_FOR_BOOTSTRAP = 1.0


@dataclass(frozen=True)
class PairedInterval:
    """Mean difference ``diff`` = mean(a - b) over ``n`` paired units, its standard error, the ``level``
    interval [lo, hi], the two-sided p-value of "mean difference = 0", and how it was computed (``method``:
    "t" or "bootstrap"; ``unit``: "points" or "seeds")."""

    diff: float
    se: float
    lo: float
    hi: float
    p: float
    n: int
    method: str
    unit: str
    level: float = LEVEL

    @property
    def half_width(self) -> float:
        """(hi - lo) / 2: the ``±`` of the interval."""
        return 0.5 * (self.hi - self.lo)

    def contains_zero(self) -> bool:
        return self.lo <= 0.0 <= self.hi


def _p_from_t(mean: float, se: float, df: int) -> float:
    if se == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    return float(2.0 * _st.t.sf(abs(mean) / se, df))


def t_interval(d: np.ndarray, unit: str, level: float = LEVEL) -> PairedInterval:
    """d̄ ± t_{n-1, (1+level)/2} · s/√n with its two-sided p-value (module docstring). Needs n ≥ 2."""
    d = np.asarray(d, dtype=np.float64)
    n = d.size
    if n < 2:
        raise ValueError(f"a t-interval needs at least 2 paired units, got {n}")
    mean = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    q = float(_st.t.ppf(0.5 + 0.5 * level, n - 1))
    return PairedInterval(
        mean, se, mean - q * se, mean + q * se, _p_from_t(mean, se, n - 1), n, "t", unit, level
    )


def bootstrap_interval(
    d: np.ndarray, unit: str, level: float = LEVEL, n_boot: int = 10000, seed: int = 0
) -> PairedInterval:
    """Percentile bootstrap of the mean of d (``n_boot`` resamples, a fixed ``seed``); se = std of the
    resampled means; p = 2 min(P*(d̄* ≤ 0), P*(d̄* ≥ 0)), at least 1/n_boot."""
    d = np.asarray(d, dtype=np.float64)
    n = d.size
    if n < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 paired units, got {n}")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - 0.5 * level, 0.5 + 0.5 * level])
    p = 2.0 * min(float((means <= 0).mean()), float((means >= 0).mean()))
    p = float(min(1.0, max(p, 1.0 / n_boot)))
    return PairedInterval(
        float(d.mean()), float(means.std(ddof=1)), float(lo), float(hi), p, n, "bootstrap", unit, level
    )


def paired_interval(a: np.ndarray, b: np.ndarray, unit: str, level: float = LEVEL) -> PairedInterval:
    """Interval of mean(a - b) for values of the same units, by the rule of the module docstring: the
    t-interval, except the bootstrap for seeds when n ≥ 10 and |skewness of a - b| > 1."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be 1-D arrays of one length, got {a.shape} and {b.shape}")
    d = a - b
    skewed = (
        d.size >= MIN_BOOTSTRAP_N and float(np.std(d)) > 0 and abs(float(_st.skew(d))) > SKEW_FOR_BOOTSTRAP
    )
    if unit == "seeds" and skewed:
        return bootstrap_interval(d, unit, level)
    return t_interval(d, unit, level)


def unpaired_interval(a: np.ndarray, b: np.ndarray, unit: str, level: float = LEVEL) -> PairedInterval:
    """What ignoring the pairing gives (Welch 1947): mean(a) - mean(b) ± t_ν · √(s_a²/n_a + s_b²/n_b), ν by
    Welch–Satterthwaite. Shown for comparison only; the report uses :func:`paired_interval`."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    nu = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if se > 0 else a.size + b.size - 2
    mean = float(a.mean() - b.mean())
    q = float(_st.t.ppf(0.5 + 0.5 * level, nu))
    p = _p_from_t(mean, se, nu)
    return PairedInterval(mean, se, mean - q * se, mean + q * se, p, a.size + b.size, "welch", unit, level)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: p̃_(j) = max_{k ≤ j} min(1, (m - k + 1) p_(k))
    over the ascending order (module docstring)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class GroupComparison:
    """The best arm of a group for one metric and every other arm against it.

    ``best``: the arm with the best mean (lowest for "min", highest for "max"). ``intervals[arm]``: paired
    interval of arm - best (unadjusted ``level``); ``adjusted[arm]``: its Holm-adjusted p-value over the
    group's m = k - 1 comparisons. ``tied``: arms whose adjusted p ≥ α (not significantly different from the
    best, in order of their mean); ``worse``: the others. ``significant``: the best is significantly better
    than every other arm (``tied`` empty). ``unit``: "points" or "seeds"; ``n``: paired units per comparison
    (the smallest over the group).
    """

    metric: str
    direction: str
    best: Hashable
    means: dict[Hashable, float]
    intervals: dict[Hashable, PairedInterval]
    adjusted: dict[Hashable, float]
    tied: list[Hashable] = field(default_factory=list)
    worse: list[Hashable] = field(default_factory=list)
    unit: str = "seeds"
    n: int = 0
    alpha: float = 1.0 - LEVEL

    @property
    def significant(self) -> bool:
        return not self.tied and bool(self.worse)


def compare_arms(
    values: Mapping[Hashable, Mapping[Hashable, float]],
    metric: str,
    direction: str,
    unit: str,
    alpha: float = 1.0 - LEVEL,
) -> GroupComparison | None:
    """Best arm and ties of one group: ``values[arm][unit_key]`` are per-unit values (per point or per seed);
    each arm is paired with the best on their common units. None when fewer than 2 arms have 2 common units
    with the best, or a value is not finite.

    The best is chosen on the data and the others tested against it (as the issue asks); Holm controls the
    error of the k - 1 tests but not the choice of the best itself (Hsu's multiple comparisons with the best
    would, at the cost of wider intervals)."""
    if direction not in ("min", "max"):
        raise ValueError(f"direction must be 'min' or 'max', got {direction!r}")
    finite = {a: v for a, v in values.items() if v and all(math.isfinite(x) for x in v.values())}
    if len(finite) < 2:
        return None
    means = {a: float(np.mean(list(v.values()))) for a, v in finite.items()}
    sign = 1.0 if direction == "min" else -1.0
    best = min(means, key=lambda a: sign * means[a])
    intervals = {}
    for arm, vals in finite.items():
        common = [k for k in finite[best] if k in vals]
        if arm == best or len(common) < 2:
            continue
        a = np.array([vals[k] for k in common])
        b = np.array([finite[best][k] for k in common])
        intervals[arm] = paired_interval(a, b, unit, 1.0 - alpha)
    if not intervals:
        return None
    others = sorted(intervals, key=lambda a: sign * means[a])
    adjusted = dict(zip(others, holm([intervals[a].p for a in others])))
    tied = [a for a in others if adjusted[a] >= alpha]
    worse = [a for a in others if adjusted[a] < alpha]
    n = min(iv.n for iv in intervals.values())
    return GroupComparison(metric, direction, best, means, intervals, adjusted, tied, worse, unit, n, alpha)
