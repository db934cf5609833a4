"""Probability-flow ODE samplers (Song et al. 2021, score SDE, eq. 13): Euler and Heun.

    dx/dt = v(x, t) = f(t) x - 1/2 g(t)^2 grad log p_t(x),
    grad log p_t(x) = (alpha_t x0_hat - x) / sigma_t^2   (Tweedie),

integrated from t_max down to t_min. With g^2 / sigma^2 = -d lambda/dt the velocity is evaluated as
v = f x + 1/2 (d lambda/dt)(alpha_t x0_hat - x), which avoids dividing by a tiny sigma_t^2 near t = 0.

DDIM with eta = 0 (:func:`difflab.samplers.ancestral.sample_ddim`) is the first-order exponential integrator
of this same ODE (exact in its linear part), and is registered as ``ddim``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from difflab.processes.base import Process
from difflab.samplers.grids import Callback, StepCoefficients, call_denoiser, run_grid

Denoiser = Callable[[Tensor, Tensor], Tensor]


def pf_ode_velocity(denoiser: Denoiser, x: Tensor, c: StepCoefficients) -> Tensor:
    """v(x, t) = f(t) x - 1/2 g(t)^2 grad log p_t(x), from the denoiser (module docstring)."""
    x0_hat = call_denoiser(denoiser, x, c.t)
    return c.drift * x + 0.5 * c.d_logsnr * (c.alpha * x0_hat - x)


def sample_ode_euler(
    denoiser: Denoiser,
    process: Process,
    x_T: Tensor,
    grid: Tensor | Sequence[float],
    *,
    generator: torch.Generator | None = None,
    denoise_final: bool = True,
    callback: Callback | None = None,
) -> Tensor:
    """Explicit Euler on the PF-ODE: x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i). First order.

    Deterministic (``generator`` is accepted for a uniform signature and unused). Returns x0_hat at t_min
    (``denoise_final``) or x_{t_min}. NFE = steps + 1 (steps without the final denoising).
    """

    def step(i: int, x: Tensor, c_t: StepCoefficients, c_s: StepCoefficients) -> Tensor:
        return x + (c_s.t - c_t.t) * pf_ode_velocity(denoiser, x, c_t)

    return run_grid(denoiser, process, x_T, grid, step, callback=callback, denoise_final=denoise_final)


def sample_ode_heun(
    denoiser: Denoiser,
    process: Process,
    x_T: Tensor,
    grid: Tensor | Sequence[float],
    *,
    generator: torch.Generator | None = None,
    denoise_final: bool = True,
    callback: Callback | None = None,
) -> Tensor:
    """Heun's method (explicit trapezoidal rule) on the PF-ODE, Karras et al. 2022 Alg. 1 in t, h = s - t:

        x' = x_t + h v(x_t, t),    x_s = x_t + h/2 [v(x_t, t) + v(x', s)].   Second order.

    Every step, the last included, takes the second-order correction: the grid ends at t_min > 0 where the
    velocity is finite (EDM uses Euler only for its final step to sigma = 0). Deterministic. Returns x0_hat at
    t_min (``denoise_final``) or x_{t_min}. NFE = 2 steps + 1 (2 steps without the final denoising).
    """

    def step(i: int, x: Tensor, c_t: StepCoefficients, c_s: StepCoefficients) -> Tensor:
        h = c_s.t - c_t.t
        v_t = pf_ode_velocity(denoiser, x, c_t)
        x_pred = x + h * v_t
        v_s = pf_ode_velocity(denoiser, x_pred, c_s)
        return x + 0.5 * h * (v_t + v_s)

    return run_grid(denoiser, process, x_T, grid, step, callback=callback, denoise_final=denoise_final)
