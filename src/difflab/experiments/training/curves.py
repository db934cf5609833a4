"""Learning curves: cheap evaluations of the EMA weights at log-spaced points of training, resume-exact.

Points. A budget of S steps is evaluated at s_j = round_L(S * 2^(-j/m)), j = 4m, ..., 1, 0, i.e. from S/16
to S with m points per doubling (n = 4m + 1 points in all; ``eval.curve_points`` = n), each rounded to a
multiple L of the trainer's ``log_every`` (so the logged loss of an interrupted-and-continued run equals the
uninterrupted one), except the exact halvings S / 2^k >= L, which are kept unrounded. Because the ratio
between points is 2^(1/m), the points of budget S from S/8 on are points of budget 2S: doubling the budget
(the budget rule, :mod:`difflab.experiments.study.convergence`) keeps every earlier point and adds m new
ones, and the point S/2 (j = m) is always on the curve.

Seam. Training is split at the points with ``Trainer.train(until=s)`` (the schedule of the full run is kept;
the step loop is not touched), the EMA model is evaluated between the pieces, and the record is saved in
``trainer.extra["curve"]``, i.e. in the checkpoint: a run resumed at step k keeps every point below k as
recorded and evaluates the later ones from bit-identical EMA weights, so its curve equals the uninterrupted
run's. Evaluation time is excluded from ``history.seconds`` (train seconds) and recorded separately.

Record (``curves.json``): ``{"points": [{"step", "train_seconds", "eval_seconds", "metrics": {name: value,
name + "_se": s.e., ...}, "values": {name: [per-point values]}}], "eval_seconds", ...}``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from torch import nn

#: the first point is at budget / 2^CURVE_DOUBLINGS (1/16 of the budget)
CURVE_DOUBLINGS = 4

#: a curve evaluation: EMA model -> (metrics {name: value}, per-point values {name: list}) of one point
CurveEval = Callable[[nn.Module], tuple[dict[str, float], dict[str, list[float]]]]


def check_curve_points(n: int) -> int:
    """Points per doubling m of ``eval.curve_points`` = n (0 disables). n must be 0 or 4m + 1, m >= 1."""
    if n == 0:
        return 0
    if n < 5 or (n - 1) % CURVE_DOUBLINGS:
        raise ValueError(
            f"eval.curve_points must be 0 (no curve) or 4m + 1 with m >= 1 points per doubling "
            f"(5, 9, 13, 17, ...), got {n}"
        )
    return (n - 1) // CURVE_DOUBLINGS


def curve_steps(total: int, n_points: int, multiple: int = 1) -> list[int]:
    """The evaluation steps of a budget of ``total`` steps: total * 2^(-j/m), j = 4m..0, rounded to
    ``multiple`` (at least one multiple, never above total), deduplicated, ascending, total always last."""
    m = check_curve_points(n_points)
    if m == 0 or total < 1:
        return []
    multiple = max(1, multiple)
    steps = set()
    for j in range(CURVE_DOUBLINGS * m, 0, -1):
        k, r = divmod(j, m)  # S / 2^k is exact, so budget 2S reproduces the steps of S bit for bit
        s = (total / 2.0**k) * 2.0 ** (-r / m)
        if r or total % 2**k or total // 2**k < multiple:
            s = max(multiple, math.floor(s / multiple + 0.5) * multiple)
        else:  # S / 2^k exactly (>= L): the end of the budget S is a point of the budget 2S whatever L is
            s = total // 2**k
        if s < total:
            steps.add(s)
    return [*sorted(steps), total]


def empty_curve(metric: str) -> dict[str, Any]:
    return {"verdict_metric": metric, "points": [], "eval_seconds": 0.0}


def train_with_curve(
    trainer: Any,
    n_points: int,
    evaluate: CurveEval,
    metric: str,
    progress: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train ``trainer`` to its ``total_steps``, evaluating the EMA model at :func:`curve_steps` on the way.

    Points already in ``trainer.extra["curve"]`` (a resumed or budget-doubled run) are kept as they are;
    points below the trainer's current step that were never recorded cannot be recovered and are skipped.
    Returns the curve record (also in ``trainer.extra["curve"]``)."""
    curve = trainer.extra.setdefault("curve", empty_curve(metric))
    done = {p["step"] for p in curve["points"]}
    multiple = getattr(trainer.config, "log_every", 1)
    for step in curve_steps(trainer.total_steps, n_points, multiple):
        if step in done or step < trainer.step:
            continue
        trainer.train(progress, until=step)
        if trainer.history.status == "diverged" or trainer.step != step:
            break
        start = time.perf_counter()
        metrics, values = evaluate(trainer.ema_model())
        seconds = time.perf_counter() - start
        curve["points"].append(
            {
                "step": step,
                "train_seconds": round(trainer.history.seconds, 4),
                "eval_seconds": round(seconds, 4),
                "metrics": metrics,
                "values": values,
            }
        )
        curve["eval_seconds"] = round(curve["eval_seconds"] + seconds, 4)
        trainer.save_checkpoint()
    trainer.train(progress)  # the rest (no points, or stopped early by divergence: a no-op)
    return curve


def curve_cost(curve: dict[str, Any], train_seconds: float) -> dict[str, float]:
    """Result metrics of the curve's cost: ``curve_seconds`` and ``curve_overhead_pct`` (of train seconds)."""
    seconds = float(curve.get("eval_seconds", 0.0))
    pct = 100.0 * seconds / train_seconds if train_seconds > 0 else float("nan")
    return {"curve_seconds": round(seconds, 3), "curve_overhead_pct": round(pct, 2)}
