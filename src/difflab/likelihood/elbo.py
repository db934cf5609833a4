"""Evidence lower bounds (negative, in nats per example, summed over dimensions).

Continuous time (Kingma et al. 2021, VDM, eqs. 10-17): for x0 in R^D,

    NELBO(x0) = KL(q(x_{t_max} | x0) || N(0, s^2 I))                                        prior
              + E[-log p(x0 | x_{t_min})],  p(x0 | x_t) = N(x0; x_t/alpha, sigma^2/alpha^2 I)   reconstruction
              + 1/2 int_{t_min}^{t_max} (-lambda'(t)) E|eps - eps_hat(x_t, t)|^2 dt             diffusion

The reconstruction with this decoder is the constant D/2 log(2 pi e sigma^2/alpha^2) at t_min (it does not use
the model). The diffusion integral is estimated by Monte Carlo with n_t times per example, stratified in
log-SNR by default, so that (-lambda')/p(t) = lambda_max - lambda_min is constant (lowest variance).

Discrete time, T steps (Ho et al. 2020, eq. 5; VDM eq. 13; seed 002):

    NELBO(x0) = KL(q(x_T | x0) || N(0, I)) + sum_{i=2}^T KL(q(x_{i-1} | x_i, x0) || p(x_{i-1} | x_i))
              - log p(x0 | x_1)

with p(x_{i-1} | x_i) = q(x_{i-1} | x_i, x0 = x0_hat(x_i)) (same posterior variance), so each KL is
1/2 (SNR_{i-1} - SNR_i) |x0 - x0_hat(x_i)|^2. The decoder p(x0 | x_1) is ``gaussian`` N(x0_hat(x_1),
sigma_1^2/alpha_1^2 I) (a density; the total is a continuous NLL) or ``discretized`` (Ho et al. sec. 3.3: the
same Gaussian integrated over 256 bins of width 2/255 centred on the grid of [-1, 1], edge bins open; the
total is then a discrete NLL of 8-bit data scaled to [-1, 1], so bits/dim needs no dequantization correction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab._broadcast import expand_like
from difflab.objectives.loss import predict_hub
from difflab.objectives.time_dist import LogSNRUniformTime, StratifiedTime
from difflab.processes.base import DTYPE, Process
from difflab.processes.discrete import DiscreteChain

LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class ElboResult:
    """NELBO and its terms per example, float64 (B,), in nats (summed over the ``dim`` data dimensions).

    ``diffusion_stderr`` is the Monte-Carlo standard error of the diffusion term only.
    """

    total: Tensor
    prior: Tensor
    reconstruction: Tensor
    diffusion: Tensor
    diffusion_stderr: Tensor
    dim: int

    def nats_per_dim(self) -> Tensor:
        return nats_per_dim(self.total, self.dim)

    def bits_per_dim(self) -> Tensor:
        return to_bits_per_dim(self.total, self.dim)

    def mean_se_parts(self) -> tuple[float, float, float]:
        """(se, se_mc, se_points) of the mean NELBO over the examples, in nats/dim: the usual s.e. (std over
        examples / sqrt(B)), its Monte-Carlo part sqrt(sum_b diffusion_stderr_b^2) / B (from the per-example
        successive-difference estimates; checked against repeated runs on the same points) and the
        point-spread part sqrt(se^2 - se_mc^2)."""
        B = self.total.numel()
        per_dim = self.total / self.dim
        se = float(per_dim.std()) / math.sqrt(B) if B > 1 else float("nan")
        se_mc = float(self.diffusion_stderr.pow(2).sum().sqrt()) / (B * self.dim)
        return se, se_mc, math.sqrt(max(se**2 - se_mc**2, 0.0))


def nats_per_dim(nats: Tensor | float, dim: int) -> Tensor:
    """nats / D."""
    return torch.as_tensor(nats, dtype=DTYPE) / dim


def to_bits_per_dim(nats: Tensor | float, dim: int) -> Tensor:
    """nats / (D ln 2). For a density of data scaled from 8-bit to [-1, 1] add log2(127.5) per dim to get the
    bits/dim of the uniformly dequantized 8-bit data; the ``discretized`` decoder needs no such correction."""
    return torch.as_tensor(nats, dtype=DTYPE) / (dim * math.log(2.0))


# --- Gaussian helpers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PosteriorCoefficients:
    """q(x_{i-1} | x_i, x0) = N(coef_x0 x0 + coef_xt x_i, variance I), each (T,) for i = 1..T."""

    coef_x0: Tensor
    coef_xt: Tensor
    variance: Tensor


def posterior_coefficients(chain: DiscreteChain) -> PosteriorCoefficients:
    """Ho et al. 2020, eqs. 6-7:  mu_tilde = sqrt(abar_{i-1}) beta_i / (1 - abar_i) x0
    + sqrt(alpha_i) (1 - abar_{i-1}) / (1 - abar_i) x_i,
    beta_tilde_i = (1 - abar_{i-1}) / (1 - abar_i) beta_i."""
    abar_prev, abar = chain.alpha_bar[:-1], chain.alpha_bar[1:]
    beta = chain.betas
    return PosteriorCoefficients(
        coef_x0=torch.sqrt(abar_prev) * beta / (1.0 - abar),
        coef_xt=torch.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar),
        variance=chain.posterior_variance(),
    )


def gaussian_kl(mu1: Tensor, var1: Tensor, mu2: Tensor, var2: Tensor) -> Tensor:
    """Elementwise KL(N(mu1, var1) || N(mu2, var2)) = 1/2 [log(var2/var1) + (var1 + (mu1-mu2)^2)/var2 - 1]."""
    mu1, var1, mu2, var2 = (torch.as_tensor(v) for v in (mu1, var1, mu2, var2))
    return 0.5 * (torch.log(var2) - torch.log(var1) + (var1 + (mu1 - mu2) ** 2) / var2 - 1.0)


def _log1mexp(d: Tensor) -> Tensor:
    """log(1 - exp(d)) for d <= 0, accurate on both sides of -log 2 (Maechler 2012)."""
    return torch.where(d > -math.log(2.0), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def _log_ndtr_diff(a: Tensor, b: Tensor) -> Tensor:
    """log(Phi(b) - Phi(a)) for a < b, evaluated in the tail where both are small."""
    flip = a > 0  # Phi(b) - Phi(a) = Phi(-a) - Phi(-b)
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + _log1mexp(torch.special.log_ndtr(lo) - log_hi)


def discretized_gaussian_log_likelihood(
    x: Tensor, mean: Tensor, log_scale: Tensor, *, bins: int = 256, low: float = -1.0, high: float = 1.0
) -> Tensor:
    """log P(x) of N(mean, exp(log_scale)^2) integrated over the bin of x (Ho et al. 2020, sec. 3.3).

    Bin centres are the ``bins`` points of [low, high] (width (high - low)/(bins - 1), 2/255 by default); the
    first bin extends to -inf and the last to +inf, so the probabilities of the grid values sum to 1.
    Evaluated in float64 with log_ndtr (no clamping of probabilities).
    """
    x = torch.as_tensor(x, dtype=DTYPE)
    mean = torch.as_tensor(mean, dtype=DTYPE).to(x.device)
    inv_scale = torch.exp(-torch.as_tensor(log_scale, dtype=DTYPE).to(x.device))
    half = 0.5 * (high - low) / (bins - 1)
    a = (x - half - mean) * inv_scale
    b = (x + half - mean) * inv_scale
    left = x < low + half
    right = x > high - half
    mid = _log_ndtr_diff(torch.where(left | right, b - 1.0, a), b)  # dummy a < b where unused
    return torch.where(left, torch.special.log_ndtr(b), torch.where(right, torch.special.log_ndtr(-a), mid))


# --- shared machinery ---------------------------------------------------------------------------------------


def prior_kl(process: Process, x0: Tensor, prior_std: float | None) -> Tensor:
    """KL(N(alpha x0, sigma^2 I) || N(0, s^2 I)) at t_max, summed over dims (float64, (B,))."""
    s2 = (process.prior_std if prior_std is None else float(prior_std)) ** 2
    c = process.coefficients(process.t_max)
    x = x0.to(DTYPE).reshape(x0.shape[0], -1)
    var = float(c.sigma**2)
    per_dim = 0.5 * ((var + float(c.alpha**2) * x**2) / s2 - 1.0 - math.log(var / s2))
    return per_dim.sum(1).cpu()


def denoise_rows(
    denoiser: object,
    process: Process,
    x0: Tensor,
    t: Tensor,
    generator: torch.Generator | None,
    shared_t: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For t of shape (k, B): draw eps, form x_t and return (x0_rep, eps, x0_hat, eps_hat), each (k*B, *dims).

    ``shared_t``: every example of a row k has the same time (coefficients are computed once per row).
    """
    k, B = t.shape
    dims = x0.shape[1:]
    x0_rep = x0.unsqueeze(0).expand(k, *x0.shape).reshape(k * B, *dims)
    gdev = generator.device if generator is not None else x0.device
    eps = torch.randn(x0_rep.shape, dtype=x0.dtype, device=gdev, generator=generator).to(x0.device)
    t = t.to(DTYPE).cpu()
    if shared_t:
        c = process.coefficients(t[:, 0])
        alpha, sigma = c.alpha.repeat_interleave(B), c.sigma.repeat_interleave(B)
    else:
        c = process.coefficients(t.reshape(-1))
        alpha, sigma = c.alpha, c.sigma
    alpha, sigma = alpha.to(x0.device), sigma.to(x0.device)
    x_t = expand_like(alpha, x0_rep) * x0_rep + expand_like(sigma, x0_rep) * eps
    x0_hat, eps_hat = predict_hub(denoiser, x_t, t.reshape(-1).to(x0.device), alpha, sigma)
    return x0_rep, eps, x0_hat, eps_hat


