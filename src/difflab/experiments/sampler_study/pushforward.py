"""The exact density of a deterministic sampler's output: the change of variables along its own path.

A deterministic sampler (DDIM at eta = 0, the PF-ODE Euler / Heun solvers, DPM-Solver++ 2M, EDM's Heun) is a
map Phi: x_T -> x0 made of its discrete steps (and the final denoising). Its output law p_hat is the
pushforward of the prior N(0, s^2 I) (s = ``process.prior_std``), with, for x0 = Phi(x_T),

    log p_hat(x0) = log N(x_T; 0, s^2 I) - log |det d Phi / d x_T|                              (1)

(the discrete analogue of the instantaneous change of variables, Chen et al. 2018, eq. 4, applied to the
*same discretised path* the sampler takes, so no ODE-solver error enters). Since every denoiser acts on each
row of a batch separately, d Phi / d x_T is block-diagonal and D backward passes of sum_b Phi(x_T)_{b, j} give
every sample's D x D Jacobian (D = 2 here). Then, with q the data law,

    KL(p_hat || q) = E_{x0 ~ p_hat}[log p_hat(x0) - log q(x0)],                                   (2)

estimated on n sampler draws with its standard error. This is the reverse KL (the sampler's draws are
where it can be evaluated); it is exact up to Monte-Carlo error and is 0 only for a sampler whose output law
is q. Its floor is not 0 exactly: the prior differs from p_{t_max} and the path stops at t_min, both by
amounts far below the Monte-Carlo error at the log-SNR clamps used here.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from difflab.processes import Process


def pushforward_log_density(
    sampler_fn: Any,
    denoiser: Any,
    process: Process,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, log p_hat(x0)) of a deterministic sampler by eq. (1); float64, x_T of shape (n, D)."""
    x_T = x_T.detach().to(torch.float64).requires_grad_(True)
    with torch.enable_grad():
        x0 = sampler_fn(denoiser, process, x_T, grid, **options)
        dim = x0.shape[1]
        rows = [torch.autograd.grad(x0[:, j].sum(), x_T, retain_graph=j < dim - 1)[0] for j in range(dim)]
    jac = torch.stack(rows, dim=1)  # (n, D, D): jac[b, j, i] = d x0_{b, j} / d x_T_{b, i}
    _, logabsdet = torch.linalg.slogdet(jac)
    s = float(process.prior_std)
    log_prior = -0.5 * (x_T.detach() / s).pow(2).sum(1) - dim * (math.log(s) + 0.5 * math.log(2 * math.pi))
    return x0.detach(), log_prior - logabsdet


def pushforward_kl(log_p_hat: torch.Tensor, log_q: torch.Tensor) -> tuple[float, float]:
    """KL(p_hat || q) by eq. (2) and its standard error, in nats (per 2D point)."""
    diff = (log_p_hat - log_q).to(torch.float64)
    return float(diff.mean()), float(diff.std() / math.sqrt(diff.numel()))
