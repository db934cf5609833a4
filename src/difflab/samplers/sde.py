"""Reverse-SDE samplers: Euler-Maruyama and predictor-corrector with a Langevin corrector.

The forward SDE dx = f(t) x dt + g(t) dw has the reverse-time SDE (Song et al. 2021, score SDE, eq. 6)

    dx = [f(t) x - g(t)^2 grad log p_t(x)] dt + g(t) dw_bar        (dt < 0),

with the score taken from the denoiser by Tweedie's formula,
grad log p_t(x) = (alpha_t x0_hat - x) / sigma_t^2.
Since g^2 / sigma^2 = -d lambda / dt, the drift is evaluated as f x + (d lambda/dt)(alpha_t x0_hat - x), which
avoids dividing by a tiny sigma_t^2 near t = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from difflab.processes.base import Process
from difflab.samplers.grids import Callback, StepCoefficients, call_denoiser, noise_like, run_grid

Denoiser = Callable[[Tensor, Tensor], Tensor]


def _em_step(
    denoiser: Denoiser,
    x: Tensor,
    c_t: StepCoefficients,
    c_s: StepCoefficients,
    generator: torch.Generator | None,
) -> Tensor:
    """x_s = x_t - h [f x_t - g^2 score] + g sqrt(h) z,  h = t - s > 0."""
    h = c_t.t - c_s.t
    x0_hat = call_denoiser(denoiser, x, c_t.t)
    g2_score = -c_t.d_logsnr * (c_t.alpha * x0_hat - x)  # g(t)^2 grad log p_t(x)
    drift = c_t.drift * x - g2_score
    return x - h * drift + math.sqrt(c_t.g2 * h) * noise_like(x, generator)


def sample_euler_maruyama(
    denoiser: Denoiser,
    process: Process,
    x_T: Tensor,
    grid: Tensor | Sequence[float],
    *,
    generator: torch.Generator | None = None,
    denoise_final: bool = True,
    callback: Callback | None = None,
) -> Tensor:
    """Euler-Maruyama on the reverse SDE (score SDE eq. 6), h = t_i - t_{i+1}:

        x_{i+1} = x_i - h [f(t_i) x_i - g(t_i)^2 s(x_i, t_i)] + g(t_i) sqrt(h) z_i,
        s(x, t) = (alpha_t x0_hat(x, t) - x) / sigma_t^2.

    Noise is added at every step, including the last; the default output is x0_hat(x_{t_min}, t_min)
    (``denoise_final``), which removes it (score_sde returns the noise-free mean instead). NFE = steps + 1
    (steps without the final denoising).
    """

    def step(i: int, x: Tensor, c_t: StepCoefficients, c_s: StepCoefficients) -> Tensor:
        return _em_step(denoiser, x, c_t, c_s, generator)

    return run_grid(denoiser, process, x_T, grid, step, callback=callback, denoise_final=denoise_final)


def langevin_step(
    denoiser: Denoiser,
    x: Tensor,
    c: StepCoefficients,
    *,
    snr: float,
    alpha_i: float,
    generator: torch.Generator | None,
    per_example: bool,
) -> Tensor:
    """One Langevin corrector step at time t (score SDE Alg. 4/5):

        z ~ N(0, I),  s = (alpha_t x0_hat - x) / sigma_t^2,  eps = 2 alpha_i (snr ||z|| / ||s||)^2,
        x <- x + eps s + sqrt(2 eps) z.

    ``per_example``: the norms (and hence eps) are per example (shape (B,)); otherwise ||z||, ||s|| are the
    batch means of the per-example norms, one eps for the batch, as score_sde's ``LangevinCorrector`` does.
    """
    x0_hat = call_denoiser(denoiser, x, c.t)
    score = (c.alpha * x0_hat - x) / c.sigma**2
    z = noise_like(x, generator)
    z_norm = z.reshape(z.shape[0], -1).norm(dim=1)
    s_norm = score.reshape(score.shape[0], -1).norm(dim=1)
    if not per_example:
        z_norm, s_norm = z_norm.mean(), s_norm.mean()
    tiny = torch.finfo(x.dtype).tiny
    eps = 2.0 * alpha_i * (snr * z_norm / s_norm.clamp_min(tiny)) ** 2
    if eps.ndim == 1:
        eps = eps.reshape(-1, *([1] * (x.ndim - 1)))
    return x + eps * score + torch.sqrt(2.0 * eps) * z


def sample_pc(
    denoiser: Denoiser,
    process: Process,
    x_T: Tensor,
    grid: Tensor | Sequence[float],
    *,
    generator: torch.Generator | None = None,
    snr: float = 0.16,
    n_corrector: int = 1,
    per_example: bool = False,
    alpha_ratio: bool = True,
    denoise_final: bool = True,
    callback: Callback | None = None,
) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, score SDE, Alg. 5 / Alg. 2-3).

    Each grid step t -> s: one Euler-Maruyama predictor step on the reverse SDE (as in
    :func:`sample_euler_maruyama`), then ``n_corrector`` Langevin corrector steps at time s with
    signal-to-noise ratio ``snr`` (0.16: score_sde's CIFAR-10 VE setting):

        eps = 2 alpha_i (snr ||z|| / ||s||)^2,   x <- x + eps s(x, s) + sqrt(2 eps) z.

    alpha_i: with ``alpha_ratio`` (default) alpha_i = (alpha_t / alpha_s)^2 <= 1 for the step t -> s just
    taken, which is 1 for VE and 1 - beta_i for a DDPM chain on its full grid (score_sde's VP corrector uses
    the discrete 1 - beta_i of its N-step chain); with ``alpha_ratio=False`` alpha_i = 1.

    Step size: by default (``per_example=False``) ||z|| and ||s|| are batch means of per-example norms, as
    in score_sde. With ``per_example=True`` each example gets its own eps; in low dimension this is unstable
    (||s|| -> 0 near a mode gives an unbounded step), so it is meant for high-dimensional data.

    Returns x0_hat at t_min (``denoise_final``) or x_{t_min}. NFE = steps (1 + n_corrector) + 1.
    """
    if n_corrector < 0 or int(n_corrector) != n_corrector:
        raise ValueError(f"n_corrector must be an integer >= 0, got {n_corrector}")
    if snr <= 0:
        raise ValueError(f"snr must be positive, got {snr}")

    def step(i: int, x: Tensor, c_t: StepCoefficients, c_s: StepCoefficients) -> Tensor:
        x = _em_step(denoiser, x, c_t, c_s, generator)
        alpha_i = (c_t.alpha / c_s.alpha) ** 2 if alpha_ratio else 1.0
        for _ in range(int(n_corrector)):
            x = langevin_step(
                denoiser, x, c_s, snr=snr, alpha_i=alpha_i, generator=generator, per_example=per_example
            )
        return x

    return run_grid(denoiser, process, x_T, grid, step, callback=callback, denoise_final=denoise_final)
