"""Learned-variance DDPM (Nichol & Dhariwal 2021, "Improved denoising diffusion probabilistic models").

On a discrete chain beta_1..beta_T (alpha_bar_i = prod_{j<=i} (1 - beta_j); :class:`DiscreteChain`) the
network outputs, at (x_i, i), a noise prediction eps_hat and a vector v (one entry per dimension). The reverse
step is p_theta(x_{i-1} | x_i) = N(mu_theta, Sigma_theta) with

    mu_theta = mu_tilde(x_i, x0_hat),   x0_hat = (x_i - sqrt(1 - alpha_bar_i) eps_hat) / sqrt(alpha_bar_i)
    mu_tilde(x_i, x0) = sqrt(alpha_bar_{i-1}) beta_i / (1 - alpha_bar_i) x0
                        + sqrt(1 - beta_i) (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i) x_i    (Ho et al. eq. 7)
    log Sigma_theta = v' log beta_i + (1 - v') log beta_tilde_i,   v' = (v + 1) / 2          (N&D eq. 15)
    beta_tilde_i = (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i) beta_i,

with log beta_tilde_1 (= log 0) replaced by log beta_tilde_2, as improved-diffusion's
``posterior_log_variance_clipped`` does. The paper leaves v unconstrained; here v = tanh(raw output) lies in
[-1, 1], so Sigma_theta always lies between beta_tilde_i and beta_i (N&D Fig. 1's range).

Loss (N&D eq. 16):  L_hybrid = L_simple + lambda L_vlb,  lambda = 0.001, where

    L_simple = mean_d (eps - eps_hat)^2,
    L_vlb    = T * L_{i-1} for one i ~ U{1..T} (an unbiased estimate of sum_i L_{i-1}), in bits per dimension
               (improved-diffusion's units; its "rescaled" hybrid multiplies its term by T/1000 = lambda T),
    L_{i-1}  = KL(q(x_{i-1} | x_i, x0) || p_theta(x_{i-1} | x_i))  for i > 1,
    L_0      = -log N(x0; mu_theta(x_1), Sigma_theta(x_1))  (a Gaussian decoder: the 2D data are continuous;
               N&D use the discretized decoder of 8-bit images),

and the mean inside L_vlb is computed from eps_hat.detach() (stop-gradient, N&D sec. 3.1): L_vlb trains only
the variance, L_simple only the mean.

Evaluation: the discrete NELBO (Ho et al. eq. 5) summed over all T steps, in nats per example,

    NELBO(x0) = KL(q(x_T | x0) || N(0, I)) + sum_{i=2}^T L_{i-1} + L_0  >=  -log p_theta(x0),

and ancestral sampling with the learned variance: x_{i-1} = mu_theta + Sigma_theta^{1/2} z, with no noise
on the last step (the output is mu_theta(x_1, 1), as in improved-diffusion).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from difflab.models.mlp import MLP
from difflab.processes.base import DTYPE
from difflab.processes.discrete import DiscreteChain

LOG_2PI = math.log(2.0 * math.pi)

Predictor = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""(x_i, i) -> (eps_hat, v) with i a LongTensor of step indices in 1..T."""


@dataclass(frozen=True)
class HybridLoss:
    """Per-example terms of :meth:`LearnedVarianceDDPM.hybrid_loss` (each (B,)).

    ``loss`` = l_simple + vlb_weight * l_vlb; ``l_vlb`` is T L_{i-1} in bits/dim; ``i`` the sampled steps."""

    loss: Tensor
    l_simple: Tensor
    l_vlb: Tensor
    i: Tensor


