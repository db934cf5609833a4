"""Two-layer hierarchical VAE baseline (seed 003 study).

Generative model (top-down)::

    p(z2) = N(0, I),   p(z1 | z2) = N(m1(z2), diag e^{v1(z2)}),   p(x | z1) = N(mx(z1), diag e^{s}).

Inference, ``inference="bottom_up"`` (Kingma & Welling 2014 style, stacked)::

    q(z1 | x) = N(e1(x)),   q(z2 | z1) = N(e2(z1)).

Inference, ``inference="ladder"`` (Sønderby et al. 2016, "Ladder variational autoencoders"): a deterministic
bottom-up pass ``d1 = f1(x)``, ``d2 = f2(d1)`` gives ``q(z2|x) = N(mu_hat2, sigma_hat2^2)`` from ``d2`` and
bottom-up estimates ``(mu_hat1, sigma_hat1^2)`` from ``d1``; the top-down pass combines them with the
generative conditional ``p(z1|z2) = N(mu_p, sigma_p^2)`` by precision weighting::

    sigma_q^2 = 1 / (sigma_hat1^-2 + sigma_p^-2),
    mu_q = (mu_hat1 sigma_hat1^-2 + mu_p sigma_p^-2) sigma_q^2.

With ``linear=True`` the generative conditionals are linear-Gaussian, ``m1(z2) = A z2 + a``,
``mx(z1) = W z1 + b`` with learned constant diagonal variances ``D1``, ``Dx``; then ``x`` is Gaussian,
``N(W a + b, W (A A^T + D1) W^T + Dx)``, and :meth:`HierarchicalVAE.log_likelihood_exact` evaluates it.

All values are nats per example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from difflab.baselines.vae import (
    LOG_2PI,
    _iwae_from_log_weights,
    _randn,
    _ref,
    _split_gaussian,
    gaussian_kl,
    gaussian_log_prob,
    mlp,
    standard_normal_kl,
)

__all__ = ["HierarchicalVAE"]


class HierarchicalVAE(nn.Module):
    """VAE with two stochastic layers ``z1`` (dim ``latent_dims[0]``) and ``z2`` (dim ``latent_dims[1]``).

    ELBO (one reparameterised draw; :meth:`elbo` averages ``n_samples``)::

        bottom_up: log p(x|z1) + log p(z1|z2) + H[q(z1|x)] - KL(q(z2|z1) || p(z2)),
                   z1 ~ q(z1|x), z2 ~ q(z2|z1);
        ladder:    log p(x|z1) - KL(q(z1|x,z2) || p(z1|z2)) - KL(q(z2|x) || p(z2)),
                   z2 ~ q(z2|x), z1 ~ q(z1|x,z2);

    each an unbiased estimate of ``E_q[log p(x, z1, z2) - log q(z1, z2 | x)]`` (the Gaussian terms that can
    be are taken in closed form). :meth:`log_likelihood_is` is the IWAE bound (Burda et al. 2016).
    """

    uses_temperature = False
    supports_kl_weight = True

    def __init__(
        self,
        data_dim: int = 2,
        latent_dims: Sequence[int] = (4, 4),
        hidden: int = 128,
        layers: int = 2,
        *,
        linear: bool = False,
        inference: Literal["bottom_up", "ladder"] = "bottom_up",
        decoder_var_init: float = 1.0,
        decoder_var_min: float = 0.0,
    ) -> None:
        super().__init__()
        if len(latent_dims) != 2:
            raise ValueError("HierarchicalVAE has two stochastic layers: latent_dims=(dim_z1, dim_z2)")
        if inference not in ("bottom_up", "ladder"):
            raise ValueError(f"inference must be 'bottom_up' or 'ladder', got {inference!r}")
        self.data_dim = data_dim
        self.z1_dim, self.z2_dim = int(latent_dims[0]), int(latent_dims[1])
        self.linear = linear
        self.inference = inference
        # generative
        if linear:
            self.p_z1 = nn.Linear(self.z2_dim, self.z1_dim)
            self.p_z1_logvar = nn.Parameter(torch.zeros(self.z1_dim))
            self.p_x = nn.Linear(self.z1_dim, data_dim)
        else:
            self.p_z1 = mlp(self.z2_dim, 2 * self.z1_dim, hidden, layers)
            self.register_parameter("p_z1_logvar", None)
            self.p_x = mlp(self.z1_dim, data_dim, hidden, layers)
        self.p_x_logvar = nn.Parameter(torch.full((data_dim,), math.log(decoder_var_init)))
        self.p_x_logvar_min = math.log(decoder_var_min) if decoder_var_min > 0 else -math.inf
        # inference
        if inference == "bottom_up":
            self.q_z1 = mlp(data_dim, 2 * self.z1_dim, hidden, layers)
            self.q_z2 = mlp(self.z1_dim, 2 * self.z2_dim, hidden, layers)
        else:
            self.d1 = nn.Sequential(mlp(data_dim, hidden, hidden, max(layers - 1, 0)), nn.SiLU())
            self.d2 = nn.Sequential(mlp(hidden, hidden, hidden, max(layers - 1, 0)), nn.SiLU())
            self.q_z1 = nn.Linear(hidden, 2 * self.z1_dim)
            self.q_z2 = nn.Linear(hidden, 2 * self.z2_dim)

    # -- generative conditionals ------------------------------------------------------------------------
    @property
    def p_x_log_variance(self) -> Tensor:
        """``log Dx`` of ``p(x|z1)``, floored at ``log decoder_var_min``."""
        return self.p_x_logvar.clamp(min=self.p_x_logvar_min)

    def prior_z1(self, z2: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of ``p(z1|z2)``."""
        if self.linear:
            mean = self.p_z1(z2)
            return mean, self.p_z1_logvar.expand_as(mean)
        return _split_gaussian(self.p_z1(z2))

    def decoder_log_prob(self, x: Tensor, z1: Tensor) -> Tensor:
        """``log p(x|z1)``."""
        return gaussian_log_prob(x, self.p_x(z1), self.p_x_log_variance)

    # -- inference ---------------------------------------------------------------------------------------
    def _draw(
        self, x: Tensor, n: int, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Draw ``n`` posterior samples; returns ``z1, z2, q(z1|.), q(z2|.), p(z1|z2)`` (means, logvars)."""
        if self.inference == "bottom_up":
            m1, v1 = _split_gaussian(self.q_z1(x))
            z1 = m1 + torch.exp(0.5 * v1) * _randn((n, *m1.shape), generator, m1)
            m2, v2 = _split_gaussian(self.q_z2(z1))
            z2 = m2 + torch.exp(0.5 * v2) * _randn(m2.shape, generator, m2)
            pm, pv = self.prior_z1(z2)
            return z1, z2, (m1, v1), (m2, v2), (pm, pv)
        h1 = self.d1(x)
        h2 = self.d2(h1)
        mh1, vh1 = _split_gaussian(self.q_z1(h1))
        m2, v2 = _split_gaussian(self.q_z2(h2))
        z2 = m2 + torch.exp(0.5 * v2) * _randn((n, *m2.shape), generator, m2)
        pm, pv = self.prior_z1(z2)
        prec_hat, prec_p = torch.exp(-vh1), torch.exp(-pv)
        v1 = -torch.log(prec_hat + prec_p)
        m1 = (mh1 * prec_hat + pm * prec_p) * torch.exp(v1)
        z1 = m1 + torch.exp(0.5 * v1) * _randn(m1.shape, generator, m1)
        return z1, z2, (m1, v1), (m2, v2), (pm, pv)

    # -- objectives --------------------------------------------------------------------------------------
    def elbo(self, x: Tensor, generator: torch.Generator | None, n_samples: int = 1) -> Tensor:
        """Monte-Carlo ELBO averaged over ``n_samples`` draws, shape ``(B,)`` (nats/example)."""
        z1, _z2, (m1, v1), (m2, v2), (pm, pv) = self._draw(x, n_samples, generator)
        rec = self.decoder_log_prob(x, z1)
        if self.inference == "bottom_up":
            entropy_z1 = 0.5 * (1.0 + LOG_2PI + v1).sum(dim=-1)
            val = rec + gaussian_log_prob(z1, pm, pv) + entropy_z1 - standard_normal_kl(m2, v2)
            return val.mean(dim=0)
        val = rec - gaussian_kl(m1, v1, pm, pv)
        return val.mean(dim=0) - standard_normal_kl(m2, v2)

    def loss(
        self, x: Tensor, generator: torch.Generator | None, kl_weight: float = 1.0, free_bits: float = 0.0
    ) -> Tensor:
        """Training loss -(E log p(x|z1) - kl_weight * sum_k max(free_bits * dim z_k, KL_k)), one draw, batch
        mean; KL_1, KL_2 the batch-mean KL terms of the two layers (as in :meth:`elbo`; KL_1 a one-draw
        estimate under bottom-up inference). kl_weight = 1, free_bits = 0: the negative ELBO. Warm-up and
        free bits as :meth:`GaussianVAE.loss <difflab.baselines.vae.GaussianVAE.loss>`."""
        z1, _z2, (m1, v1), (m2, v2), (pm, pv) = self._draw(x, 1, generator)
        rec = self.decoder_log_prob(x, z1).mean()
        if self.inference == "bottom_up":
            entropy_z1 = 0.5 * (1.0 + LOG_2PI + v1).sum(dim=-1)
            kl1 = -(gaussian_log_prob(z1, pm, pv) + entropy_z1).mean()
        else:
            kl1 = gaussian_kl(m1, v1, pm, pv).mean()
        kl2 = standard_normal_kl(m2, v2).mean()
        penalty = kl1.clamp(min=free_bits * self.z1_dim) + kl2.clamp(min=free_bits * self.z2_dim)
        return -(rec - kl_weight * penalty)

    def log_likelihood_is(
        self, x: Tensor, generator: torch.Generator | None, n_importance: int = 1000, chunk_size: int = 500
    ) -> Tensor:
        """IWAE estimate ``log (1/K) sum_k p(x, z1_k, z2_k) / q(z1_k, z2_k | x)``, shape ``(B,)``."""
        log_ws = []
        for start in range(0, n_importance, chunk_size):
            k = min(chunk_size, n_importance - start)
            z1, z2, (m1, v1), (m2, v2), (pm, pv) = self._draw(x, k, generator)
            log_p = (
                self.decoder_log_prob(x, z1)
                + gaussian_log_prob(z1, pm, pv)
                + gaussian_log_prob(z2, torch.zeros_like(z2), torch.zeros_like(z2))
            )
            log_q = gaussian_log_prob(z1, m1, v1) + gaussian_log_prob(z2, m2, v2)
            log_ws.append(log_p - log_q)
        return _iwae_from_log_weights(torch.cat(log_ws, dim=0))

    def marginal_gaussian(self) -> tuple[Tensor, Tensor]:
        """Exact ``(mean, cov)`` of ``p(x)`` for ``linear=True``: ``(W a + b, W (A A^T + D1) W^T + Dx)``."""
        if not self.linear:
            raise ValueError("the marginal is Gaussian only with linear=True")
        A, a = self.p_z1.weight, self.p_z1.bias
        W, b = self.p_x.weight, self.p_x.bias
        cov_z1 = A @ A.T + torch.diag(torch.exp(self.p_z1_logvar))
        return W @ a + b, W @ cov_z1 @ W.T + torch.diag(torch.exp(self.p_x_log_variance))

    def log_likelihood_exact(self, x: Tensor) -> Tensor:
        """Exact ``log p(x)`` for linear conditionals, shape ``(B,)``."""
        mean, cov = self.marginal_gaussian()
        return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None, return_latents: bool = False
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Ancestral samples ``z2 ~ N(0, I)``, ``z1 ~ p(z1|z2)``, ``x ~ p(x|z1)``; shape ``(n, D)``."""
        ref = _ref(self)
        z2 = _randn((n, self.z2_dim), generator, ref)
        pm, pv = self.prior_z1(z2)
        z1 = pm + torch.exp(0.5 * pv) * _randn(pm.shape, generator, ref)
        mean = self.p_x(z1)
        x = mean + torch.exp(0.5 * self.p_x_log_variance) * _randn(mean.shape, generator, ref)
        return (x, z1, z2) if return_latents else x
