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

With ``doublings = D > 1`` the rule is applied to each of the last D doublings, Delta_k = m(S / 2^(k-1)) -
m(S / 2^k) for k = 1..D, every one judged against the same tolerance rtol |m(S)| + atol, and the run is
"converged" only when all D are (else the verdict of the most recent doubling that is not). One flat doubling
can be a pause: measured on the ring (loss-comparison-2d), an x0 / weighted run whose KL rose by 0.29 (s.e.
0.11) to 3.07 from 4000 to 8000 steps was "converged" by 10 % of its KL, while the seed that was not
flat at 8000 steps trained on to KL 1.36.

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


def _nearest(points: Sequence[Mapping[str, Any]], step: float) -> Mapping[str, Any] | None:
    """The recorded point nearest to ``step`` if within 10 % of it (curve steps are rounded)."""
    best = min(points, key=lambda p: abs(p["step"] - step))
    return best if abs(best["step"] - step) <= 0.1 * step else None


def change_over_doubling(curve: Mapping[str, Any], metric: str, k: int = 1) -> tuple[float, float] | None:
    """(Delta_k, se(Delta_k)) of ``metric`` between the points S / 2^(k-1) and S / 2^k (S the last point;
    k = 1: the last doubling), or None without both.

    The points are the recorded points nearest to those steps (exact up to the rounding of the curve's
    steps)."""
    points = [p for p in curve.get("points", []) if metric in p.get("metrics", {})]
    if len(points) < 2:
        return None
    last = max(p["step"] for p in points)
    end = _nearest(points, last / 2 ** (k - 1))
    half = _nearest([p for p in points if p is not end], last / 2**k)
    if end is None or half is None:
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


def verdict_key(name: str, k: int) -> str:
    """``verdict_change`` / ``verdict_se`` of the last doubling, ``<name>_<k>`` of the k-th last."""
    return name if k == 1 else f"{name}_{k}"


def _combine(verdicts: Sequence[str]) -> str:
    """Converged when every doubling is, else the verdict of the most recent one that is not."""
    return next((v for v in verdicts if v != CONVERGED), CONVERGED)


def judge(delta: float, se: float, end_value: float, rtol: float, atol: float) -> str:
    """The verdict of a change ``delta`` with standard error ``se`` (NaN se: only the tolerance counts)."""
    noise = 2.0 * se if math.isfinite(se) else 0.0
    if abs(delta) <= max(noise, rtol * abs(end_value) + atol):
        return CONVERGED
    return IMPROVING if delta < 0 else WORSE


def run_verdict(
    curve: Mapping[str, Any] | None, metric: str, rtol: float = 0.1, atol: float = 0.0, doublings: int = 1
) -> dict:
    """Result-metric keys of one run: ``verdict``, ``verdict_metric``, ``verdict_change`` (m(S) - m(S/2),
    the slope per doubling), ``verdict_se``, ``converged`` (1.0 / 0.0, so a table can average it); with
    ``doublings`` D > 1 also ``verdict_change_k`` / ``verdict_se_k`` of the k-th last doubling (k = 2..D;
    those the curve spans) and ``verdict_doublings`` (how many were judged)."""
    if doublings < 1:
        raise ValueError(f"doublings must be >= 1, got {doublings}")
    out: dict[str, Any] = {"verdict": NO_CURVE, "verdict_metric": metric}
    changes = []
    for k in range(1, doublings + 1):
        change = change_over_doubling(curve, metric, k) if curve else None
        if change is None:
            break
        changes.append(change)
    if not changes:
        return out
    end = max((p for p in curve["points"] if metric in p["metrics"]), key=lambda p: p["step"])
    end_value = float(end["metrics"][metric])
    verdict = _combine([judge(d, se, end_value, rtol, atol) for d, se in changes])
    out["verdict"] = verdict
    for k, (delta, se) in enumerate(changes, start=1):
        # no s.e. on record (an image curve's validation loss): None, not NaN (NaN != NaN in every comparison)
        out[verdict_key("verdict_change", k)] = delta
        out[verdict_key("verdict_se", k)] = se if math.isfinite(se) else None
    out["converged"] = float(verdict == CONVERGED)
    out.update(verdict_rtol=rtol, verdict_atol=atol)  # so that the arm's verdict uses the same tolerances
    if doublings > 1:
        out["verdict_doublings"] = len(changes)
    return out


