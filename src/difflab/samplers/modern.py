"""DPM-Solver++(2M) and EDM's deterministic / stochastic Heun samplers, driven only by x0_hat = D(x_t, t).

DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", Algorithm 2, multistep, data prediction). With the half log-SNR l_t = lambda_t / 2 = log(alpha_t /
sigma_t) and h_i = l_{t_i} - l_{t_{i-1}} > 0,

    x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i,
    D_1 = x0_hat_0,   D_i = (1 + 1/(2 r_i)) x0_hat_{i-1} - 1/(2 r_i) x0_hat_{i-2},   r_i = h_{i-1} / h_i,

one denoiser evaluation per step (the previous one is reused). Without the multistep correction (``order=1``)
it is DDIM(eta = 0) = DPM-Solver-1, first order.

EDM sampler (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
Algorithm 2; S_churn = 0 is Algorithm 1 with sigma(t) = t, s(t) = 1). It integrates the ODE of the VE-scaled
state x~ = x_t / alpha_t in the noise level sigma~ = sigma_t / alpha_t = e^{-lambda/2} (EDM sec. 4, Table 1):

    dx~/dsigma~ = (x~ - D(x~; sigma~)) / sigma~,    D(x~; sigma~) = x0_hat(alpha_t x~, t(sigma~)),

with Heun's method in sigma~ on every step (the grid ends at t_min > 0, so no final Euler step). Step i first
raises the noise ("churn"): gamma_i = min(S_churn / N, sqrt(2) - 1) if S_tmin <= sigma~_i <= S_tmax else 0,
sigma^ = sigma~_i (1 + gamma_i), x^ = x~_i + sqrt(sigma^2 - sigma~_i^2) S_noise z. In difflab sigma^ is
capped at sigma~(t_max) (the process is not defined beyond t_max) and the denoiser is called at
t^ = t(sigma^), with sigma^ recomputed from t^ so that the noise added matches the noise level seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from difflab.processes.base import Process
from difflab.samplers.grids import Callback, StepCoefficients, call_denoiser, check_grid, noise_like, run_grid

Denoiser = Callable[[Tensor, Tensor], Tensor]


def sample_dpmpp_2m(
    denoiser: Denoiser,
    process: Process,
    x_T: Tensor,
    grid: Tensor | Sequence[float],
    *,
    generator: torch.Generator | None = None,
    order: int = 2,
    denoise_final: bool = True,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2; module docstring). ``order=2`` (default) uses the multistep
    correction from the second step on; ``order=1`` drops it (= DDIM eta 0). Deterministic. Returns x0_hat
    at t_min (``denoise_final``) or x_{t_min}. NFE = steps + 1 (steps without the final denoising)."""
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    prev: list[tuple[Tensor, float]] = []  # (x0_hat, h) of the previous step

    def step(i: int, x: Tensor, c_t: StepCoefficients, c_s: StepCoefficients) -> Tensor:
        x0_hat = call_denoiser(denoiser, x, c_t.t)
        h = 0.5 * (c_s.logsnr - c_t.logsnr)
        d = x0_hat
        if order == 2 and prev:
            x0_prev, h_prev = prev[0]
            half_inv_r = 0.5 * h / h_prev  # 1 / (2 r_i)
            d = (1.0 + half_inv_r) * x0_hat - half_inv_r * x0_prev
        prev[:] = [(x0_hat, h)]
        return (c_s.sigma / c_t.sigma) * x - c_s.alpha * math.expm1(-h) * d

    return run_grid(denoiser, process, x_T, grid, step, callback=callback, denoise_final=denoise_final)


