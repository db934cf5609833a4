"""VAE-family baselines for the score-SDE study (seed 003): categorical, Gaussian, training loop, diagnostics.
(Over 400 lines: both VAEs share the Gaussian helpers and the training loop here; split when next changed.)

All log-likelihoods and ELBOs are in **nats per example** (summed over the data dimensions); use
:func:`nats_per_dim` / :func:`bits_per_dim` to normalise.

Models
------
* :class:`CategoricalVAE` -- a discrete latent ``c in {0..K-1}`` with the Gumbel-softmax relaxation for
  training (Jang et al. 2017, "Categorical reparameterization with Gumbel-softmax"; Maddison et al. 2017,
  "The Concrete distribution"). With a per-category Gaussian decoder the model is a *Gaussian mixture*, so
  ``log p(x) = log sum_c p(c) N(x; mu_c, diag sigma_c^2)`` and the ELBO
  ``sum_c q(c|x) log p(x|c) - KL(q(c|x) || p(c))`` are both exact (enumeration over ``K``).
* :class:`GaussianVAE` -- the standard VAE (Kingma & Welling 2014, "Auto-encoding variational Bayes"):
  ``p(z) = N(0, I)``, ``q(z|x) = N(mu_phi(x), diag sigma_phi(x)^2)``, ``p(x|z) = N(mu_theta(z), diag s^2)``
  with a learned per-dimension decoder variance. ``log_likelihood_is`` is the importance-weighted bound
  (IWAE; Burda et al. 2016, "Importance weighted autoencoders")
  ``L_K = E[log (1/K) sum_k p(x, z_k) / q(z_k|x)]``, ``ELBO = L_1 <= L_K <= log p(x)``, ``L_K -> log p(x)``.
  With ``linear_decoder=True`` (``mu_theta(z) = W z + b``) the marginal is ``N(b, W W^T + diag s^2)`` and
  :meth:`GaussianVAE.log_likelihood_exact` evaluates it.
* :class:`~difflab.baselines.hvae.HierarchicalVAE` (in ``hvae.py``) -- two stochastic layers.

Diagnostics
-----------
:func:`contingency_table` and :func:`mode_category_purity` answer seed 003's question "does one mixture
mode map to one category?".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "CategoricalVAE",
    "GaussianVAE",
    "bits_per_dim",
    "contingency_table",
    "exponential_tau_schedule",
    "gaussian_kl",
    "gaussian_log_prob",
    "gumbel_softmax_sample",
    "mode_category_purity",
    "nats_per_dim",
    "standard_normal_kl",
    "train_vae",
]

LOG_2PI = math.log(2.0 * math.pi)
# Bounds on network-predicted log-variances (keeps exp() finite early in training).
LOGVAR_MIN, LOGVAR_MAX = -14.0, 8.0


# ----------------------------------------------------------------------------------------------------------
# Small numerical helpers
# ----------------------------------------------------------------------------------------------------------
def gaussian_log_prob(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """``log N(x; mean, diag exp(logvar))`` summed over the last dimension (broadcasting)."""
    return -0.5 * (LOG_2PI + logvar + (x - mean).square() * torch.exp(-logvar)).sum(dim=-1)


def standard_normal_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mean, diag e^logvar) || N(0, I)) = 1/2 sum (e^logvar + mean^2 - 1 - logvar)`` (last dim)."""
    return 0.5 * (torch.exp(logvar) + mean.square() - 1.0 - logvar).sum(dim=-1)


def gaussian_kl(mean_q: Tensor, logvar_q: Tensor, mean_p: Tensor, logvar_p: Tensor) -> Tensor:
    """``KL(N(mq, diag e^lq) || N(mp, diag e^lp)) = 1/2 sum (lp - lq + (e^lq + (mq - mp)^2) e^-lp - 1)``."""
    return 0.5 * (
        logvar_p - logvar_q + (torch.exp(logvar_q) + (mean_q - mean_p).square()) * torch.exp(-logvar_p) - 1.0
    ).sum(dim=-1)


