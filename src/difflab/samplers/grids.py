"""Sampling time grids and the small helpers every sampler shares.

A grid is a float64 tensor of ``steps + 1`` times t_0 = t_max > t_1 > ... > t_steps = t_min (strictly
decreasing; t = 0 is data). Samplers take the grid explicitly, never integer-stride arithmetic (the
"leading/trailing spacing" bugs of diffusers #2585, #9261: Lin et al. 2024).

Grid kinds (registry :data:`GRIDS`):

- ``uniform_t``       t_i = t_max + (i / steps)(t_min - t_max).
- ``uniform_logsnr``  lambda_i uniform between lambda(t_max) and lambda(t_min), t_i = t(lambda_i)
                      (``process.t_of_logsnr``); the endpoints are set to t_max / t_min exactly. The spacing
                      DPM-Solver recommends for low-resolution data (Lu et al. 2022).
- ``discrete``        only for a :class:`~difflab.processes.DiscreteChain` of T steps: ``steps + 1`` chain
                      indices evenly spaced from T down to 1 (i_k = floor(T - k (T - 1)/steps + 1/2)), as
                      times i_k / T. With ``steps = T - 1`` this is the chain's full grid T/T, ..., 1/T; fewer
                      steps respace the chain as DDIM does (Song et al. 2021, sec. 4.2). Needs steps <= T - 1.
                      The chain's last step (from t = 1/T to data) is the samplers' final denoising
                      (``denoise_final``), so ancestral sampling on the full grid is Ho et al. Algorithm 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab.processes.base import DTYPE, Process
from difflab.processes.discrete import DiscreteChain
from difflab.registry import lookup

GridFn = Callable[[Process, int], Tensor]


def _check_steps(steps: int) -> int:
    if int(steps) != steps or int(steps) < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def uniform_t_grid(process: Process, steps: int) -> Tensor:
    """steps + 1 times uniform in t from ``process.t_max`` down to ``process.t_min`` (float64)."""
    steps = _check_steps(steps)
    return torch.linspace(process.t_max, process.t_min, steps + 1, dtype=DTYPE)


def uniform_logsnr_grid(process: Process, steps: int) -> Tensor:
    """steps + 1 times uniform in lambda = log(alpha^2 / sigma^2) from lambda(t_max) up to lambda(t_min)."""
    steps = _check_steps(steps)
    lam_hi_t = float(process.logsnr(process.t_max))
    lam_lo_t = float(process.logsnr(process.t_min))
    if not (math.isfinite(lam_hi_t) and math.isfinite(lam_lo_t)):
        raise ValueError(f"uniform_logsnr needs a finite log-SNR at t_min and t_max for {process!r}")
    lam = torch.linspace(lam_hi_t, lam_lo_t, steps + 1, dtype=DTYPE)
    t = process.t_of_logsnr(lam).to(DTYPE)
    t[0], t[-1] = process.t_max, process.t_min
    # inversion by bisection is accurate to ~1e-16 in t; keep the grid strictly monotone anyway
    t[1:-1] = t[1:-1].clamp(process.t_min, process.t_max)
    if not bool((t[1:] < t[:-1]).all()):
        raise ValueError(f"uniform_logsnr grid with {steps} steps is not strictly decreasing for {process!r}")
    return t


def discrete_grid(process: Process, steps: int) -> Tensor:
    """A DiscreteChain's grid i/T at ``steps + 1`` evenly spaced indices from T down to 1 (DDIM respacing)."""
    steps = _check_steps(steps)
    if not isinstance(process, DiscreteChain):
        raise ValueError(f"grid 'discrete' needs a DiscreteChain process, got {process!r}")
    T = process.T
    if steps > T - 1:
        raise ValueError(
            f"grid 'discrete' on a chain of T={T} steps allows 1 <= steps <= T - 1 = {T - 1}, "
            f"got {steps} (the step from t=1/T to data is the final denoising)"
        )
    pos = torch.linspace(float(T), 1.0, steps + 1, dtype=DTYPE)
    idx = torch.floor(pos + 0.5)  # consistent rounding: spacing >= 1 keeps indices distinct
    return idx / T


