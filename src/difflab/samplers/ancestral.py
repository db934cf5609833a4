"""Ancestral (posterior) sampling and DDIM(eta), driven only by the denoiser x0_hat = D(x_t, t).

For grid times s < t, with alpha_{t|s} = alpha_t / alpha_s and
sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2, the forward posterior is (Kingma et al. 2021, VDM
eq. 31-33; Ho et al. 2020 eq. 6-7 for a DDPM chain)

    q(x_s | x_t, x0) = N(mu, v I),
    mu = (alpha_{t|s} sigma_s^2 / sigma_t^2) x_t + (alpha_s sigma_{t|s}^2 / sigma_t^2) x0,
    v  = sigma_{t|s}^2 sigma_s^2 / sigma_t^2.

Written with r = exp(lambda_t - lambda_s) = SNR_t / SNR_s in (0, 1) (numerically stable, no cancellation):

    sigma_{t|s}^2 / sigma_t^2 = -expm1(lambda_t - lambda_s) = 1 - r
    mu = (alpha_t sigma_s^2 / (alpha_s sigma_t^2)) x_t + alpha_s (1 - r) x0,    v = sigma_s^2 (1 - r).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from difflab.processes.base import Process
from difflab.samplers.grids import Callback, StepCoefficients, call_denoiser, noise_like, run_grid

Denoiser = Callable[[Tensor, Tensor], Tensor]


def posterior_coefficients(c_t: StepCoefficients, c_s: StepCoefficients) -> tuple[float, float, float]:
    """(coefficient of x_t, coefficient of x0, variance) of q(x_s | x_t, x0) for s < t (module docstring)."""
    one_minus_r = -math.expm1(c_t.logsnr - c_s.logsnr)
    coef_xt = c_t.alpha * c_s.sigma**2 / (c_s.alpha * c_t.sigma**2)
    coef_x0 = c_s.alpha * one_minus_r
    var = c_s.sigma**2 * one_minus_r
    return coef_xt, coef_x0, var


def sample_ancestral(
    denoiser: Denoiser,
    process: Process,
    x_T: Tensor,
    grid: Tensor | Sequence[float],
    *,
    generator: torch.Generator | None = None,
    denoise_final: bool = True,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral sampling: x_s ~ q(x_s | x_t, x0 = x0_hat(x_t, t)) between consecutive grid times.

    On a DDPM chain with its full grid (``time_grid(chain, T - 1, "discrete")``) this is exactly Ho et al.
    (2020) Algorithm 2 with sigma_t^2 = beta_tilde_t; the chain's last step t = 1 -> 0 has posterior mean
    x0_hat and zero variance, i.e. it is the final denoising. In general (VDM eq. 33) it samples the
    posterior for arbitrary alpha, sigma, so respaced grids and continuous processes need no special case.

    Returns x0_hat(x_{t_min}, t_min) (``denoise_final=True``, the default) or x_{t_min}.
    NFE = steps + 1 (steps without the final denoising).
    """

    def step(i: int, x: Tensor, c_t: StepCoefficients, c_s: StepCoefficients) -> Tensor:
        x0_hat = call_denoiser(denoiser, x, c_t.t)
        coef_xt, coef_x0, var = posterior_coefficients(c_t, c_s)
        return coef_xt * x + coef_x0 * x0_hat + math.sqrt(var) * noise_like(x, generator)

    return run_grid(denoiser, process, x_T, grid, step, callback=callback, denoise_final=denoise_final)


def sample_ddim(
    denoiser: Denoiser,
    process: Process,
    x_T: Tensor,
    grid: Tensor | Sequence[float],
    *,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    denoise_final: bool = True,
    callback: Callback | None = None,
) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) in continuous form, for any alpha_t, sigma_t:

        eps_hat = (x_t - alpha_t x0_hat) / sigma_t,    sigma_eta = eta * sqrt(v)   (v: posterior variance)
        x_s = alpha_s x0_hat + sqrt(sigma_s^2 - sigma_eta^2) eps_hat + sigma_eta z.

    eta = 0 is deterministic: the first-order exponential integrator of the PF-ODE in lambda (DPM-Solver-1,
    Lu et al. 2022). eta = 1 coincides with ancestral sampling step by step (same mean and variance; with the
    same generator the two give the same path up to rounding). Returns x0_hat at t_min (``denoise_final``)
    or x_{t_min}. NFE = steps + 1 (steps without the final denoising).
    """
    if not eta >= 0.0:
        raise ValueError(f"eta must be >= 0, got {eta}")

    def step(i: int, x: Tensor, c_t: StepCoefficients, c_s: StepCoefficients) -> Tensor:
        x0_hat = call_denoiser(denoiser, x, c_t.t)
        eps_hat = (x - c_t.alpha * x0_hat) / c_t.sigma
        _, _, var = posterior_coefficients(c_t, c_s)
        var_eta = eta**2 * var
        if var_eta > c_s.sigma**2:
            raise ValueError(
                f"eta={eta} too large: sigma_eta^2 = {var_eta:g} exceeds sigma_s^2 = {c_s.sigma**2:g}"
            )
        x_s = c_s.alpha * x0_hat + math.sqrt(c_s.sigma**2 - var_eta) * eps_hat
        if eta > 0:
            x_s = x_s + math.sqrt(var_eta) * noise_like(x, generator)
        return x_s

    return run_grid(denoiser, process, x_T, grid, step, callback=callback, denoise_final=denoise_final)
