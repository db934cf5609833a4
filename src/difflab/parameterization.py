"""Prediction targets x0 / eps / v / score, converted through one hub: the pair (x0_hat, eps_hat).

With x_t = alpha_t x0 + sigma_t eps (any Gaussian process, not only VP):

    x0:     x0
    eps:    eps                                     eps = (x_t - alpha x0) / sigma
    v:      v = alpha eps - sigma x0                (Salimans & Ho 2022)
            x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2)
            eps = (sigma x_t + alpha v) / (alpha^2 + sigma^2)
    score:  s = -eps / sigma                        (score of q(x_t | x0); Tweedie: E[s] = grad log p_t)

For one x_t, prediction errors obey alpha d_x0 + sigma d_eps = 0, hence in eps-space units

    |d_x0|^2 = (sigma/alpha)^2 |d_eps|^2      |d_v|^2 = ((alpha^2 + sigma^2)/alpha)^2 |d_eps|^2
    |d_s|^2  = sigma^-2 |d_eps|^2

:func:`error_scale` returns these factors m_X (|d_X|^2 = m_X |d_eps|^2). Kingma & Gao (2023), sec. 2.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch
from torch import Tensor, nn

from difflab._broadcast import batch_time, expand_like
from difflab.processes.base import Coefficients, Process
from difflab.registry import lookup

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""The one interface samplers and likelihoods see: ``x0_hat = D(x_t, t)`` with t of shape (B,)."""


class Target(str, Enum):
    """What the network predicts."""

    X0 = "x0"
    EPS = "eps"
    V = "v"
    SCORE = "score"


TARGETS: dict[str, Target] = {t.value: t for t in Target}


def parse_target(name: str | Target) -> Target:
    if isinstance(name, Target):
        return name
    return lookup(TARGETS, name, "target")


def to_hub(target: Target, out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """Convert a prediction of ``target`` into (x0_hat, eps_hat). alpha, sigma: (B,) coefficients."""
    a, s = expand_like(alpha, x_t), expand_like(sigma, x_t)
    if target is Target.X0:
        x0 = out
        eps = (x_t - a * x0) / s
    elif target is Target.EPS:
        eps = out
        x0 = (x_t - s * eps) / a
    elif target is Target.V:
        norm = a**2 + s**2
        x0 = (a * x_t - s * out) / norm
        eps = (s * x_t + a * out) / norm
    elif target is Target.SCORE:
        eps = -s * out
        x0 = (x_t + s**2 * out) / a
    else:  # pragma: no cover - exhaustive
        raise ValueError(target)
    return x0, eps


def from_hub(target: Target, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The value of ``target`` for a pair (x0, eps)."""
    a, s = expand_like(alpha, x0), expand_like(sigma, x0)
    if target is Target.X0:
        return x0
    if target is Target.EPS:
        return eps
    if target is Target.V:
        return a * eps - s * x0
    if target is Target.SCORE:
        return -eps / s
    raise ValueError(target)  # pragma: no cover


def error_scale(target: Target, c: Coefficients) -> Tensor:
    """m_X(t) with |d_X|^2 = m_X |d_eps|^2 for one x_t (float64, shape of c.t)."""
    if target is Target.EPS:
        return torch.ones_like(c.alpha)
    if target is Target.X0:
        return torch.exp(-c.logsnr)
    if target is Target.V:
        return ((c.alpha**2 + c.sigma**2) / c.alpha) ** 2
    if target is Target.SCORE:
        return c.sigma**-2
    raise ValueError(target)  # pragma: no cover


class TargetDenoiser(nn.Module):
    """Wrap a backbone ``net(x_t, t) -> prediction of target`` as a denoiser ``D(x_t, t) -> x0_hat``.

    ``predict(x_t, t)`` returns both hub quantities (x0_hat, eps_hat). Coefficients are computed in float64
    and cast to the data dtype.

    With ``input_scaling`` the network sees c_in x_t, c_in = 1 / sqrt(alpha_t^2 data_std^2 + sigma_t^2), so
    its input has unit variance at every t (Karras et al. 2022, Table 1, c_in); this matters for VE processes.
    """

    def __init__(
        self,
        net: nn.Module,
        process: Process,
        target: Target | str,
        input_scaling: bool = False,
        data_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.net = net
        self.process = process
        self.target = parse_target(target)
        self.input_scaling = input_scaling
        self.data_std = float(data_std)

    def raw(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The network's prediction in target space at (x_t, t)."""
        t = batch_time(t, x_t)
        if self.input_scaling:
            c = self.process.coefficients(t.detach().cpu())
            c_in = (c.alpha**2 * self.data_std**2 + c.sigma**2).rsqrt().to(x_t.device)
            x_t = x_t * expand_like(c_in, x_t)
        return self.net(x_t, t.to(x_t.dtype))

    def predict(self, x_t: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        t = batch_time(t, x_t)
        c = self.process.coefficients(t.detach().cpu())
        alpha, sigma = c.alpha.to(x_t.device), c.sigma.to(x_t.device)
        return to_hub(self.target, self.raw(x_t, t), x_t, alpha, sigma)

    def forward(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        return self.predict(x_t, t)[0]
