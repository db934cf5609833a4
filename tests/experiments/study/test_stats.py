"""Paired intervals, Holm's correction and the best-with-ties rule (issue 10 item 3), against hand-computed
values; each tolerance is one that a plausible wrong implementation (normal quantile for a t one, no √n,
unpaired s.e., Bonferroni for Holm) fails."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from difflab.experiments.study.stats import (
    bootstrap_interval,
    compare_arms,
    holm,
    paired_interval,
    t_interval,
    unpaired_interval,
)


def test_t_interval_hand_computed():
    # d = 1, 2, 3, 4: mean 2.5, s = sqrt(5/3) = 1.29099, se = 0.645497, t_{3, 0.975} = 3.182446
    iv = t_interval(np.array([1.0, 2.0, 3.0, 4.0]), "seeds")
    assert iv.diff == 2.5 and iv.se == pytest.approx(0.6454972, rel=1e-6)
    assert iv.half_width == pytest.approx(3.182446 * 0.6454972, rel=1e-5)  # 2.0543; z = 1.96 would give 1.265
    # p = 2 P(T_3 > 2.5 / 0.645497 = 3.8730) = 0.030466 (scipy's ttest_1samp, an independent implementation)
    assert iv.p == pytest.approx(st.ttest_1samp([1, 2, 3, 4], 0.0).pvalue, rel=1e-9)
    assert iv.p == pytest.approx(0.030466, abs=1e-5)
    assert iv.method == "t" and iv.n == 4 and not iv.contains_zero()


def test_identical_arms_contain_zero_and_coverage_is_nominal():
    rng = np.random.default_rng(0)
    base = rng.normal(size=400)
    same = paired_interval(base, base.copy(), "points")
    assert same.diff == 0.0 and same.contains_zero() and same.p == 1.0
    # Same model, independent evaluation noise: over 2000 repetitions the 95% interval covers 0 in
    # 95% ± 1.5% of them (binomial s.e. 0.5%); without the √n, or with ±1 s.e., coverage is far off.
    hits = 0
    for _ in range(2000):
        a, b = base + 0.1 * rng.normal(size=400), base + 0.1 * rng.normal(size=400)
        hits += paired_interval(a, b, "points").contains_zero()
    assert abs(hits / 2000 - 0.95) < 0.015


def test_known_shift_excluded_by_paired_not_by_unpaired():
    """Strongly correlated arms (point spread 1, evaluation noise 0.02): the paired interval finds a shift of
    0.05 with the s.e. it should have; the unpaired one (the test of the test) cannot."""
    rng = np.random.default_rng(1)
    n, shift, noise = 400, 0.05, 0.02
    base = rng.normal(size=n)
    a = base + shift + noise * rng.normal(size=n)
    b = base + noise * rng.normal(size=n)
    paired = paired_interval(a, b, "points")
    assert not paired.contains_zero() and paired.lo > 0
    assert paired.diff == pytest.approx(shift, abs=4 * noise * math.sqrt(2 / n))
    assert paired.se == pytest.approx(noise * math.sqrt(2 / n), rel=0.1)  # sigma_d / sqrt(n) = 0.0014
    unpaired = unpaired_interval(a, b, "points")
    assert unpaired.contains_zero() and unpaired.se > 30 * paired.se


def test_bootstrap_only_for_many_skewed_seeds():
    rng = np.random.default_rng(2)
    skewed = rng.exponential(size=12) ** 2
    assert paired_interval(skewed, np.zeros(12), "seeds").method == "bootstrap"
    assert paired_interval(skewed[:5], np.zeros(5), "seeds").method == "t"  # too few seeds to resample
    assert paired_interval(skewed, np.zeros(12), "points").method == "t"
    assert paired_interval(rng.normal(size=12), np.zeros(12), "seeds").method == "t"  # not skewed
    # the percentile bootstrap of a mean is near the t-interval for a symmetric sample
    d = rng.normal(1.0, 1.0, size=200)
    boot, t = bootstrap_interval(d, "seeds"), t_interval(d, "seeds")
    assert boot.lo == pytest.approx(t.lo, abs=0.03) and boot.hi == pytest.approx(t.hi, abs=0.03)


def test_holm_hand_computed():
    # sorted: 0.005 (x4), 0.01 (x3), 0.03 (x2), 0.04 (x1 -> 0.04, raised to the running max 0.06)
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # Bonferroni would give [0.04, 0.16, 0.12, 0.02]; unadjusted, all four are below 0.05
    # 2 x 0.5 = 1.0, then 0.9 is raised to the running maximum (step-down monotonicity)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def _with_p(p: float, n: int, sd: float = 1.0) -> np.ndarray:
    """n paired differences whose two-sided t-test p-value is exactly ``p`` (standardised noise, mean set)."""
    z = np.random.default_rng(3).normal(size=n)
    z = (z - z.mean()) / z.std(ddof=1)
    t = st.t.isf(p / 2, n - 1)
    return t * sd / math.sqrt(n) + sd * z


def test_compare_arms_holm_turns_two_marginal_differences_into_ties():
    n = 300
    best = np.random.default_rng(4).normal(size=n)
    arms = {
        "best": best,
        "b": best + _with_p(0.03, n),
        "c": best + _with_p(0.04, n),
        "d": best + _with_p(1e-6, n),
    }
    values = {k: dict(enumerate(v)) for k, v in arms.items()}
    comp = compare_arms(values, "kl", "min", "points")
    assert comp is not None and comp.best == "best"
    assert comp.intervals["b"].p == pytest.approx(0.03, rel=1e-6)
    # Holm over m = 3: 3e-6, then 2 x 0.03 = 0.06, then max(0.06, 0.04) = 0.06: c, b tied (by mean), d worse
    assert comp.adjusted["b"] == pytest.approx(0.06, rel=1e-5) and comp.adjusted["c"] == pytest.approx(0.06)
    assert comp.tied == ["c", "b"] and comp.worse == ["d"] and not comp.significant
    # unadjusted, b and c would both be "worse": the correction is what makes them ties
    assert all(not comp.intervals[a].contains_zero() for a in ("b", "c"))
    # "max" metrics pick the highest mean
    flipped = compare_arms(
        {k: {i: -x for i, x in v.items()} for k, v in values.items()}, "acc", "max", "points"
    )
    assert flipped.best == "best" and flipped.worse == ["d"]


def test_compare_arms_pairs_by_seed_and_needs_two_units():
    values = {"a": {0: 1.0, 1: 2.0, 2: 3.0}, "b": {0: 1.5, 1: 2.6, 2: 3.4}}
    comp = compare_arms(values, "kl", "min", "seeds")
    assert comp.best == "a" and comp.intervals["b"].diff == pytest.approx(0.5)  # d = 0.5, 0.6, 0.4
    assert comp.significant and comp.worse == ["b"]  # paired: se 0.058; unpaired these overlap widely
    assert compare_arms({"a": {0: 1.0}, "b": {0: 2.0}}, "kl", "min", "seeds") is None
    assert compare_arms({"a": {0: 1.0, 1: 2.0}}, "kl", "min", "seeds") is None
