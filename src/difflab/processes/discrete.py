"""Discrete DDPM chains of T steps as adapters onto the continuous core (Ho et al. 2020).

A chain is given by its beta list beta_1..beta_T; alpha_bar_i = prod_{j<=i} (1 - beta_j), alpha_bar_0 = 1.
Step i sits at t_i = i / T, with alpha_{t_i}^2 = alpha_bar_i. Between grid points log alpha_bar is linearly
interpolated in t, so lambda_t is continuous and strictly decreasing and samplers/objectives need no
"discrete" branch: on the grid t_i the adapter reproduces the chain exactly.

Beta lists (seed 001, with seed 003's constant beta):
    linear     beta = linspace(1e-4, 0.02, T)
    quadratic  beta = linspace(sqrt(1e-4), sqrt(0.02), T)^2
    sigmoid    beta = sigmoid(linspace(-6, 6, T)) (0.02 - 1e-4) + 1e-4
    cosine     alpha_bar(i) = f(i)/f(0), f(i) = cos^2(((i/T + s)/(1 + s)) pi/2), s = 0.008 (Nichol & Dhariwal
               2021, eq. 17); beta_i = 1 - alpha_bar_i / alpha_bar_{i-1} clipped to [1e-4, 0.9999]: that
               clip is seed 001's definition (the default). Nichol & Dhariwal cap beta at 0.999 with no floor:
               ``beta_clip="nichol_dhariwal"`` (at T = 1000 the two differ in beta_1, 4.1e-5 vs 1e-4, and in
               beta_T, 0.999 vs 0.9999).
    constant   beta = 0.02 (seed 003, T = 500)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from difflab.processes.base import DTYPE, VarianceProcess
from difflab.registry import lookup


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    return torch.linspace(beta_start, beta_end, T, dtype=DTYPE)


def quadratic_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    return torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=DTYPE) ** 2


def sigmoid_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    return torch.sigmoid(torch.linspace(-6.0, 6.0, T, dtype=DTYPE)) * (beta_end - beta_start) + beta_start


BETA_CLIPS: dict[str, tuple[float, float]] = {"seed001": (1e-4, 0.9999), "nichol_dhariwal": (0.0, 0.999)}


def cosine_betas(T: int, s: float = 0.008, beta_clip: tuple[float, float] | str = (1e-4, 0.9999)) -> Tensor:
    """Cosine schedule betas; ``beta_clip``: (low, high) or a name of BETA_CLIPS (see the module doc)."""
    if isinstance(beta_clip, str):
        beta_clip = lookup(BETA_CLIPS, beta_clip, "cosine beta clip")
    i = torch.arange(T + 1, dtype=DTYPE)
    f = torch.cos(((i / T + s) / (1.0 + s)) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(*beta_clip)


def constant_betas(T: int, beta: float = 0.02) -> Tensor:
    return torch.full((T,), float(beta), dtype=DTYPE)


BETA_SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "linear": linear_betas,
    "quadratic": quadratic_betas,
    "sigmoid": sigmoid_betas,
    "cosine": cosine_betas,
    "constant": constant_betas,
}


class DiscreteChain(VarianceProcess):
    """A DDPM chain beta_1..beta_T viewed as a continuous VP process (see module docstring).

    Attributes: ``T``, ``betas`` (T,), ``alpha_bar`` (T+1,) with alpha_bar[0] = 1, ``grid`` t_i = i/T (T+1,).
    Default clamps: t_min = 1/T (the first step, x_1 of the chain), t_max = 1. There sigma^2/alpha^2 =
    beta_1/(1 - beta_1): 1e-4 for the default linear chain, but 0.02 for seed 003's constant beta = 0.02,
    which on z-scored ``mixture8`` (component variance 0.0196) blurs every mode (the exact model scores
    KL = 0.19 nats through the PF-ODE); clamp such chains by log-SNR (``build_process(...,
    logsnr_max=7.85)``, as ``score-sde-gmm`` does) for continuous-time likelihoods and samplers.
    """

    name = "ddpm"

    def __init__(self, betas: Tensor, schedule: str = "custom") -> None:
        betas = torch.as_tensor(betas, dtype=DTYPE)
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError("betas must be a non-empty 1-D tensor")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")
        T = betas.numel()
        super().__init__(t_min=1.0 / T, t_max=1.0)
        self.T = T
        self.schedule = schedule
        self.betas = betas
        self.log_alpha_bar = torch.cat([torch.zeros(1, dtype=DTYPE), torch.cumsum(torch.log1p(-betas), 0)])
        self.alpha_bar = torch.exp(self.log_alpha_bar)
        self.grid = torch.arange(T + 1, dtype=DTYPE) / T
        # slope of log alpha_bar on each segment [t_{i-1}, t_i]
        self._slopes = (self.log_alpha_bar[1:] - self.log_alpha_bar[:-1]) * T

    def _segment(self, t: Tensor) -> Tensor:
        return torch.clamp(torch.floor(t * self.T).long(), 0, self.T - 1)

    def log_alpha(self, t: Tensor) -> Tensor:
        i = self._segment(t)
        frac = t * self.T - i.to(DTYPE)
        return 0.5 * (self.log_alpha_bar[i] + frac * (self.log_alpha_bar[i + 1] - self.log_alpha_bar[i]))

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * self._slopes[self._segment(t)]

    def index(self, t: Tensor) -> Tensor:
        """Grid index i of t_i = i/T (t must lie on the grid up to rounding)."""
        return torch.round(torch.as_tensor(t, dtype=DTYPE) * self.T).long()

    def posterior_variance(self) -> Tensor:
        """beta_tilde_i = beta_i (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i), i = 1..T (Ho et al. eq. 7)."""
        return self.betas * (1.0 - self.alpha_bar[:-1]) / (1.0 - self.alpha_bar[1:])

    def extra_repr(self) -> str:
        return f"T={self.T}, schedule={self.schedule!r}"


def ddpm_chain(T: int = 1000, schedule: str = "linear", **kwargs: float) -> DiscreteChain:
    """Build a DDPM chain of T steps from a named beta schedule (see BETA_SCHEDULES)."""
    if int(T) < 2:  # T = 1 would give t_min = 1/T = t_max: no time range to train or sample on
        raise ValueError(f"process option T (steps of the DDPM chain) must be >= 2, got {T}")
    betas = lookup(BETA_SCHEDULES, schedule, "beta schedule")(int(T), **kwargs)
    return DiscreteChain(betas, schedule=schedule)
