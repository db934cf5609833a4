"""Convergence verdicts from learning curves, per run and per arm, and the budget-doubling rule.

Per run. With the curve metric m (lower is better, e.g. the exact KL) at the end of the budget S and at S/2
(always a curve point, :mod:`difflab.experiments.training.curves`), the change over the last doubling is

    Delta = m(S) - m(S/2),     se(Delta) = sd_i(v_i(S) - v_i(S/2)) / sqrt(n)

where v_i are the per-point values (e.g. log q(x_i) - log p_theta(x_i)) on the same held-out points, so the
difference is paired (common random numbers); without per-point values se(Delta) = sqrt(se(S)^2 +
se(S/2)^2). The run is "converged" when

    |Delta| <= max(2 se(Delta), rtol |m(S)| + atol)

i.e. another doubling changed the metric by less than its own noise (or than the stated tolerance), else
"still improving" (Delta < 0) or "getting worse" (Delta > 0), with Delta the slope per doubling. No curve
(baselines, oracle rows, ``eval.curve_points = 0``) gives "no curve".

Per arm (the seeds of one configuration): the same rule on the mean of the seeds' Delta with se^2 =
sd(Delta)^2 / k + mean_j se_j(Delta)^2 (k >= 2 seeds; the second term because the seeds share the
evaluation points and draws, :func:`arm_verdict`), or the single run's verdict.

Budget rule (``train.until_converged``): while the run's verdict is not "converged" and 2 S <= the cap
``train.max_steps``, S <- 2 S and training resumes from the checkpoint.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

CONVERGED = "converged"
IMPROVING = "still improving"
WORSE = "getting worse"
NO_CURVE = "no curve"


def _at(points: Sequence[Mapping[str, Any]], step: int) -> Mapping[str, Any] | None:
    return next((p for p in points if p["step"] == step), None)


def change_over_last_doubling(curve: Mapping[str, Any], metric: str) -> tuple[float, float] | None:
    """(Delta, se(Delta)) of ``metric`` between the last point S and the point S/2, or None without both.

    The half-budget point is the recorded point nearest to S/2 (exactly S/2 up to the rounding of the
    curve's steps)."""
    points = [p for p in curve.get("points", []) if metric in p.get("metrics", {})]
    if len(points) < 2:
        return None
    end = max(points, key=lambda p: p["step"])
    half = min((p for p in points if p is not end), key=lambda p: abs(p["step"] - end["step"] / 2))
    if abs(half["step"] - end["step"] / 2) > 0.1 * end["step"]:
        return None
    delta = float(end["metrics"][metric]) - float(half["metrics"][metric])
    v_end = end.get("values", {}).get(metric)
    v_half = half.get("values", {}).get(metric)
    if v_end and v_half and len(v_end) == len(v_half) and len(v_end) > 1:
        diffs = [a - b for a, b in zip(v_end, v_half, strict=True)]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    else:
        se_end = float(end["metrics"].get(metric + "_se", math.nan))
        se_half = float(half["metrics"].get(metric + "_se", math.nan))
        se = math.sqrt(se_end**2 + se_half**2)
    return delta, se


def judge(delta: float, se: float, end_value: float, rtol: float, atol: float) -> str:
    """The verdict of a change ``delta`` with standard error ``se`` (NaN se: only the tolerance counts)."""
    noise = 2.0 * se if math.isfinite(se) else 0.0
    if abs(delta) <= max(noise, rtol * abs(end_value) + atol):
        return CONVERGED
    return IMPROVING if delta < 0 else WORSE


def run_verdict(curve: Mapping[str, Any] | None, metric: str, rtol: float = 0.1, atol: float = 0.0) -> dict:
    """Result-metric keys of one run: ``verdict``, ``verdict_metric``, ``verdict_change`` (m(S) - m(S/2),
    the slope per doubling), ``verdict_se``, ``converged`` (1.0 / 0.0, so a table can average it)."""
    out: dict[str, Any] = {"verdict": NO_CURVE, "verdict_metric": metric}
    change = change_over_last_doubling(curve, metric) if curve else None
    if change is None:
        return out
    delta, se = change
    end = max((p for p in curve["points"] if metric in p["metrics"]), key=lambda p: p["step"])
    verdict = judge(delta, se, float(end["metrics"][metric]), rtol, atol)
    # no s.e. on record (an image curve's validation loss): None, not NaN (NaN != NaN in every comparison)
    se_out = se if math.isfinite(se) else None
    out.update(verdict=verdict, verdict_change=delta, verdict_se=se_out)
    out["converged"] = float(verdict == CONVERGED)
    out.update(verdict_rtol=rtol, verdict_atol=atol)  # so that the arm's verdict uses the same tolerances
    return out


def arm_verdict(
    records: Sequence[Mapping[str, Any]], rtol: float | None = None, atol: float | None = None
) -> dict:
    """The verdict of an arm from its runs' result metrics (the :func:`run_verdict` keys and the metric).

    One run: its verdict. k >= 2 runs with a change: the mean change with se^2 = sd^2 / k + mean(se_j^2)
    (se_j the runs' own ``verdict_se``: the seeds share the evaluation points and draws, so that part of the
    noise is common to them and is not divided by k; measured on score-sde-gmm, 3 seeds whose changes
    -0.012, -0.017, -0.013 each lay inside 2 of their own s.e. 0.01 got sd / sqrt(k) = 0.0016 alone, a
    "still improving" verdict from the seeds' agreement on a shared evaluation noise), judged with
    ``rtol`` / ``atol`` (default: the runs' recorded ``verdict_rtol`` / ``verdict_atol``, else 0.1 / 0)."""
    with_change = [r for r in records if isinstance(r.get("verdict_change"), int | float)]
    if not with_change:
        return {"verdict": NO_CURVE}
    if len(with_change) == 1:
        r = with_change[0]
        return {k: r[k] for k in ("verdict", "verdict_change", "verdict_se") if k in r}
    if rtol is None:
        rtol = float(with_change[0].get("verdict_rtol", 0.1))
    if atol is None:
        atol = float(with_change[0].get("verdict_atol", 0.0))
    deltas = [float(r["verdict_change"]) for r in with_change]
    delta = statistics.fmean(deltas)
    se = statistics.stdev(deltas) / math.sqrt(len(deltas))
    # the seeds share the held-out points and every t / eps draw, so the evaluation noise of each run's
    # change (its verdict_se) is common to the seeds and does not shrink with k: add its mean square
    run_se = [float(r["verdict_se"]) for r in with_change if isinstance(r.get("verdict_se"), int | float)]
    run_se = [x for x in run_se if math.isfinite(x)]
    if run_se:
        se = math.sqrt(se**2 + statistics.fmean(x * x for x in run_se))
    metric = with_change[0].get("verdict_metric")
    ends = [float(r[metric]) for r in with_change if isinstance(r.get(metric), int | float)]
    end = statistics.fmean(ends) if ends else 0.0
    return {"verdict": judge(delta, se, end, rtol, atol), "verdict_change": delta, "verdict_se": se}


def next_budget(steps: int, verdict: str, max_steps: int | None) -> int | None:
    """The budget rule: 2 * steps while the verdict is not "converged" and 2 * steps <= max_steps."""
    if verdict in (CONVERGED, NO_CURVE) or max_steps is None or 2 * steps > max_steps:
        return None
    return 2 * steps
