"""Forward processes q(x_t | x0) = N(alpha_t x0, sigma_t^2 I) in continuous time.

Convention (one for the whole library): t in [0, 1], **t = 0 is data**, x_t = alpha_t x0 + sigma_t eps with
eps ~ N(0, I). The log-SNR lambda_t = log(alpha_t^2 / sigma_t^2) is strictly decreasing in t.

Every process is defined by log alpha_t, log sigma_t and their time derivatives, evaluated in float64. From
them follow (Kingma et al. 2021, VDM; Song et al. 2021, score SDE):

    lambda_t  = 2 (log alpha_t - log sigma_t)          SNR_t = exp(lambda_t)
    f(t)      = d log alpha_t / dt                      forward SDE drift  f(x, t) = f(t) x
    g(t)^2    = d sigma_t^2/dt - 2 f(t) sigma_t^2 = -sigma_t^2 d lambda_t/dt

so dx = f(t) x dt + g(t) dw has exactly these marginals.

Endpoint clamps: ``t_min`` and ``t_max`` are the range used by objectives, samplers and likelihoods (a process
may be singular at 0 or 1, e.g. lambda_0 = +inf). They are attributes of each process, stated in its repr.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

DTYPE = torch.float64


def as_time(t: float | Tensor) -> Tensor:
    """Return t as a float64 tensor (schedule coefficients are always computed in float64)."""
    return torch.as_tensor(t, dtype=DTYPE)


@dataclass(frozen=True)
class Coefficients:
    """Schedule coefficients at times t, all float64 tensors of t's shape.

    Attributes mirror the paper symbols: alpha_t, sigma_t, their time derivatives, lambda_t (``logsnr``)
    and d lambda_t / dt (``d_logsnr``, negative).
    """

    t: Tensor
    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor
    logsnr: Tensor
    d_logsnr: Tensor

    @property
    def snr(self) -> Tensor:
        """SNR_t = alpha_t^2 / sigma_t^2."""
        return torch.exp(self.logsnr)

    @property
    def d_snr(self) -> Tensor:
        """SNR'_t = d SNR_t / dt = SNR_t * d lambda_t / dt (negative)."""
        return torch.exp(self.logsnr) * self.d_logsnr

    @property
    def drift(self) -> Tensor:
        """f(t) of the forward SDE drift f(x, t) = f(t) x:  f = d log alpha / dt."""
        return self.d_alpha / self.alpha

    @property
    def g2(self) -> Tensor:
        """g(t)^2 = -sigma_t^2 d lambda_t / dt (Song et al. 2021, from the marginal variance ODE)."""
        return -(self.sigma**2) * self.d_logsnr


class Process(ABC):
    """Base class of a Gaussian forward process. Subclasses give log alpha, log sigma and derivatives."""

    name: str = "process"

    def __init__(self, t_min: float, t_max: float) -> None:
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        self.t_min = float(t_min)
        self.t_max = float(t_max)

    # --- what a subclass defines (all in float64) ---------------------------------------------------
    @abstractmethod
    def log_alpha(self, t: Tensor) -> Tensor:
        """log alpha_t."""

    @abstractmethod
    def log_sigma(self, t: Tensor) -> Tensor:
        """log sigma_t."""

    @abstractmethod
    def d_log_alpha(self, t: Tensor) -> Tensor:
        """d log alpha_t / dt."""

    @abstractmethod
    def d_log_sigma(self, t: Tensor) -> Tensor:
        """d log sigma_t / dt."""

    # --- derived quantities -------------------------------------------------------------------------
    def coefficients(self, t: float | Tensor) -> Coefficients:
        """All coefficients at t (float64)."""
        t = as_time(t)
        log_a, log_s = self.log_alpha(t), self.log_sigma(t)
        dla, dls = self.d_log_alpha(t), self.d_log_sigma(t)
        alpha, sigma = torch.exp(log_a), torch.exp(log_s)
        return Coefficients(
            t=t,
            alpha=alpha,
            sigma=sigma,
            d_alpha=alpha * dla,
            d_sigma=sigma * dls,
            logsnr=2.0 * (log_a - log_s),
            d_logsnr=2.0 * (dla - dls),
        )

    def alpha(self, t: float | Tensor) -> Tensor:
        return torch.exp(self.log_alpha(as_time(t)))

    def sigma(self, t: float | Tensor) -> Tensor:
        return torch.exp(self.log_sigma(as_time(t)))

    def logsnr(self, t: float | Tensor) -> Tensor:
        """lambda_t = 2 log(alpha_t / sigma_t)."""
        t = as_time(t)
        return 2.0 * (self.log_alpha(t) - self.log_sigma(t))

    def d_logsnr(self, t: float | Tensor) -> Tensor:
        t = as_time(t)
        return 2.0 * (self.d_log_alpha(t) - self.d_log_sigma(t))

    def t_of_logsnr(self, logsnr: float | Tensor) -> Tensor:
        """Inverse of lambda_t. Generic: float64 bisection on [0, 1] (lambda is strictly decreasing)."""
        lam = as_time(logsnr)
        lo = torch.zeros_like(lam)
        hi = torch.ones_like(lam)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self.logsnr(mid) > lam  # still too little noise: move right
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    @property
    def prior_std(self) -> float:
        """Std of the prior N(0, s^2 I) at t_max: s^2 = alpha_{t_max}^2 + sigma_{t_max}^2.

        This is the marginal variance of x_{t_max} for unit-variance data (1 for VP processes, about
        sigma_max^2 for VE).
        """
        c = self.coefficients(self.t_max)
        return float(torch.sqrt(c.alpha**2 + c.sigma**2))

    def marginal(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_t = alpha_t x0 + sigma_t eps, for t of shape (B,)."""
        from difflab._broadcast import expand_like

        return expand_like(self.alpha(t), x0) * x0 + expand_like(self.sigma(t), x0) * eps

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra = f", {extra}" if extra else ""
        return f"{type(self).__name__}(t_min={self.t_min:g}, t_max={self.t_max:g}{extra})"


class VarianceProcess(Process):
    """Variance-preserving process: alpha_t^2 + sigma_t^2 = 1, defined by log alpha_t alone.

    sigma_t^2 = 1 - alpha_t^2 = -expm1(2 log alpha_t);  d log sigma/dt = -alpha^2/sigma^2 * d log alpha/dt;
    lambda_t = log sigmoid^{-1}:  alpha_t^2 = sigmoid(lambda_t).
    """

    def log_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * torch.log(-torch.expm1(2.0 * self.log_alpha(t)))

    def d_log_sigma(self, t: Tensor) -> Tensor:
        log_a = self.log_alpha(t)
        ratio = torch.exp(2.0 * log_a) / (-torch.expm1(2.0 * log_a))  # alpha^2 / sigma^2
        return -ratio * self.d_log_alpha(t)

    def t_of_log_alpha2(self, log_alpha2: Tensor) -> Tensor:
        """Inverse of 2 log alpha_t, if the subclass knows it in closed form (else bisection)."""
        raise NotImplementedError

    def t_of_logsnr(self, logsnr: float | Tensor) -> Tensor:
        lam = as_time(logsnr)
        try:
            return self.t_of_log_alpha2(torch.nn.functional.logsigmoid(lam))
        except NotImplementedError:
            return super().t_of_logsnr(lam)


HALF_PI = 0.5 * math.pi