def sq_norm(d: Tensor, k: int, B: int) -> Tensor:
    """|d|^2 summed over dims, float64 on CPU, shape (k, B)."""
    return (d.to(DTYPE) ** 2).reshape(k, B, -1).sum(-1).cpu()


def mean_stderr(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard error over the last axis (NaN stderr for a single draw)."""
    n = values.shape[-1]
    mean = values.mean(-1)
    if n < 2:
        return mean, torch.full_like(mean, float("nan"))
    return mean, values.std(-1, unbiased=True) / math.sqrt(n)


def _stratified_stderr(values: Tensor, t: Tensor) -> Tensor:
    """Standard error of the mean of stratified draws (B, n) from successive differences of the values
    sorted by t: se^2 = sum_k (v_{k+1} - v_k)^2 / (2 n (n - 1)). (The plain std would count the variation of
    the integrand across strata, which stratification removes.) NaN for a single draw."""
    n = values.shape[-1]
    if n < 2:
        return torch.full(values.shape[:-1], float("nan"), dtype=DTYPE)
    v = torch.gather(values, -1, torch.argsort(t, dim=-1))
    return torch.sqrt((v[..., 1:] - v[..., :-1]).pow(2).sum(-1) / (2.0 * n * (n - 1)))


# --- continuous NELBO ---------------------------------------------------------------------------------------


def continuous_nelbo(
    denoiser: object,
    process: Process,
    x0: Tensor,
    *,
    n_t: int = 16,
    generator: torch.Generator | None = None,
    stratify_logsnr: bool = True,
    control_variate: bool = True,
    prior_std: float | None = None,
    max_batch: int = 4096,
) -> ElboResult:
    """Continuous-time NELBO per example (VDM eq. 17 with the decoder and prior terms; see module docstring).

    ``diffusion_stderr`` is the successive-difference standard error of the stratified draws.

    Args:
        denoiser: a TargetDenoiser (its (x0_hat, eps_hat) are used) or a plain ``D(x_t, t) -> x0_hat``.
        n_t: time draws per example for the diffusion term (stratified per example).
        stratify_logsnr: draw lambda uniformly (stratified) on [lambda(t_max), lambda(t_min)] (default), else
            t uniformly (stratified) on [t_min, t_max].
        control_variate: subtract c(t) (|eps|^2 - D), whose mean is exactly 0, from |eps - eps_hat|^2 with
            c(t) = (SNR/(1 + SNR))^2 (the optimal coefficient for unit-variance data and the Bayes denoiser).
            Unbiased for any data; it removes the chi-square noise of the high-SNR region, where
            eps_hat ~ 0 and |eps - eps_hat|^2 ~ |eps|^2. Measured with the exact denoiser (tested in
            ``tests/test_nelbo_precision.py``): the Monte-Carlo variance of the diffusion term falls 13-24x
            on a unit-variance 2D Gaussian (trig_vp, linear_vp) but only ~2.6x on z-scored ``mixture8``
            (log-SNR in [-9, 10]; its modes have variance 0.02, not 1, and even the optimal per-time
            coefficient gains only 1.35x more); there the Monte-Carlo s.e. of the mean over 2000 points at
            n_t = 16 falls from 0.027 to 0.016 nats/dim.
        prior_std: s of the prior N(0, s^2 I) (default ``process.prior_std``).
        max_batch: largest number of rows per denoiser call.
    """
    if n_t < 1:
        raise ValueError(f"n_t must be >= 1, got {n_t}")
    B = x0.shape[0]
    D = x0[0].numel()
    prior = prior_kl(process, x0, prior_std)
    c0 = process.coefficients(process.t_min)
    log_var0 = float(2.0 * (torch.log(c0.sigma) - torch.log(c0.alpha)))  # log(sigma^2 / alpha^2) at t_min
    recon = torch.full((B,), 0.5 * D * (LOG_2PI + 1.0 + log_var0), dtype=DTYPE)
    p_t = LogSNRUniformTime(process, stratified=True) if stratify_logsnr else StratifiedTime(process)
    # stratified over B * n_t points; point k*B + b is example b's k-th draw, so each example's n_t draws are
    # themselves spaced 1/n_t apart (stratified) while each draw is marginally p_t.
    t, iw = p_t.sample(B * n_t, generator)
    t, iw = t.reshape(n_t, B), iw.reshape(n_t, B)
    integrand = 0.5 * (-process.d_logsnr(t)) * iw  # (n_t, B)
    values = torch.empty(n_t, B, dtype=DTYPE)
    step = max(1, max_batch // B)
    for k0 in range(0, n_t, step):
        k1 = min(n_t, k0 + step)
        _, eps, _, eps_hat = denoise_rows(denoiser, process, x0, t[k0:k1], generator)
        err = sq_norm(eps - eps_hat, k1 - k0, B)
        if control_variate:
            snr = torch.exp(process.logsnr(t[k0:k1]))
            err = err - (snr / (1.0 + snr)) ** 2 * (sq_norm(eps, k1 - k0, B) - D)
        values[k0:k1] = integrand[k0:k1] * err
    diffusion = values.mean(0)
    stderr = _stratified_stderr(values.T, t.T)
    return ElboResult(prior + recon + diffusion, prior, recon, diffusion, stderr, D)


__all__ = [
    "ElboResult",
    "PosteriorCoefficients",
    "continuous_nelbo",
    "discretized_gaussian_log_likelihood",
    "gaussian_kl",
    "nats_per_dim",
    "posterior_coefficients",
    "to_bits_per_dim",
]