def nats_per_dim(nats_per_example: Tensor | float, data_dim: int) -> Tensor | float:
    """Convert nats per example (sum over ``data_dim`` dims) to nats per dimension."""
    return nats_per_example / data_dim


def bits_per_dim(nats_per_example: Tensor | float, data_dim: int) -> Tensor | float:
    """Convert nats per example to bits per dimension: ``nats / (data_dim * ln 2)``."""
    return nats_per_example / (data_dim * math.log(2.0))


def mlp(in_dim: int, out_dim: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` (SiLU), then a linear read-out (``layers=0``: linear)."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.SiLU()]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


def _ref(module: nn.Module) -> Tensor:
    """A parameter of ``module`` (for its dtype and device)."""
    return next(module.parameters())


def _randn(shape: Sequence[int], generator: torch.Generator | None, like: Tensor) -> Tensor:
    return torch.randn(tuple(shape), generator=generator, dtype=like.dtype, device=like.device)


def _split_gaussian(h: Tensor) -> tuple[Tensor, Tensor]:
    """Split a network output ``(..., 2L)`` into ``(mean, clamped logvar)``."""
    mean, logvar = h.chunk(2, dim=-1)
    return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


def _iwae_from_log_weights(log_w: Tensor) -> Tensor:
    """``log (1/K) sum_k exp(log_w[k])`` over the leading dimension."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


# ----------------------------------------------------------------------------------------------------------
# Gumbel-softmax
# ----------------------------------------------------------------------------------------------------------
def gumbel_softmax_sample(
    logits: Tensor, tau: float, generator: torch.Generator | None, hard: bool = False
) -> Tensor:
    """Relaxed one-hot sample from ``Categorical(softmax(logits))`` over the last dimension.

    ``y = softmax((logits + g) / tau)`` with i.i.d. ``g = -log(-log u)``, ``u ~ U(0, 1)`` (Gumbel(0, 1)
    noise); ``argmax(logits + g)`` is an exact sample of the categorical (Gumbel-max trick), and as
    ``tau -> 0`` ``y`` tends to that one-hot vector (Jang et al. 2017; Maddison et al. 2017).

    With ``hard=True`` the forward value is the exact one-hot ``onehot(argmax y)`` and the gradient is that
    of the relaxed ``y`` (straight-through estimator: ``y_hard - y.detach() + y``).
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    tiny = torch.finfo(logits.dtype).tiny
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    g = -torch.log((-torch.log(u.clamp_min(tiny))).clamp_min(tiny))
    y = torch.softmax((logits + g) / tau, dim=-1)
    if not hard:
        return y
    y_hard = torch.nn.functional.one_hot(y.argmax(dim=-1), y.shape[-1]).to(y.dtype)
    return y_hard - y.detach() + y


def exponential_tau_schedule(tau_start: float, tau_end: float, steps: int) -> Callable[[int], float]:
    """``tau(step) = tau_start * (tau_end / tau_start) ** (step / (steps - 1))`` (clamped at ``tau_end``)."""
    if tau_start <= 0 or tau_end <= 0:
        raise ValueError("temperatures must be positive")
    denom = max(steps - 1, 1)

    def schedule(step: int) -> float:
        frac = min(max(step / denom, 0.0), 1.0)
        return float(tau_start * (tau_end / tau_start) ** frac)

    return schedule


# ----------------------------------------------------------------------------------------------------------
# Categorical VAE
# ----------------------------------------------------------------------------------------------------------
class CategoricalVAE(nn.Module):
    """VAE with one ``K``-way categorical latent (Gumbel-softmax relaxation for training).

    * encoder ``q(c|x) = Cat(softmax(f_phi(x)))``, ``f_phi`` an MLP;
    * prior ``p(c)`` uniform, or ``softmax(prior_logits)`` with ``learn_prior=True``;
    * decoder ``p(x|c) = N(mu_c, diag sigma_c^2)``. ``decoder="table"``: per-category learnable
      ``mu_c``, ``log sigma_c^2``; for a relaxed one-hot ``y`` the decoder uses ``y @ mu`` and
      ``y @ log sigma^2`` (the linear extension of the table). ``decoder="mlp"``:
      ``(mu, log sigma^2) = g_theta(y)``, evaluated at exact one-hot vectors for the exact quantities.

    Training objective (per example, :meth:`loss` averages its negative):
    ``ELBO_tau(x) = log p(x | y) - KL(q(c|x) || p(c))``, ``y ~ GumbelSoftmax(f_phi(x), tau)``, with the
    KL computed exactly, ``KL = sum_c q_c (log q_c - log p_c)``.

    Reported figure, :meth:`elbo_exact`: ``sum_c q(c|x) log p(x|c) - KL(q(c|x) || p(c))``.
    Exact marginal, :meth:`log_likelihood`: ``log sum_c p(c) p(x|c)``; the gap is
    ``log p(x) - ELBO(x) = KL(q(c|x) || p(c|x)) >= 0``.
    """

    uses_temperature = True

    def __init__(
        self,
        data_dim: int = 2,
        num_categories: int = 8,
        hidden: int = 128,
        layers: int = 3,
        tau: float = 1.0,
        *,
        learn_prior: bool = False,
        decoder: Literal["table", "mlp"] = "table",
        hard: bool = False,
    ) -> None:
        super().__init__()
        if decoder not in ("table", "mlp"):
            raise ValueError(f"decoder must be 'table' or 'mlp', got {decoder!r}")
        self.data_dim = data_dim
        self.num_categories = num_categories
        self.tau = float(tau)
        self.hard = hard
        self.decoder_kind = decoder
        self.encoder = mlp(data_dim, num_categories, hidden, layers)
        self.prior_logits = nn.Parameter(torch.zeros(num_categories), requires_grad=learn_prior)
        if decoder == "table":
            self.means = nn.Parameter(torch.randn(num_categories, data_dim))
            self.logvars = nn.Parameter(torch.zeros(num_categories, data_dim))
            self.decoder_net: nn.Module | None = None
        else:
            self.register_parameter("means", None)
            self.register_parameter("logvars", None)
            self.decoder_net = mlp(num_categories, 2 * data_dim, hidden, layers)

    # -- distributions ---------------------------------------------------------------------------------
    def encoder_logits(self, x: Tensor) -> Tensor:
        """Unnormalised logits of ``q(c|x)``, shape ``(B, K)``."""
        return self.encoder(x)

    def log_prior(self) -> Tensor:
        """``log p(c)``, shape ``(K,)``."""
        return torch.log_softmax(self.prior_logits, dim=-1)

    def decode(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder mean and log-variance for (relaxed) one-hot codes ``y`` of shape ``(..., K)``."""
        if self.decoder_net is None:
            return y @ self.means, y @ self.logvars
        return _split_gaussian(self.decoder_net(y))

    def component_params(self) -> tuple[Tensor, Tensor]:
        """``(mu_c, log sigma_c^2)`` for every category, each of shape ``(K, D)``."""
        eye = torch.eye(self.num_categories, dtype=_ref(self).dtype, device=_ref(self).device)
        return self.decode(eye)

    def component_log_probs(self, x: Tensor) -> Tensor:
        """``log p(x|c)`` for all categories, shape ``(B, K)``."""
        mean, logvar = self.component_params()
        return gaussian_log_prob(x.unsqueeze(-2), mean, logvar)

    # -- objectives --------------------------------------------------------------------------------------
    def kl_categorical(self, logits: Tensor) -> Tensor:
        """Exact ``KL(q(c|x) || p(c)) = sum_c q_c (log q_c - log p_c)``, shape ``(B,)``."""
        log_q = torch.log_softmax(logits, dim=-1)
        return (log_q.exp() * (log_q - self.log_prior())).sum(dim=-1)

    def elbo_relaxed(self, x: Tensor, generator: torch.Generator | None, tau: float | None = None) -> Tensor:
        """Single-sample relaxed ELBO ``log p(x|y) - KL(q||p)``, ``y ~ GumbelSoftmax``, shape ``(B,)``."""
        logits = self.encoder_logits(x)
        y = gumbel_softmax_sample(logits, self.tau if tau is None else tau, generator, hard=self.hard)
        mean, logvar = self.decode(y)
        return gaussian_log_prob(x, mean, logvar) - self.kl_categorical(logits)

    def loss(self, x: Tensor, generator: torch.Generator | None, tau: float | None = None) -> Tensor:
        """Training loss: the mean negative relaxed ELBO (scalar)."""
        return -self.elbo_relaxed(x, generator, tau).mean()

    def elbo_exact(self, x: Tensor) -> Tensor:
        """Exact-enumeration ELBO ``sum_c q(c|x) log p(x|c) - KL(q(c|x) || p(c))``, shape ``(B,)``."""
        logits = self.encoder_logits(x)
        q = torch.softmax(logits, dim=-1)
        return (q * self.component_log_probs(x)).sum(dim=-1) - self.kl_categorical(logits)

    def log_likelihood(self, x: Tensor) -> Tensor:
        """Exact ``log p(x) = logsumexp_c [log p(c) + log p(x|c)]`` (the model is a mixture), ``(B,)``."""
        return torch.logsumexp(self.log_prior() + self.component_log_probs(x), dim=-1)

    def posterior_probs(self, x: Tensor) -> Tensor:
        """Exact model posterior ``p(c|x)``, shape ``(B, K)`` (compare with the encoder's ``q(c|x)``)."""
        return torch.softmax(self.log_prior() + self.component_log_probs(x), dim=-1)

    # -- sampling / assignment ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None, return_categories: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Ancestral samples ``c ~ p(c)``, ``x ~ N(mu_c, diag sigma_c^2)``; shape ``(n, D)``."""
        probs = self.log_prior().exp().expand(n, -1)
        c = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        mean, logvar = self.component_params()
        x = mean[c] + torch.exp(0.5 * logvar[c]) * _randn((n, self.data_dim), generator, mean)
        return (x, c) if return_categories else x

    @torch.no_grad()
    def assign(self, x: Tensor, use_posterior: bool = False) -> Tensor:
        """``argmax_c q(c|x)`` (or of the exact posterior ``p(c|x)``), a LongTensor of shape ``(B,)``."""
        if use_posterior:
            return self.posterior_probs(x).argmax(dim=-1)
        return self.encoder_logits(x).argmax(dim=-1)

    @torch.no_grad()
    def init_means_from_data(self, x: Tensor, generator: torch.Generator | None) -> None:
        """Set ``mu_c`` to ``K`` distinct random training points, ``log sigma_c^2`` to the data log-variance.

        A common remedy for the component collapse seed 003 reported (table decoder only).
        """
        if self.means is None:
            raise ValueError("init_means_from_data needs decoder='table'")
        idx = torch.randperm(x.shape[0], generator=generator, device=x.device)[: self.num_categories]
        self.means.copy_(x[idx].to(self.means))
        self.logvars.copy_(torch.log(x.var(dim=0)).to(self.logvars).expand_as(self.logvars))


# ----------------------------------------------------------------------------------------------------------
# Gaussian VAE
# ----------------------------------------------------------------------------------------------------------
class GaussianVAE(nn.Module):
    """Standard Gaussian VAE (Kingma & Welling 2014).

    ``p(z) = N(0, I_L)``, ``p(x|z) = N(mu_theta(z), diag exp(s))`` with a learned per-dimension log-variance
    ``s`` (initialised at ``log decoder_var_init``, floored at ``log decoder_var_min``); ``mu_theta`` an
    MLP, or ``W z + b`` with ``linear_decoder=True`` (then ``p(x)`` is the Gaussian
    ``N(b, W W^T + diag e^s)``, the probabilistic-PCA marginal). ``q(z|x) = N(m(x), diag e^{v(x)})``.

    ``ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))`` with reparameterised ``z = m + e^{v/2} eps`` and
    the KL in closed form.
    """

    uses_temperature = False
    supports_kl_weight = True

    def __init__(
        self,
        data_dim: int = 2,
        latent_dim: int = 2,
        hidden: int = 128,
        layers: int = 3,
        *,
        linear_decoder: bool = False,
        decoder_var_init: float = 1.0,
        decoder_var_min: float = 0.0,
    ) -> None:
        super().__init__()
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.linear_decoder = linear_decoder
        self.decoder_logvar_min = math.log(decoder_var_min) if decoder_var_min > 0 else -math.inf
        self.encoder = mlp(data_dim, 2 * latent_dim, hidden, layers)
        self.decoder = (
            nn.Linear(latent_dim, data_dim) if linear_decoder else mlp(latent_dim, data_dim, hidden, layers)
        )
        self.decoder_logvar = nn.Parameter(torch.full((data_dim,), math.log(decoder_var_init)))

    @property
    def decoder_log_variance(self) -> Tensor:
        """``s`` of ``p(x|z)``, floored at ``log decoder_var_min`` (a floor keeps the decoder from shrinking
        onto training points; the gradient below the floor is zero)."""
        return self.decoder_logvar.clamp(min=self.decoder_logvar_min)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of ``q(z|x)``, each ``(B, L)``."""
        return _split_gaussian(self.encoder(x))

    def decoder_log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x|z)`` (broadcast over leading sample dims of ``z``)."""
        return gaussian_log_prob(x, self.decoder(z), self.decoder_log_variance)

    def elbo(self, x: Tensor, generator: torch.Generator | None, n_samples: int = 1) -> Tensor:
        """Monte-Carlo ELBO, mean over ``n_samples`` reparameterised draws, shape ``(B,)`` (nats/example)."""
        mean, logvar = self.encode(x)
        eps = _randn((n_samples, *mean.shape), generator, mean)
        z = mean + torch.exp(0.5 * logvar) * eps
        return self.decoder_log_prob(x, z).mean(dim=0) - standard_normal_kl(mean, logvar)

    def loss(
        self, x: Tensor, generator: torch.Generator | None, kl_weight: float = 1.0, free_bits: float = 0.0
    ) -> Tensor:
        """Training loss: -(E_q log p(x|z) - kl_weight * sum_l max(free_bits, KL_l)), one reparameterised
        draw, batch mean; KL_l the batch-mean KL of latent l. kl_weight = 1, free_bits = 0 is the negative
        ELBO; kl_weight < 1 is KL warm-up (Bowman et al. 2016, Sønderby et al. 2016); free_bits lambda > 0
        stops pushing a latent's KL below lambda nats (Kingma et al. 2016, eq. 15) -- both against posterior
        collapse. Evaluation always uses the true ELBO / IWAE bound."""
        mean, logvar = self.encode(x)
        z = mean + torch.exp(0.5 * logvar) * _randn(mean.shape, generator, mean)
        kl = (0.5 * (torch.exp(logvar) + mean.square() - 1.0 - logvar)).mean(dim=0)  # (L,)
        return -(self.decoder_log_prob(x, z).mean() - kl_weight * kl.clamp(min=free_bits).sum())

    def log_likelihood_is(
        self, x: Tensor, generator: torch.Generator | None, n_importance: int = 1000, chunk_size: int = 500
    ) -> Tensor:
        """Importance-weighted estimate (IWAE bound, Burda et al. 2016), shape ``(B,)``.

        ``log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x)``, ``z_k ~ q(z|x)``; evaluated in chunks of samples.
        """
        mean, logvar = self.encode(x)
        log_ws = []
        for start in range(0, n_importance, chunk_size):
            k = min(chunk_size, n_importance - start)
            eps = _randn((k, *mean.shape), generator, mean)
            z = mean + torch.exp(0.5 * logvar) * eps
            log_pz = gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
            log_qz = gaussian_log_prob(z, mean, logvar)
            log_ws.append(self.decoder_log_prob(x, z) + log_pz - log_qz)
        return _iwae_from_log_weights(torch.cat(log_ws, dim=0))

    def marginal_gaussian(self) -> tuple[Tensor, Tensor]:
        """``(b, W W^T + diag e^s)``, the exact marginal of ``x`` (``linear_decoder=True`` only)."""
        if not self.linear_decoder:
            raise ValueError("the marginal is Gaussian only with linear_decoder=True")
        W, b = self.decoder.weight, self.decoder.bias
        return b, W @ W.T + torch.diag(torch.exp(self.decoder_log_variance))

    def log_likelihood_exact(self, x: Tensor) -> Tensor:
        """Exact ``log p(x)`` for the linear decoder, shape ``(B,)``."""
        mean, cov = self.marginal_gaussian()
        return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        """Ancestral samples ``z ~ N(0, I)``, ``x ~ p(x|z)``; shape ``(n, D)``."""
        ref = _ref(self)
        z = _randn((n, self.latent_dim), generator, ref)
        mean = self.decoder(z)
        return mean + torch.exp(0.5 * self.decoder_log_variance) * _randn(mean.shape, generator, ref)


# ----------------------------------------------------------------------------------------------------------
# Mode x category diagnostics
# ----------------------------------------------------------------------------------------------------------
def contingency_table(true_modes: Tensor, categories: Tensor, K_modes: int, K_cats: int) -> Tensor:
    """Counts ``T[m, c] = #{i : true_modes[i] = m, categories[i] = c}``; LongTensor ``(K_modes, K_cats)``."""
    true_modes = true_modes.reshape(-1).long()
    categories = categories.reshape(-1).long()
    if true_modes.shape != categories.shape:
        raise ValueError("true_modes and categories must have the same number of elements")
    if true_modes.numel() and (
        true_modes.min() < 0
        or true_modes.max() >= K_modes
        or categories.min() < 0
        or categories.max() >= K_cats
    ):
        raise ValueError("labels out of range")
    flat = torch.bincount(true_modes * K_cats + categories, minlength=K_modes * K_cats)
    return flat.reshape(K_modes, K_cats)


def mode_category_purity(table: Tensor) -> dict[str, Any]:
    """Summaries of a mode x category contingency table ``T`` (rows: true modes, columns: categories).

    Returns a dict with

    * ``purity``: ``sum_m max_c T[m, c] / n`` -- fraction of points in their mode's majority category;
    * ``unique_majority_fraction``: fraction of points whose mode's majority category is the majority
      category of no other (non-empty) mode;
    * ``num_distinct_majorities``: number of distinct majority categories over the non-empty modes;
    * ``nmi``: normalised mutual information ``2 I(M; C) / (H(M) + H(C))`` (arithmetic normalisation; 1 iff
      the table is a relabelled permutation-like one-to-one map, 0 iff independent; 1.0 if both entropies
      vanish);
    * ``one_to_one``: ``True`` iff every non-empty mode has a distinct majority category.
    """
    T = table.to(torch.float64)
    n = T.sum()
    if n <= 0:
        raise ValueError("empty table")
    row = T.sum(dim=1)
    col = T.sum(dim=0)
    nonempty = row > 0
    majority = T.argmax(dim=1)
    purity = T.max(dim=1).values.sum() / n

    maj_ne = majority[nonempty]
    counts = torch.bincount(maj_ne, minlength=T.shape[1])
    unique_mode = torch.zeros_like(nonempty)
    unique_mode[nonempty] = counts[maj_ne] == 1
    unique_fraction = row[unique_mode].sum() / n

    P = T / n
    pm, pc = row / n, col / n
    outer = pm[:, None] * pc[None, :]
    mask = P > 0
    mi = (P[mask] * (P[mask].log() - outer[mask].log())).sum().clamp_min(0.0)
    h_m = -(pm[pm > 0] * pm[pm > 0].log()).sum()
    h_c = -(pc[pc > 0] * pc[pc > 0].log()).sum()
    denom = h_m + h_c
    nmi = (2.0 * mi / denom).clamp(0.0, 1.0) if denom > 0 else torch.tensor(1.0, dtype=torch.float64)
    n_distinct = int(torch.unique(maj_ne).numel())
    return {
        "purity": float(purity),
        "unique_majority_fraction": float(unique_fraction),
        "num_distinct_majorities": n_distinct,
        "nmi": float(nmi),
        "one_to_one": bool(n_distinct == int(nonempty.sum())),
    }


# ----------------------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------------------
def train_vae(
    model: nn.Module,
    x_train: Tensor,
    *,
    steps: int,
    batch_size: int | None,
    lr: float,
    generator: torch.Generator | None,
    tau_schedule: Callable[[int], float] | tuple[float, float] | None = None,
    grad_clip: float | None = 10.0,
    kl_warmup: int = 0,
    free_bits: float = 0.0,
) -> dict[str, list[float]]:
    """Adam on ``model.loss`` (the mean negative ELBO); returns ``{"loss": [...], "tau": [...]}`` per step.

    ``batch_size=None`` (or ``>= len(x_train)``) trains full-batch; otherwise minibatches are drawn with
    replacement using ``generator``. For models with ``uses_temperature`` (:class:`CategoricalVAE`) the
    Gumbel-softmax temperature follows ``tau_schedule``: a callable ``step -> tau``, a pair
    ``(tau_start, tau_end)`` for exponential annealing over ``steps``, or ``None`` for the constant
    ``model.tau``. At the end ``model.tau`` is set to the last temperature used. Models with
    ``supports_kl_weight`` (Gaussian and hierarchical VAE) train with the KL weight rising linearly from 0 to
    1 over the first ``kl_warmup`` steps and ``free_bits`` nats per latent dimension (their ``loss``);
    ``history["loss"]`` is the training loss, ``history["kl_weight"]`` its weight."""
    ref = _ref(model)
    x_train = x_train.to(dtype=ref.dtype, device=ref.device)
    n = x_train.shape[0]
    uses_tau = bool(getattr(model, "uses_temperature", False))
    if isinstance(tau_schedule, tuple):
        tau_schedule = exponential_tau_schedule(tau_schedule[0], tau_schedule[1], steps)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    history: dict[str, list[float]] = {"loss": [], "tau": [], "kl_weight": []}
    uses_kl = bool(getattr(model, "supports_kl_weight", False))
    model.train()
    tau: float | None = None
    for step in range(steps):
        if batch_size is None or batch_size >= n:
            xb = x_train
        else:
            idx = torch.randint(n, (batch_size,), generator=generator, device=x_train.device)
            xb = x_train[idx]
        if uses_tau:
            tau = tau_schedule(step) if tau_schedule is not None else float(model.tau)
            loss = model.loss(xb, generator, tau=tau)
        elif uses_kl:
            beta = min(1.0, (step + 1) / kl_warmup) if kl_warmup > 0 else 1.0
            loss = model.loss(xb, generator, kl_weight=beta, free_bits=free_bits)
            history["kl_weight"].append(beta)
        else:
            loss = model.loss(xb, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        history["loss"].append(float(loss.detach()))
        history["tau"].append(float("nan") if tau is None else tau)
    if uses_tau and tau is not None:
        model.tau = tau
    model.eval()
    return history