def _churn(
    process: Process, x_ve: Tensor, c_t: StepCoefficients, gamma: float, s_noise: float, generator
) -> tuple[Tensor, float, float, float]:
    """EDM Alg. 2 lines 4-6 in difflab's time: (x^, t^, alpha at t^, sigma^); sigma^ <= sigma~(t_max)."""
    sigma_t = c_t.sigma / c_t.alpha
    c_max = process.coefficients(process.t_max)
    sigma_cap = float(c_max.sigma / c_max.alpha)
    target = min(sigma_t * (1.0 + gamma), sigma_cap)
    if gamma <= 0.0 or target <= sigma_t:
        return x_ve, c_t.t, c_t.alpha, sigma_t
    t_hat = float(process.t_of_logsnr(-2.0 * math.log(target)).clamp(c_t.t, process.t_max))
    c_hat = process.coefficients(t_hat)
    alpha_hat, sigma_hat = float(c_hat.alpha), float(c_hat.sigma / c_hat.alpha)
    extra = math.sqrt(max(sigma_hat**2 - sigma_t**2, 0.0))
    return x_ve + extra * s_noise * noise_like(x_ve, generator), t_hat, alpha_hat, sigma_hat


def sample_edm(
    denoiser: Denoiser,
    process: Process,
    x_T: Tensor,
    grid: Tensor | Sequence[float],
    *,
    generator: torch.Generator | None = None,
    S_churn: float = 40.0,
    S_tmin: float = 0.05,
    S_tmax: float = 50.0,
    S_noise: float = 1.003,
    denoise_final: bool = True,
    callback: Callback | None = None,
) -> Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2; module docstring) on any grid (EDM uses the
    ``karras`` grid). Defaults S_churn = 40, S_tmin = 0.05, S_tmax = 50, S_noise = 1.003 (EDM's
    ImageNet-64 setting, its example.py / Table 5); S_churn = 0 is the deterministic Heun sampler (Alg. 1),
    ``edm_heun``. Returns x0_hat at t_min (``denoise_final``) or x_{t_min}. NFE = 2 steps + 1 (2 steps
    without the final denoising)."""
    if S_churn < 0 or S_noise < 0 or S_tmin > S_tmax:
        raise ValueError(
            f"need S_churn >= 0, S_noise >= 0, S_tmin <= S_tmax; got {S_churn}, {S_noise}, {S_tmin}, {S_tmax}"
        )
    n_steps = len(check_grid(grid)) - 1
    gamma_max = min(S_churn / n_steps, math.sqrt(2.0) - 1.0)

    def step(i: int, x: Tensor, c_t: StepCoefficients, c_s: StepCoefficients) -> Tensor:
        sigma_t, sigma_s = c_t.sigma / c_t.alpha, c_s.sigma / c_s.alpha
        gamma = gamma_max if S_tmin <= sigma_t <= S_tmax else 0.0
        x_hat, t_hat, alpha_hat, sigma_hat = _churn(process, x / c_t.alpha, c_t, gamma, S_noise, generator)
        d = (x_hat - call_denoiser(denoiser, alpha_hat * x_hat, t_hat)) / sigma_hat
        x_next = x_hat + (sigma_s - sigma_hat) * d
        d_next = (x_next - call_denoiser(denoiser, c_s.alpha * x_next, c_s.t)) / sigma_s
        return c_s.alpha * (x_hat + 0.5 * (sigma_s - sigma_hat) * (d + d_next))

    return run_grid(denoiser, process, x_T, grid, step, callback=callback, denoise_final=denoise_final)


def sample_edm_heun(
    denoiser: Denoiser,
    process: Process,
    x_T: Tensor,
    grid: Tensor | Sequence[float],
    *,
    generator: torch.Generator | None = None,
    denoise_final: bool = True,
    callback: Callback | None = None,
) -> Tensor:
    """EDM's deterministic sampler (Karras et al. 2022, Alg. 1, sigma(t) = t, s(t) = 1): Heun's method in
    sigma~ = sigma_t/alpha_t on x~ = x_t/alpha_t, every step second order; :func:`sample_edm`
    with S_churn = 0.
    Deterministic; NFE = 2 steps + 1 (2 steps without the final denoising)."""
    return sample_edm(
        denoiser,
        process,
        x_T,
        grid,
        generator=generator,
        S_churn=0.0,
        denoise_final=denoise_final,
        callback=callback,
    )
