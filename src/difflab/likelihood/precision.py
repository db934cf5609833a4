"""Precision of the continuous NELBO: the two parts of its standard error, and paired differences.

The s.e. of a mean NELBO over N points mixes the spread of -log p over the points with the
Monte-Carlo noise of the (t, eps) draws. Repeating the estimate on the same points with other draws
separates them (one-way analysis of variance); two denoisers evaluated on the same points with the same
draws give a paired difference whose s.e. is free of the shared spread (common random numbers).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab.likelihood.elbo import continuous_nelbo
from difflab.processes.base import Process


@dataclass(frozen=True)
class NelboPrecision:
    """The mean continuous NELBO of a set of points in nats/dim and the two parts of its standard error.

    ``mean``: the mean over points and repeats. ``se_run``: the usual s.e. of one run, std over points of the
    per-point estimates / sqrt(N) (both parts together). ``se_mc``: the Monte-Carlo part of one run's s.e.,
    sqrt(mean_i Var_r(estimate_i) / N) from ``repeats`` runs with independent draws of (t, eps) on the
    *same* points. ``se_points``: the spread part, the s.e. of the mean of the exact per-point NELBOs,
    sqrt((Var_i(mean_r estimate_i) - mean_i Var_r(estimate_i) / repeats) / N) (one-way ANOVA). ``se_mean``:
    the s.e. of ``mean`` itself, sqrt(se_points^2 + se_mc^2 / repeats). ``seconds``: wall time of all runs.
    """

    mean: float
    se_run: float
    se_mc: float
    se_points: float
    se_mean: float
    repeats: int
    n_t: int
    seconds: float


def nelbo_precision(
    denoiser: object, process: Process, x0: Tensor, *, n_t: int = 512, repeats: int = 4, seed: int = 0, **kw
) -> NelboPrecision:
    """Split the s.e. of the mean NELBO (nats/dim) of ``x0`` into its point-spread and Monte-Carlo parts by
    repeating :func:`continuous_nelbo` ``repeats`` times (generators seeded ``seed + r``) on the same points.
    Extra keywords go to :func:`continuous_nelbo`."""
    if repeats < 2:
        raise ValueError(f"need repeats >= 2 to measure the Monte-Carlo part, got {repeats}")
    D = x0[0].numel()
    start = time.perf_counter()
    runs = torch.stack(
        [
            continuous_nelbo(
                denoiser, process, x0, n_t=n_t, generator=torch.Generator().manual_seed(seed + r), **kw
            ).total
            / D
            for r in range(repeats)
        ]
    )  # (repeats, N)
    seconds = time.perf_counter() - start
    N = runs.shape[1]
    # one-way analysis of variance over (repeat, point): the within-point variance across repeats is the
    # Monte-Carlo variance; the variance of the per-point means minus its share is the point spread
    var_mc = float(runs.var(0).mean())
    var_points = max(float(runs.mean(0).var()) - var_mc / repeats, 0.0)
    se_run = float(runs.std(1).mean()) / math.sqrt(N)
    se_mc = math.sqrt(var_mc / N)
    se_points = math.sqrt(var_points / N)
    se_mean = math.sqrt(se_points**2 + se_mc**2 / repeats)
    return NelboPrecision(float(runs.mean()), se_run, se_mc, se_points, se_mean, repeats, n_t, seconds)


@dataclass(frozen=True)
class PairedDifference:
    """Mean NELBO difference a - b in nats/dim on the same points with the same (t, eps) draws.

    ``se``: the paired s.e., std over points of the per-point differences / sqrt(N) (common random numbers
    cancel the shared point spread and most of the Monte-Carlo noise). ``se_unpaired``: what the two runs'
    separate s.e.s would give, sqrt(se_a^2 + se_b^2), for comparison.
    """

    diff: float
    se: float
    se_unpaired: float
    per_point: Tensor


def paired_nelbo_difference(
    denoiser_a: object,
    denoiser_b: object,
    process: Process,
    x0: Tensor,
    *,
    n_t: int = 512,
    seed: int = 0,
    **kw,
) -> PairedDifference:
    """NELBO(a) - NELBO(b) per dim with common random numbers: both estimates use a generator seeded
    ``seed``, so (the draws not depending on the denoiser) they see the same t and eps for every point.
    Extra keywords go to :func:`continuous_nelbo`."""
    D = x0[0].numel()
    a = continuous_nelbo(
        denoiser_a, process, x0, n_t=n_t, generator=torch.Generator().manual_seed(seed), **kw
    )
    b = continuous_nelbo(
        denoiser_b, process, x0, n_t=n_t, generator=torch.Generator().manual_seed(seed), **kw
    )
    ta, tb = a.total / D, b.total / D
    d = ta - tb
    N = d.numel()
    se_unpaired = math.sqrt(float(ta.var() + tb.var()) / N)
    return PairedDifference(float(d.mean()), float(d.std()) / math.sqrt(N), se_unpaired, d)


__all__ = ["NelboPrecision", "PairedDifference", "nelbo_precision", "paired_nelbo_difference"]
