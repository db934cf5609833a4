"""Continuous-time processes: trig VP (seed 000), linear-beta VP and sub-VP (Song et al. 2021),
Ornstein-Uhlenbeck (seed 003) and VE (geometric sigma, Song et al. 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difflab.processes.base import HALF_PI, Process, VarianceProcess

DEFAULT_LOGSNR_MAX = 10.0
"""log-SNR at a default t_min chosen by log-SNR (OU): sigma/alpha = e^-5 against unit-variance data."""


class TrigVP(VarianceProcess):
    """alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2) (seed 000; Nichol & Dhariwal 2021 cosine with s=0).

    lambda_t = -2 log tan(pi t / 2), so t(lambda) = (2/pi) atan(exp(-lambda / 2)).
    Default clamps t in [1e-4, 1 - 1e-4], seed 000's sampling grid endpoints.
    """

    name = "trig_vp"

    def __init__(self, t_min: float = 1e-4, t_max: float = 1.0 - 1e-4) -> None:
        super().__init__(t_min, t_max)

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.log(torch.cos(HALF_PI * t))

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return -HALF_PI * torch.tan(HALF_PI * t)

    def log_sigma(self, t: Tensor) -> Tensor:
        return torch.log(torch.sin(HALF_PI * t))

    def d_log_sigma(self, t: Tensor) -> Tensor:
        return HALF_PI / torch.tan(HALF_PI * t)

    def t_of_log_alpha2(self, log_alpha2: Tensor) -> Tensor:
        return torch.acos(torch.exp(0.5 * log_alpha2)) / HALF_PI


class LinearVP(VarianceProcess):
    """VP SDE with beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021, eq. 11).

    log alpha_t = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2;  d log alpha / dt = -beta(t) / 2.
    Defaults beta_min = 0.1, beta_max = 20, t in [1e-5, 1] (score_sde's eps = 1e-5).
    """

    name = "linear_vp"

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-5, t_max: float = 1.0
    ):
        super().__init__(t_min, t_max)
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def t_of_log_alpha2(self, log_alpha2: Tensor) -> Tensor:
        # (beta_d / 2) t^2 + beta_min t + log alpha^2 = 0
        beta_d = self.beta_max - self.beta_min
        return (-self.beta_min + torch.sqrt(self.beta_min**2 - 2.0 * beta_d * log_alpha2)) / beta_d

    def extra_repr(self) -> str:
        return f"beta_min={self.beta_min:g}, beta_max={self.beta_max:g}"


class OrnsteinUhlenbeck(VarianceProcess):
    """Ornstein-Uhlenbeck process dx = -x dtau + sqrt(2) dw on tau in [0, horizon] (seed 003).

    Time is rescaled to t = tau / horizon in [0, 1]: alpha_t = exp(-horizon t),
    sigma_t^2 = 1 - exp(-2 horizon t), so f(t) = -horizon and g(t)^2 = 2 horizon.

    Default t_min: by log-SNR, t_min = t(lambda = DEFAULT_LOGSNR_MAX = 10), i.e. sigma/alpha = e^-5 = 6.7e-3
    at the data end (t_min = 4.5e-6 for horizon 5), relative to difflab's z-scored (unit-variance) data.
    Seed 003 used tau in [0.01, 5] on *raw* data (t_min = 0.002, sigma^2 = 0.02): on z-scored ``mixture8``
    that equals a component's variance (1/51 = 0.0196), so even the exact model then scored KL(q || p_{t_min})
    = 0.19 nats (issue 9, item 2). Pass ``t_min=0.002`` for seed 003's raw-data endpoint.
    """

    name = "ou"

    def __init__(self, horizon: float = 5.0, t_min: float | None = None, t_max: float = 1.0) -> None:
        if horizon <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        if t_min is None:  # t(lambda) = -log(sigmoid(lambda)) / (2 horizon)
            t_min = math.log1p(math.exp(-DEFAULT_LOGSNR_MAX)) / (2.0 * float(horizon))
        super().__init__(t_min, t_max)
        self.horizon = float(horizon)

    def log_alpha(self, t: Tensor) -> Tensor:
        return -self.horizon * t

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -self.horizon)

    def t_of_log_alpha2(self, log_alpha2: Tensor) -> Tensor:
        return -0.5 * log_alpha2 / self.horizon

    def extra_repr(self) -> str:
        return f"horizon={self.horizon:g}"


class SubVP(Process):
    """sub-VP SDE (Song et al. 2021, eq. 29): alpha_t as LinearVP, sigma_t = 1 - alpha_t^2."""

    name = "sub_vp"

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-5, t_max: float = 1.0
    ):
        super().__init__(t_min, t_max)
        self._vp = LinearVP(beta_min, beta_max, t_min, t_max)

    def log_alpha(self, t: Tensor) -> Tensor:
        return self._vp.log_alpha(t)

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return self._vp.d_log_alpha(t)

    def log_sigma(self, t: Tensor) -> Tensor:
        return torch.log(-torch.expm1(2.0 * self.log_alpha(t)))

    def d_log_sigma(self, t: Tensor) -> Tensor:
        log_a = self.log_alpha(t)
        return -2.0 * torch.exp(2.0 * log_a) / (-torch.expm1(2.0 * log_a)) * self.d_log_alpha(t)

    def extra_repr(self) -> str:
        return self._vp.extra_repr()


class VE(Process):
    """Variance-exploding SDE: alpha_t = 1, sigma_t = sigma_min (sigma_max / sigma_min)^t (Song et al. 2021).

    Defaults sigma_min = 0.01, sigma_max = 50 (score_sde CIFAR-10), t in [0, 1] (sigma_0 = sigma_min > 0).
    """

    name = "ve"

    def __init__(
        self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 0.0, t_max: float = 1.0
    ):
        super().__init__(t_min, t_max)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def log_sigma(self, t: Tensor) -> Tensor:
        return math.log(self.sigma_min) + t * self._log_ratio

    def d_log_sigma(self, t: Tensor) -> Tensor:
        return torch.full_like(t, self._log_ratio)

    def t_of_logsnr(self, logsnr: float | Tensor) -> Tensor:
        lam = torch.as_tensor(logsnr, dtype=torch.float64)
        return (-0.5 * lam - math.log(self.sigma_min)) / self._log_ratio

    def extra_repr(self) -> str:
        return f"sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g}"
