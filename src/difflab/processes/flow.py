"""The linear-interpolant process of flow matching / rectified flow, and the shifted cosine schedule.

Linear interpolant (Lipman et al. 2023, "Flow Matching for Generative Modeling", eq. 20 with sigma_min = 0;
Liu et al. 2023, "Flow Straight and Fast", eq. 1; Esser et al. 2024, SD3, sec. 2 "RF"):

    x_t = (1 - t) x0 + t eps,   alpha_t = 1 - t,  sigma_t = t       (t = 0 is data, difflab's convention)
    lambda_t = 2 log((1 - t) / t),   t(lambda) = sigmoid(-lambda / 2).

Its conditional velocity dx_t/dt = eps - x0 is the ``flow`` target of :mod:`difflab.parameterization`.
The process is singular at both ends (lambda = +-inf), so it is clamped by log-SNR: the named defaults
``LOGSNR_MAX`` / ``LOGSNR_MIN`` give t_min = sigmoid(-LOGSNR_MAX / 2), t_max = sigmoid(-LOGSNR_MIN / 2).

Shifted cosine (Hoogeboom et al. 2023, "simple diffusion", sec. 3.1, eq. 4): for resolution d,

    lambda_shifted(t) = lambda_cosine(t) + 2 log(base / d),   base = 64,

a VP process with alpha_t^2 = sigmoid(lambda_shifted(t)). It is the ``resolution`` option of ``trig_vp``
(:class:`ShiftedTrigVP` is what ``TrigVP(resolution=d)`` builds).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from difflab.processes.base import DTYPE, HALF_PI, Process, VarianceProcess

LOGSNR_MAX = 15.0
"""Default log-SNR at t_min of the linear interpolant (t_min = sigmoid(-7.5) = 5.5e-4)."""
LOGSNR_MIN = -15.0
"""Default log-SNR at t_max of the linear interpolant (t_max = 1 - 5.5e-4)."""


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class LinearInterpolant(Process):
    """alpha_t = 1 - t, sigma_t = t (flow matching / rectified flow; module docstring).

    d log alpha/dt = -1/(1 - t), d log sigma/dt = 1/t. Default clamps from log-SNR [LOGSNR_MIN, LOGSNR_MAX].
    """

    name = "linear_interpolant"

    def __init__(
        self, t_min: float = _sigmoid(-0.5 * LOGSNR_MAX), t_max: float = _sigmoid(-0.5 * LOGSNR_MIN)
    ) -> None:
        super().__init__(t_min, t_max)

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.log1p(-t)

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return -1.0 / (1.0 - t)

    def log_sigma(self, t: Tensor) -> Tensor:
        return torch.log(t)

    def d_log_sigma(self, t: Tensor) -> Tensor:
        return 1.0 / t

    def t_of_logsnr(self, logsnr: float | Tensor) -> Tensor:
        """t(lambda) = sigmoid(-lambda / 2)."""
        return torch.sigmoid(-0.5 * torch.as_tensor(logsnr, dtype=DTYPE))


class ShiftedTrigVP(VarianceProcess):
    """Shifted cosine VP: alpha_t^2 = sigmoid(lambda_cos(t) + shift), shift = 2 log(base_resolution / d).

    lambda_cos(t) = -2 log tan(pi t / 2) (the trig_vp log-SNR); Hoogeboom et al. 2023, eq. 4. Everything is
    written through log-sigmoids (no cancellation at either end):
        log alpha = 1/2 logsigmoid(lambda),  log sigma = 1/2 logsigmoid(-lambda),
        d log alpha/dt = 1/2 sigmoid(-lambda) lambda',  d log sigma/dt = -1/2 sigmoid(lambda) lambda',
        lambda'(t) = -2 pi / sin(pi t).
    """

    name = "trig_vp"

    def __init__(
        self, resolution: float, base_resolution: float = 64.0, t_min: float = 1e-4, t_max: float = 1.0 - 1e-4
    ) -> None:
        super().__init__(t_min, t_max)
        if not (resolution > 0 and base_resolution > 0):
            raise ValueError(
                f"need resolution > 0 and base_resolution > 0, got {resolution}, {base_resolution}"
            )
        self.resolution = float(resolution)
        self.base_resolution = float(base_resolution)
        self.shift = 2.0 * math.log(self.base_resolution / self.resolution)

    def _lam(self, t: Tensor) -> Tensor:
        return -2.0 * torch.log(torch.tan(HALF_PI * t)) + self.shift

    def _d_lam(self, t: Tensor) -> Tensor:
        return -2.0 * math.pi / torch.sin(math.pi * t)

    def log_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * logsigmoid(self._lam(t))

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * torch.sigmoid(-self._lam(t)) * self._d_lam(t)

    def log_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * logsigmoid(-self._lam(t))

    def d_log_sigma(self, t: Tensor) -> Tensor:
        return -0.5 * torch.sigmoid(self._lam(t)) * self._d_lam(t)

    def logsnr(self, t: float | Tensor) -> Tensor:
        return self._lam(torch.as_tensor(t, dtype=DTYPE))

    def t_of_logsnr(self, logsnr: float | Tensor) -> Tensor:
        """t(lambda) = (2/pi) atan(exp(-(lambda - shift) / 2))."""
        lam = torch.as_tensor(logsnr, dtype=DTYPE)
        return torch.atan(torch.exp(-0.5 * (lam - self.shift))) / HALF_PI

    def extra_repr(self) -> str:
        return (
            f"resolution={self.resolution:g}, base_resolution={self.base_resolution:g}, shift={self.shift:g}"
        )
