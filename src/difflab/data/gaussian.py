"""Gaussian and Gaussian-mixture data with closed-form diffused density, score and Bayes denoiser.

For x0 ~ sum_k pi_k N(mu_k, Sigma_k) and x_t = alpha x0 + sigma eps, the marginal is again a mixture:

    p_t(x) = sum_k pi_k N(x; alpha mu_k, C_k),        C_k = alpha^2 Sigma_k + sigma^2 I
    grad log p_t(x) = -sum_k r_k(x) C_k^{-1} (x - alpha mu_k),   r_k = posterior responsibility of k
    E[x0 | x_t = x] = sum_k r_k(x) [mu_k + alpha Sigma_k C_k^{-1} (x - alpha mu_k)]
    Cov[x0 | x_t, k] = Sigma_k - alpha^2 Sigma_k C_k^{-1} Sigma_k

With Sigma_k = U_k diag(l_k) U_k^T (eigendecomposition, done once),
C_k = U_k diag(alpha^2 l_k + sigma^2) U_k^T, so every quantity costs O(B K D^2) with no per-time matrix
inversion. This is the oracle the library is tested
against (Bishop 2006, sec. 2.3 for Gaussian conditioning; Song et al. 2021 for the score of p_t).

Degenerate components (Sigma_k positive semi-definite, some l_k = 0) are allowed with a finite
``max_logsnr``: C_k stays positive definite for sigma > 0, and every formula above holds unchanged (the gain
alpha l_k / (alpha^2 l_k + sigma^2) is 0 along a null direction). Such a mixture is the quadrature of a
continuous mixture of degenerate Gaussians (the ring and waves sets: a point on a curve plus noise along one
direction only), which is accurate only while the blur sigma / alpha spans several quadrature nodes, i.e. for
logsnr = log(alpha^2 / sigma^2) <= ``max_logsnr``; evaluating it past that (sigma = 0 included) raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from difflab._broadcast import batch_time
from difflab.processes.base import Process

LOG_2PI = math.log(2.0 * math.pi)
CHUNK_ELEMENTS = 1 << 22  # numbers per (B, K, D) piece of one evaluation block (32 MiB in float64)
FAST_FULL_MAX_DIM = 8  # full (non-axis-aligned) covariances take the matrix-product path up to this D


class GaussianMixture:
    """A mixture of K Gaussians in D dimensions, held in float64.

    Args:
        weights: (K,) mixture weights (normalised here).
        means: (K, D).
        covs: (K, D, D) covariance matrices (symmetric positive definite; positive semi-definite allowed
            when ``max_logsnr`` is finite).
        max_logsnr: the largest log(alpha^2 / sigma^2) at which the closed forms may be evaluated (module
            doc); ``inf`` (the default) for an exact mixture, which is valid at sigma = 0 too.
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor, max_logsnr: float = math.inf) -> None:
        weights = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if (
            means.ndim != 2
            or covs.shape != (*means.shape, means.shape[1])
            or weights.shape != means.shape[:1]
        ):
            raise ValueError("need weights (K,), means (K, D), covs (K, D, D)")
        if bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError("mixture weights must be non-negative with a positive sum")
        self.weights = weights / weights.sum()
        self.means = means
        self.covs = 0.5 * (covs + covs.transpose(-1, -2))
        evals, evecs = torch.linalg.eigh(self.covs)
        self.max_logsnr = float(max_logsnr)
        singular_ok = math.isfinite(self.max_logsnr)
        if bool((evals <= 0).any()) and not singular_ok:
            raise ValueError("covariances must be positive definite (or give a finite max_logsnr)")
        if singular_ok:
            tol = 1e-12 * float(evals.abs().max())
            if bool((evals < -tol).any()):
                raise ValueError("covariances must be positive semi-definite")
            evals = evals.clamp_min(0.0)
        # axis-aligned components (isotropic ones, or those after a per-dimension z-scoring): the identity
        # is their eigenbasis, and at one (alpha, sigma) for the whole batch every quantity below is a
        # product of (B, K) and (K, D) matrices (the fast path of _fast_parts)
        off_diagonal = self.covs - torch.diag_embed(torch.diagonal(self.covs, dim1=-2, dim2=-1))
        self._diagonal = bool((off_diagonal == 0).all())
        if self._diagonal:
            evals = torch.diagonal(self.covs, dim1=-2, dim2=-1).clone()
            evecs = torch.eye(self.dim, dtype=torch.float64).expand_as(self.covs).clone()
        self.evals = evals  # (K, D)
        self.evecs = evecs  # (K, D, D), columns are eigenvectors

    # --- construction helpers ------------------------------------------------------------------------
    @classmethod
    def isotropic(cls, weights: Tensor, means: Tensor, std: float | Tensor) -> GaussianMixture:
        """Components N(mu_k, std_k^2 I); ``std`` is a standard deviation (not a variance)."""
        means = torch.as_tensor(means, dtype=torch.float64)
        K, D = means.shape
        std = torch.as_tensor(std, dtype=torch.float64).expand(K)
        covs = (std**2)[:, None, None] * torch.eye(D, dtype=torch.float64)
        return cls(torch.as_tensor(weights, dtype=torch.float64), means, covs)

    @classmethod
    def gaussian(cls, mean: Tensor, cov: Tensor) -> GaussianMixture:
        """A single Gaussian N(mean, cov)."""
        mean = torch.as_tensor(mean, dtype=torch.float64)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        return cls(torch.ones(1, dtype=torch.float64), mean[None], cov[None])

    def affine(self, shift: Tensor, scale: Tensor) -> GaussianMixture:
        """The law of (x - shift) / scale (per-dimension scale), e.g. for z-scoring.

        A blur sigma in the new coordinates is sigma * scale_d along dimension d in the old ones, at least
        sigma * min(scale); so ``max_logsnr`` moves by 2 log min(scale) (the conservative direction)."""
        shift = torch.as_tensor(shift, dtype=torch.float64)
        scale = torch.as_tensor(scale, dtype=torch.float64).expand(self.dim)
        means = (self.means - shift) / scale
        covs = self.covs / (scale[:, None] * scale[None, :])
        max_logsnr = self.max_logsnr + 2.0 * math.log(float(scale.abs().min()))
        return GaussianMixture(self.weights, means, covs, max_logsnr=max_logsnr)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    def mean(self) -> Tensor:
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        mu = self.mean()
        second = torch.einsum(
            "k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None]
        )
        return second - mu[:, None] * mu[None, :]

    # --- sampling ------------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        """n i.i.d. samples (float64); with ``return_labels`` also the component index of each."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        x = self.means[k] + torch.einsum("nij,nj->ni", self.evecs[k], self.evals[k].sqrt() * z)
        return (x, k) if return_labels else x

    # --- closed forms at (alpha, sigma) --------------------------------------------------------------
    def _parts(self, x: Tensor, alpha: Tensor, sigma: Tensor):
        """Per-component pieces: coordinates of (x - alpha mu_k) in the eigenbasis and C_k's eigenvalues."""
        x = x.to(torch.float64)
        alpha = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1, 1).expand(x.shape[0], 1, 1)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1).expand(x.shape[0], 1, 1)
        diff = x[:, None, :] - alpha * self.means[None]  # (B, K, D)
        proj = torch.einsum("kdj,bkd->bkj", self.evecs, diff)  # U_k^T diff
        c_evals = alpha**2 * self.evals[None] + sigma**2  # (B, K, D)
        log_comp = (
            -0.5 * ((proj**2 / c_evals).sum(-1) + torch.log(c_evals).sum(-1) + self.dim * LOG_2PI)
            + torch.log(self.weights)[None]
        )
        return proj, c_evals, log_comp, alpha, sigma

    def _fast_parts(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float):
        """The fast path at one (alpha, sigma) for the whole batch (None otherwise, or for full covariances
        in more than ``FAST_FULL_MAX_DIM`` dimensions): every per-component quadratic form is one matrix
        product and no (B, K, D) array is made.

        With m_k = alpha mu_k and P_k = C_k^{-1},
        (x - m_k)^T P_k (x - m_k) = <x x^T, P_k> - 2 x^T P_k m_k + m_k^T P_k m_k, so
        log_comp = -1/2 [x x^T, x, 1] [P_k, -2 P_k m_k, b_k]^T,
        b_k = m_k^T P_k m_k + log det C_k + D log 2 pi - 2 log pi_k.
        Axis-aligned components (isotropic ones, or those after a per-dimension z-scoring) keep only the
        diagonal of P_k (D numbers instead of D^2). Returns (log_comp (B, K), prec, prec_m, a, c): ``prec`` is
        P_k as (K, D) diagonals or (K, D * D) flattened matrices, ``prec_m`` = P_k m_k (K, D); see
        :meth:`_times`; ``c`` (K, D) the eigenvalues alpha^2 l_k + sigma^2 of C_k."""
        if not self._diagonal and self.dim > FAST_FULL_MAX_DIM:
            return None
        a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1)
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        if a.numel() > 1 and not (bool((a == a[0]).all()) and bool((s == s[0]).all())):
            return None
        a, s = a[0], s[0]
        x = x.to(torch.float64)
        c = a**2 * self.evals + s**2  # (K, D): C_k's eigenvalues
        m = a * self.means
        prec = self._from_eigenvalues(1.0 / c)
        prec_m = self._times(prec, m)
        quad = x * x if self._diagonal else (x[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)
        const = (m * prec_m).sum(-1) + torch.log(c).sum(-1)
        const = const + self.dim * LOG_2PI - 2.0 * torch.log(self.weights)
        features = torch.cat([quad, x, torch.ones_like(x[:, :1])], dim=1)
        coefs = torch.cat([prec, -2.0 * prec_m, const[:, None]], dim=1)
        log_comp = (features @ coefs.T).mul_(-0.5)
        return log_comp, prec, prec_m, a, c

    def _from_eigenvalues(self, v: Tensor) -> Tensor:
        """U_k diag(v_k) U_k^T for v (K, D): the (K, D) diagonals themselves for axis-aligned components,
        else (K, D * D) flattened matrices (the layout :meth:`_times` reads)."""
        if self._diagonal:
            return v
        return torch.einsum("kij,kj,klj->kil", self.evecs, v, self.evecs).reshape(self.num_components, -1)

    def _times(self, rows: Tensor, x: Tensor) -> Tensor:
        """Row-wise matrix times vector: ``rows`` (N, D) diagonals or (N, D * D) flattened matrices."""
        if self._diagonal:
            return rows * x
        return torch.einsum("bij,bj->bi", rows.reshape(-1, self.dim, self.dim), x)

    def _chunked(self, fn: Callable[[Tensor, Tensor, Tensor], Tensor], x: Tensor, alpha, sigma) -> Tensor:
        """fn(x, alpha, sigma) on row blocks of x whose (B, K, D) pieces hold at most CHUNK_ELEMENTS
        numbers (a 4096-component law on a 600 x 600 grid would otherwise need 24 GB); alpha and sigma
        are scalars or (B,) and are split with x."""
        x = torch.as_tensor(x, dtype=torch.float64)
        self._check_logsnr(alpha, sigma)
        rows = max(1, CHUNK_ELEMENTS // (self.num_components * self.dim))
        if x.shape[0] <= rows:
            return fn(x, alpha, sigma)
        alpha = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        return torch.cat(
            [
                fn(x[i : i + rows], alpha[i : i + rows], sigma[i : i + rows])
                for i in range(0, x.shape[0], rows)
            ]
        )

    def _check_logsnr(self, alpha: Tensor | float, sigma: Tensor | float) -> None:
        """Raise if some (alpha, sigma) lies past ``max_logsnr`` (a quadrature mixture's validity)."""
        if math.isinf(self.max_logsnr):
            return
        a = torch.as_tensor(alpha, dtype=torch.float64).abs()
        s = torch.as_tensor(sigma, dtype=torch.float64)
        logsnr = 2.0 * (torch.log(a) - torch.log(s))  # inf at sigma = 0
        worst = float(logsnr.max())
        if worst > self.max_logsnr + 1e-9:
            raise ValueError(
                f"this mixture is a quadrature valid for logsnr <= {self.max_logsnr:.4g}; asked at logsnr "
                f"{worst:.4g} (sigma = 0 is the data law itself: use its exact density)"
            )

    def log_prob_at(self, x: Tensor, alpha: Tensor | float = 1.0, sigma: Tensor | float = 0.0) -> Tensor:
        """log p_t(x) for p_t the law of alpha x0 + sigma eps; alpha, sigma scalars or (B,)."""
        return self._chunked(lambda x, a, s: torch.logsumexp(self._log_comp(x, a, s), dim=1), x, alpha, sigma)

    def responsibilities_at(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        return self._chunked(lambda x, a, s: torch.softmax(self._log_comp(x, a, s), dim=1), x, alpha, sigma)

    def _log_comp(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """log pi_k + log N(x; alpha mu_k, C_k), (B, K)."""
        fast = self._fast_parts(x, alpha, sigma)
        return fast[0] if fast is not None else self._parts(x, alpha, sigma)[2]

    def score_at(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """grad_x log p_t(x)."""

        def score(x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
            fast = self._fast_parts(x, alpha, sigma)
            if fast is not None:  # -sum_k r_k P_k (x - m_k) = sum_k r_k P_k m_k - (sum_k r_k P_k) x
                log_comp, prec, prec_m, _, _ = fast
                r = torch.softmax(log_comp, dim=1)
                both = r @ torch.cat([prec_m, prec], dim=1)
                return both[:, : self.dim] - self._times(both[:, self.dim :], x.to(torch.float64))
            proj, c_evals, log_comp, _, _ = self._parts(x, alpha, sigma)
            r = torch.softmax(log_comp, dim=1)
            per_comp = -torch.einsum("kdj,bkj->bkd", self.evecs, proj / c_evals)  # -C_k^{-1}(x - alpha mu_k)
            return (r[..., None] * per_comp).sum(1)

        return self._chunked(score, x, alpha, sigma)

    def denoise_at(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """Bayes denoiser E[x0 | alpha x0 + sigma eps = x]."""

        def denoise(x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
            fast = self._fast_parts(x, alpha, sigma)
            if fast is not None:  # sum_k r_k [mu_k + G_k (x - m_k)], G_k = alpha Sigma_k C_k^{-1}
                log_comp, _, _, a, c = fast
                r = torch.softmax(log_comp, dim=1)
                gain = self._from_eigenvalues(a * self.evals / c)  # G_k = alpha Sigma_k C_k^{-1}
                both = r @ torch.cat([self.means - self._times(gain, a * self.means), gain], dim=1)
                return both[:, : self.dim] + self._times(both[:, self.dim :], x.to(torch.float64))
            proj, c_evals, log_comp, alpha_, _ = self._parts(x, alpha, sigma)
            r = torch.softmax(log_comp, dim=1)
            gain = alpha_ * self.evals[None] / c_evals  # alpha Sigma C^{-1} in the eigenbasis
            per_comp = self.means[None] + torch.einsum("kdj,bkj->bkd", self.evecs, gain * proj)
            return (r[..., None] * per_comp).sum(1)

        return self._chunked(denoise, x, alpha, sigma)

    def mmse_at(self, alpha: float, sigma: float) -> float:
        """E|x0 - E[x0|x_t]|^2 in closed form; exact for a single Gaussian (K = 1) only."""
        if self.num_components != 1:
            raise ValueError("the MMSE has a closed form only for a single Gaussian")
        lam = self.evals[0]
        return float((lam * sigma**2 / (alpha**2 * lam + sigma**2)).sum())

    # --- with a process ------------------------------------------------------------------------------
    def _coefs(self, x: Tensor, t: Tensor | float, process: Process) -> tuple[Tensor, Tensor]:
        c = process.coefficients(batch_time(t, x).cpu())
        return c.alpha.to(x.device), c.sigma.to(x.device)

    def log_prob(self, x: Tensor, t: Tensor | float | None = None, process: Process | None = None) -> Tensor:
        """log p_0(x), or log p_t(x) under ``process`` when t is given."""
        if t is None:
            return self.log_prob_at(x)
        if process is None:
            raise ValueError("log_prob at time t needs a process")
        return self.log_prob_at(x, *self._coefs(x, t, process))

    def score(self, x: Tensor, t: Tensor | float, process: Process) -> Tensor:
        return self.score_at(x, *self._coefs(x, t, process))

    def denoiser(self, process: Process) -> Callable[[Tensor, Tensor], Tensor]:
        """The exact denoiser D(x_t, t) = E[x0 | x_t] under ``process``, in the dtype of x_t."""

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            return self.denoise_at(x_t, *self._coefs(x_t, t, process)).to(x_t.dtype)

        return denoise


def eight_mode_mixture(radius: float = 10.0, std: float = 1.0, k: int = 8) -> GaussianMixture:
    """Seed 003's mixture with its std convention made explicit: k equal-weight modes at
    radius (cos 2 pi j/k, sin 2 pi j/k), each N(mu_j, std^2 I) (``std`` is a standard deviation)."""
    theta = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    means = radius * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    return GaussianMixture.isotropic(torch.ones(k), means, std)
