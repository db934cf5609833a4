"""Divergence as a result, not a crash: the detector the trainer runs on every step's loss.

A step whose loss or gradient norm is not finite diverges at once. A blow-up that is still finite
(``lr = 10`` reaches losses of 4e9) is found on the loss smoothed by an EMA over ~20 steps,
``m_k = 0.95 m_{k-1} + 0.05 l_k``, staying above ``DIVERGENCE_RATIO`` (100) times its running minimum for
``window = min(50, max(5, total_steps // 10))`` consecutive steps. The running minimum is taken from step
``burn_in = min(20, max(1, total_steps // 10))`` on: 20 is the EMA's horizon, and before it one lucky first
batch of a heavy-tailed loss sets a minimum the typical loss sits 100x above (measured on the x0 / NELBO
image arm of ``loss-comparison-images-quick``: minimum 8381 from its first steps against typical losses of
1e6, flagged "diverged" at step 26 of a run that trains). The run stops with status "diverged" and
``diverged_at`` = the first step of that excursion; a run that ends inside an excursion of
``END_EXCURSION`` (3) or more steps, shorter than the window only because the run ended, diverged too.
Losses are weighted squared errors (non-negative), so the ratio test is skipped while the running minimum is
not positive. The detector's state lives in the trainer's history, so a resumed run detects exactly as the
uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any

#: smoothed loss above this multiple of its running minimum counts towards divergence
DIVERGENCE_RATIO = 100.0
#: an excursion still running at the last step counts as divergence from this many steps on
END_EXCURSION = 3
#: EMA coefficient of the smoothed loss (horizon ~ 1 / (1 - 0.95) = 20 steps)
SMOOTHING = 0.95


def window_and_burn_in(total_steps: int) -> tuple[int, int]:
    """(steps an excursion must last, first step (1-based) whose smoothed loss may set the minimum)."""
    return min(50, max(5, total_steps // 10)), min(round(1 / (1 - SMOOTHING)), max(1, total_steps // 10))


def _excursion_text(h: Any, steps: int, tail: str = "") -> str:
    return (
        f"smoothed loss {h.smoothed:.4g} above {DIVERGENCE_RATIO:g} x its minimum "
        f"{h.smoothed_min:.4g} for {tail}{steps} steps"
    )


def update(h: Any, step: int, loss: float, grad_norm: float | None, window: int, burn_in: int) -> bool:
    """Feed step ``step`` to the detector state in ``h`` (a TrainHistory); True, with ``h.status``,
    ``h.diverged_at`` and ``h.divergence_reason`` set, once the run has diverged."""
    reason = None
    if not math.isfinite(loss):
        reason, first = f"non-finite loss {loss}", step
    elif grad_norm is not None and not math.isfinite(grad_norm):
        reason, first = f"non-finite gradient norm {grad_norm}", step
    else:
        h.smoothed = loss if h.smoothed is None else SMOOTHING * h.smoothed + (1 - SMOOTHING) * loss
        if step + 1 >= burn_in:  # the EMA has seen its horizon (module docstring)
            h.smoothed_min = h.smoothed if h.smoothed_min is None else min(h.smoothed_min, h.smoothed)
        lo = h.smoothed_min
        if lo is not None and lo > 0 and h.smoothed > DIVERGENCE_RATIO * lo:
            h.excursion_start = step if h.excursion_start is None else h.excursion_start
        else:
            h.excursion_start = None
        first = h.excursion_start
        if first is not None and step - first + 1 >= window:
            reason = _excursion_text(h, step - first + 1)
    if reason is None:
        return False
    h.status, h.diverged_at, h.divergence_reason = "diverged", first, reason
    return True


def ends_in_blow_up(h: Any, step: int) -> bool:
    """Whether a run that stopped at ``step`` ends inside an excursion of at least ``END_EXCURSION`` steps
    (then ``diverged_at`` and the reason are set)."""
    if h.excursion_start is None or step - h.excursion_start < END_EXCURSION:
        return False
    h.diverged_at = h.excursion_start
    h.divergence_reason = _excursion_text(h, step - h.excursion_start, "the last ")
    return True