def _seed_change(records: Sequence[Mapping[str, Any]], k: int) -> tuple[float, float] | None:
    """Mean over the runs of the k-th last doubling's change, with se^2 = sd^2 / n + mean(se_j^2)."""
    rows = [r for r in records if isinstance(r.get(verdict_key("verdict_change", k)), int | float)]
    if len(rows) < 2:
        return None
    deltas = [float(r[verdict_key("verdict_change", k)]) for r in rows]
    se = statistics.stdev(deltas) / math.sqrt(len(deltas))
    # the seeds share the held-out points and every t / eps draw, so the evaluation noise of each run's
    # change (its verdict_se) is common to the seeds and does not shrink with k: add its mean square
    run_se = [r.get(verdict_key("verdict_se", k)) for r in rows]
    run_se = [float(x) for x in run_se if isinstance(x, int | float) and math.isfinite(x)]
    if run_se:
        se = math.sqrt(se**2 + statistics.fmean(x * x for x in run_se))
    return statistics.fmean(deltas), se


def arm_verdict(
    records: Sequence[Mapping[str, Any]], rtol: float | None = None, atol: float | None = None
) -> dict:
    """The verdict of an arm from its runs' result metrics (the :func:`run_verdict` keys and the metric).

    One run: its verdict. k >= 2 runs with a change: the mean change with se^2 = sd^2 / k + mean(se_j^2)
    (se_j the runs' own ``verdict_se``: the seeds share the evaluation points and draws, so that part of the
    noise is common to them and is not divided by k; measured on score-sde-gmm, 3 seeds whose changes
    -0.012, -0.017, -0.013 each lay inside 2 of their own s.e. 0.01 got sd / sqrt(k) = 0.0016 alone, a
    "still improving" verdict from the seeds' agreement on a shared evaluation noise), judged with
    ``rtol`` / ``atol`` (default: the runs' recorded ``verdict_rtol`` / ``verdict_atol``, else 0.1 / 0);
    runs judged over D > 1 doublings (``verdict_doublings``) give the arm the same rule over each of them."""
    with_change = [r for r in records if isinstance(r.get("verdict_change"), int | float)]
    if not with_change:
        return {"verdict": NO_CURVE}
    if len(with_change) == 1:
        r = with_change[0]
        return {k: r[k] for k in r if k == "verdict" or k.startswith(("verdict_change", "verdict_se"))}
    if rtol is None:
        rtol = float(with_change[0].get("verdict_rtol", 0.1))
    if atol is None:
        atol = float(with_change[0].get("verdict_atol", 0.0))
    metric = with_change[0].get("verdict_metric")
    ends = [float(r[metric]) for r in with_change if isinstance(r.get(metric), int | float)]
    end = statistics.fmean(ends) if ends else 0.0
    doublings = max(int(r.get("verdict_doublings", 1)) for r in with_change)
    out: dict[str, Any] = {}
    verdicts = []
    for k in range(1, doublings + 1):
        change = _seed_change(with_change, k)
        if change is None:
            break
        delta, se = change
        verdicts.append(judge(delta, se, end, rtol, atol))
        out[verdict_key("verdict_change", k)], out[verdict_key("verdict_se", k)] = delta, se
    return {"verdict": _combine(verdicts), **out}


def next_budget(steps: int, verdict: str, max_steps: int | None) -> int | None:
    """The budget rule: 2 * steps while the verdict is not "converged" and 2 * steps <= max_steps."""
    if verdict in (CONVERGED, NO_CURVE) or max_steps is None or 2 * steps > max_steps:
        return None
    return 2 * steps