def karras_grid(process: Process, steps: int, rho: float = 7.0) -> Tensor:
    """EDM's noise levels (Karras et al. 2022, eq. 5) in the VE scale sigma~ = sigma_t / alpha_t:

        sigma~_i = (s_max^(1/rho) + (i/steps)(s_min^(1/rho) - s_max^(1/rho)))^rho,   i = 0..steps,

    s_max / s_min = sigma~ at the process's t_max / t_min, rho = 7; t_i = t(lambda = -2 ln sigma~_i),
    endpoints set to t_max / t_min exactly. (EDM appends sigma = 0; here the samplers' final denoising
    plays that role.)
    """
    steps = _check_steps(steps)
    lam_ends = [float(process.logsnr(process.t_max)), float(process.logsnr(process.t_min))]
    if not all(math.isfinite(v) for v in lam_ends):
        raise ValueError(f"karras needs a finite log-SNR at t_min and t_max for {process!r}")
    s_max, s_min = (math.exp(-0.5 * v) for v in lam_ends)
    i = torch.arange(steps + 1, dtype=DTYPE) / steps
    sigma = (s_max ** (1 / rho) + i * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    t = process.t_of_logsnr(-2.0 * torch.log(sigma)).to(DTYPE)
    t[0], t[-1] = process.t_max, process.t_min
    t[1:-1] = t[1:-1].clamp(process.t_min, process.t_max)
    if not bool((t[1:] < t[:-1]).all()):
        raise ValueError(f"karras grid with {steps} steps is not strictly decreasing for {process!r}")
    return t


GRIDS: dict[str, GridFn] = {
    "uniform_t": uniform_t_grid,
    "uniform_logsnr": uniform_logsnr_grid,
    "discrete": discrete_grid,
    "karras": karras_grid,
}


def time_grid(process: Process, steps: int, kind: str = "uniform_logsnr") -> Tensor:
    """A float64 grid of ``steps + 1`` strictly decreasing times from t_max to t_min (see :data:`GRIDS`)."""
    return lookup(GRIDS, kind, "grid")(process, steps)


def check_grid(grid: Tensor | Sequence[float]) -> list[float]:
    """Validate a grid (1-D, >= 2 finite times in [0, 1], strictly decreasing); return Python floats."""
    g = torch.as_tensor(grid, dtype=DTYPE).detach().cpu()
    if g.ndim != 1 or g.numel() < 2:
        raise ValueError(f"a grid needs at least two times (one step), got shape {tuple(g.shape)}")
    if not bool(torch.isfinite(g).all()) or bool((g < 0).any()) or bool((g > 1).any()):
        raise ValueError("grid times must be finite and lie in [0, 1]")
    if not bool((g[1:] < g[:-1]).all()):
        raise ValueError("grid times must be strictly decreasing (from noise at t_max to data at t_min)")
    return [float(v) for v in g]


def prior_sample(
    process: Process,
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """x_T ~ N(0, prior_std^2 I), prior_std^2 = alpha_{t_max}^2 + sigma_{t_max}^2 (unit-variance data)."""
    z = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    return process.prior_std * z


# --- shared by the samplers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StepCoefficients:
    """Coefficients at one grid time as Python floats (from float64), so they mix with x in any dtype.

    ``drift`` is f(t) (f(x, t) = f(t) x) and ``g2`` is g(t)^2 = -sigma_t^2 d lambda/dt.
    """

    t: float
    alpha: float
    sigma: float
    logsnr: float
    d_logsnr: float
    drift: float
    g2: float


def grid_coefficients(process: Process, times: Sequence[float]) -> list[StepCoefficients]:
    """Coefficients at every grid time, computed in one float64 call."""
    c = process.coefficients(torch.tensor(list(times), dtype=DTYPE))
    cols = [c.alpha, c.sigma, c.logsnr, c.d_logsnr, c.drift, c.g2]
    rows = zip(list(times), *[col.tolist() for col in cols])
    return [StepCoefficients(*(float(v) for v in row)) for row in rows]


def call_denoiser(denoiser: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: float) -> Tensor:
    """x0_hat = D(x, t) with t as a float64 tensor of shape (B,) on x's device; result cast to x's dtype."""
    t_b = torch.full((x.shape[0],), t, dtype=DTYPE, device=x.device)
    return denoiser(x, t_b).to(x.dtype)


def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


StepFn = Callable[[int, Tensor, StepCoefficients, StepCoefficients], Tensor]
"""One sampler update ``step(i, x_t, coef_t, coef_s) -> x_s`` from grid time t = t_i to s = t_{i+1} < t."""

Callback = Callable[[int, float, Tensor], None]
"""``callback(i, s, x_s)``, called after update i with the new time s = t_{i+1} and state x_s."""


def run_grid(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    process: Process,
    x_T: Tensor,
    grid: Tensor | Sequence[float],
    step: StepFn,
    *,
    callback: Callback | None = None,
    denoise_final: bool = True,
) -> Tensor:
    """Drive ``step`` over the grid; return x0_hat(x_{t_min}, t_min) if ``denoise_final`` else x_{t_min}."""
    times = check_grid(grid)
    coefs = grid_coefficients(process, times)
    bad = [c.t for c in coefs if not (c.sigma > 0 and c.alpha > 0 and math.isfinite(c.logsnr))]
    if bad:
        raise ValueError(
            f"grid times {bad[:3]} have alpha_t = 0 or sigma_t = 0 under {process!r}; "
            "use times inside [t_min, t_max]"
        )
    x = x_T
    for i in range(len(times) - 1):
        x = step(i, x, coefs[i], coefs[i + 1])
        if callback is not None:
            callback(i, times[i + 1], x)
    if denoise_final:
        return call_denoiser(denoiser, x, times[-1])
    return x