def _gauss_kl(mu1: Tensor, logvar1: Tensor, mu2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mu1, e^logvar1) || N(mu2, e^logvar2)) summed over the last dim."""
    return 0.5 * (
        logvar2 - logvar1 + (torch.exp(logvar1) + (mu1 - mu2).square()) * torch.exp(-logvar2) - 1.0
    ).sum(-1)


def _gauss_nll(x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """-log N(x; mu, diag e^logvar) summed over the last dim."""
    return 0.5 * (LOG_2PI + logvar + (x - mu).square() * torch.exp(-logvar)).sum(-1)


class LearnedVarianceDDPM(nn.Module):
    """Nichol & Dhariwal (2021) learned-variance DDPM for low-dimensional data (see the module docstring).

    Args:
        chain: the forward chain (e.g. ``ddpm_chain(500, "cosine")``).
        dim: data dimension.
        hidden, layers, embed_dim, activation: the :class:`~difflab.models.mlp.MLP` backbone, whose read-out
            is widened to 2 dim outputs (eps_hat, raw v); time enters as t = i / T.
        vlb_weight: lambda of L_hybrid (0.001 in the paper).
    """

    def __init__(
        self,
        chain: DiscreteChain,
        dim: int = 2,
        hidden: int = 128,
        layers: int = 3,
        embed_dim: int = 32,
        activation: str = "silu",
        vlb_weight: float = 0.001,
    ) -> None:
        super().__init__()
        if not isinstance(chain, DiscreteChain):
            raise ValueError(
                f"the learned-variance DDPM needs a discrete chain (process 'ddpm'), got {chain!r}"
            )
        if chain.T < 2:
            raise ValueError("the learned-variance DDPM needs a chain of T >= 2 steps")
        self.chain = chain
        self.T = chain.T
        self.dim = dim
        self.vlb_weight = float(vlb_weight)
        self.net = MLP(dim, hidden, layers, True, embed_dim, activation, out_dim=2 * dim)
        abar = chain.alpha_bar  # (T+1,), abar[0] = 1
        beta = chain.betas
        post_var = chain.posterior_variance()  # (T,), beta_tilde_1 = 0
        log_post = torch.log(torch.cat([post_var[1:2], post_var[1:]]))  # clipped at i = 1
        # index 0 of these buffers is step i = 1
        self.register_buffer("sqrt_abar", abar[1:].sqrt(), persistent=False)
        self.register_buffer("sqrt_1m_abar", (1.0 - abar[1:]).sqrt(), persistent=False)
        self.register_buffer("coef_x0", abar[:-1].sqrt() * beta / (1.0 - abar[1:]), persistent=False)
        self.register_buffer(
            "coef_xt", (1.0 - beta).sqrt() * (1.0 - abar[:-1]) / (1.0 - abar[1:]), persistent=False
        )
        self.register_buffer("log_beta", beta.log(), persistent=False)
        self.register_buffer("log_beta_tilde", log_post, persistent=False)

    # --- network -----------------------------------------------------------------------------------------
    def forward(self, x_i: Tensor, i: Tensor) -> tuple[Tensor, Tensor]:
        """(eps_hat, v) at (x_i, step i), v = tanh(raw) in [-1, 1]."""
        dtype = next(self.net.parameters()).dtype
        t = i.to(dtype) / self.T
        out = self.net(x_i.to(dtype), t).to(x_i.dtype)
        eps_hat, raw_v = out.chunk(2, dim=-1)
        return eps_hat, torch.tanh(raw_v)

    def _coef(self, name: str, i: Tensor, like: Tensor) -> Tensor:
        return getattr(self, name)[i - 1].to(like.dtype)[:, None]

    def log_variance(self, i: Tensor, v: Tensor) -> Tensor:
        """log Sigma_theta = v' log beta_i + (1 - v') log beta_tilde_i, v' = (v + 1)/2 (N&D eq. 15)."""
        frac = (v + 1.0) / 2.0
        return frac * self._coef("log_beta", i, v) + (1.0 - frac) * self._coef("log_beta_tilde", i, v)

    def x0_from_eps(self, x_i: Tensor, i: Tensor, eps_hat: Tensor) -> Tensor:
        return (x_i - self._coef("sqrt_1m_abar", i, x_i) * eps_hat) / self._coef("sqrt_abar", i, x_i)

    def posterior_mean(self, x0: Tensor, x_i: Tensor, i: Tensor) -> Tensor:
        """mu_tilde(x_i, x0) of q(x_{i-1} | x_i, x0) (Ho et al. eq. 7)."""
        return self._coef("coef_x0", i, x_i) * x0 + self._coef("coef_xt", i, x_i) * x_i

    def p_mean_logvar(self, x_i: Tensor, i: Tensor, eps_hat: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of p_theta(x_{i-1} | x_i) from the network outputs."""
        return self.posterior_mean(self.x0_from_eps(x_i, i, eps_hat), x_i, i), self.log_variance(i, v)

    # --- losses ------------------------------------------------------------------------------------------
    def vlb_terms(
        self, x0: Tensor, x_i: Tensor, i: Tensor, eps_hat: Tensor, v: Tensor, stop_grad_mean: bool = True
    ) -> Tensor:
        """L_{i-1} in nats per example, (B,): KL(q(x_{i-1}|x_i,x0) || p_theta) for i > 1, the decoder NLL
        -log N(x0; mu_theta, Sigma_theta) for i = 1. ``stop_grad_mean``: the mean uses eps_hat.detach()."""
        mean, logvar = self.p_mean_logvar(x_i, i, eps_hat.detach() if stop_grad_mean else eps_hat, v)
        true_mean = self.posterior_mean(x0, x_i, i)
        true_logvar = self._coef("log_beta_tilde", i, x0).expand_as(x0)
        kl = _gauss_kl(true_mean, true_logvar, mean, logvar)
        nll = _gauss_nll(x0, mean, logvar)
        return torch.where(i == 1, nll, kl)

    def q_sample(self, x0: Tensor, i: Tensor, eps: Tensor) -> Tensor:
        """x_i = sqrt(alpha_bar_i) x0 + sqrt(1 - alpha_bar_i) eps."""
        return self._coef("sqrt_abar", i, x0) * x0 + self._coef("sqrt_1m_abar", i, x0) * eps

    def hybrid_loss(self, x0: Tensor, generator: torch.Generator | None = None) -> HybridLoss:
        """L_hybrid = L_simple + lambda T L_{i-1} / (D ln 2) per example, i ~ U{1..T} (N&D eq. 16)."""
        B = x0.shape[0]
        i = torch.randint(1, self.T + 1, (B,), generator=generator)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        x_i = self.q_sample(x0, i, eps)
        eps_hat, v = self(x_i, i)
        l_simple = (eps - eps_hat).square().mean(-1)
        l_vlb = self.T * self.vlb_terms(x0, x_i, i, eps_hat, v) / (self.dim * math.log(2.0))
        return HybridLoss(l_simple + self.vlb_weight * l_vlb, l_simple, l_vlb, i)

    # --- evaluation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def nelbo(
        self, x0: Tensor, generator: torch.Generator | None = None, predict: Predictor | None = None
    ) -> Tensor:
        """Discrete NELBO in nats per example, (B,): prior KL + sum_{i=2}^T L_{i-1} + L_0, every term
        evaluated (one x_i draw per step). ``predict`` replaces the network (e.g. an exact denoiser)."""
        predict = predict if predict is not None else self
        x0 = x0.to(DTYPE)
        B = x0.shape[0]
        abar_T = float(self.chain.alpha_bar[-1])
        prior = 0.5 * ((1.0 - abar_T) + abar_T * x0.square() - 1.0 - math.log(1.0 - abar_T)).sum(-1)
        total = prior.clone()
        for step in range(1, self.T + 1):
            i = torch.full((B,), step, dtype=torch.long)
            eps = torch.randn(x0.shape, generator=generator, dtype=DTYPE)
            x_i = self.q_sample(x0, i, eps)
            eps_hat, v = predict(x_i, i)
            total += self.vlb_terms(x0, x_i, i, eps_hat.to(DTYPE), v.to(DTYPE))
        return total

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral sampling with the learned variance (T network calls); float64 (n, dim)."""
        x = torch.randn((n, self.dim), generator=generator, dtype=DTYPE)
        for step in range(self.T, 0, -1):
            i = torch.full((n,), step, dtype=torch.long)
            eps_hat, v = self(x, i)
            mean, logvar = self.p_mean_logvar(x, i, eps_hat.to(DTYPE), v.to(DTYPE))
            if step > 1:
                x = mean + torch.exp(0.5 * logvar) * torch.randn(x.shape, generator=generator, dtype=DTYPE)
            else:
                x = mean
        return x


__all__ = ["HybridLoss", "LearnedVarianceDDPM"]
