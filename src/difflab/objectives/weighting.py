"""Loss weightings w(t): one function of the schedule coefficients, written in the space where it is simplest.

A weighting is defined by a *native* target space N and a function w_N(c) of the coefficients at t. Training a
network on another target X with the same objective needs the weight that gives the same loss value for the
same prediction. Because one x_t ties the errors of all targets, |d_X|^2 = m_X |d_eps|^2
(:func:`difflab.parameterization.error_scale`), the weight in X-space is

    w_X(c) = w_N(c) * m_N(c) / m_X(c)                                     (Kingma & Gao 2023, sec. 2)

``native=None`` means "the trained target's own space" (the weight is then not converted: unit weight in each
target's space gives four *different* objectives, seed 000's "weighted" loss). The conversion is exact for the
L2 norm; for L1/Huber it only matches the scale (there is no exact identity).

Every weighting here is a constructor in :data:`WEIGHTINGS`; its docstring gives the formula and the source.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab.parameterization import Target, error_scale, parse_target
from difflab.processes.base import Coefficients, Process
from difflab.processes.discrete import DiscreteChain
from difflab.registry import build

WeightFn = Callable[[Coefficients, Process], Tensor]
"""w_N(c, process) -> float64 tensor of c.t's shape (the process is needed only by chain weightings)."""

_GRID_TOL = 1e-6
FINGERPRINT_POINTS = 4097


@dataclass(frozen=True)
class Weighting:
    """A loss weighting: ``fn`` gives the weight in the ``native`` target space (None: the trained target's).

    Attributes:
        name: registry name (for reports).
        fn: w_N(c, process), float64.
        native: the space N in which ``fn`` is written, or None for "the trained target's own space".
        requires_chain: the weight is defined only on the grid of a :class:`DiscreteChain`.
    """

    name: str
    fn: WeightFn
    native: Target | None
    requires_chain: bool = False

    def check(self, process: Process) -> None:
        """Raise a clear error if this weighting cannot be used with ``process``."""
        if self.requires_chain and not isinstance(process, DiscreteChain):
            raise ValueError(
                f"weighting {self.name!r} is defined on the steps of a discrete DDPM chain; "
                f"got {process!r} (build the process with ddpm_chain / name 'ddpm')"
            )

    def native_weight(self, c: Coefficients, process: Process) -> Tensor:
        """w_N(c) in the native space (float64)."""
        self.check(process)
        return torch.as_tensor(self.fn(c, process), dtype=torch.float64).expand_as(c.t)

    def weight(self, target: Target | str, c: Coefficients, process: Process) -> Tensor:
        """w_X(c) = w_N(c) m_N(c) / m_X(c) for the trained target X (float64, shape of c.t)."""
        target = parse_target(target)
        w = self.native_weight(c, process)
        if self.native is None or self.native is target:
            return w
        return w * error_scale(self.native, c) / error_scale(target, c)

    def fingerprint(self, target: Target | str, process: Process, points: int = FINGERPRINT_POINTS) -> str:
        """SHA-256 of w_X(t) in float64 for the trained target X at the times a trainer can draw: the chain's
        grid t_i = i/T on a :class:`DiscreteChain`, else ``points`` equally spaced t in [t_min, t_max].

        Two weightings with one fingerprint on one target and process give the same loss to every prediction
        at those times, bit for bit (seed 000's "weighted" and "rescaled" on x0, or "weighted" and
        "eps_simple" on eps): trained alike, they are one run. Only equality on the points is checked."""
        if isinstance(process, DiscreteChain):
            t = process.grid[1:].to(torch.float64)
        else:
            t = torch.linspace(process.t_min, process.t_max, int(points), dtype=torch.float64)
        w = self.weight(target, process.coefficients(t), process)
        digest = hashlib.sha256(parse_target(target).value.encode())
        digest.update(w.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def eps_weight(self, c: Coefficients, process: Process, target: Target | str = Target.EPS) -> Tensor:
        """The equivalent eps-space weight w_eps = w_X m_X (for ``native=None``, of the given target X)."""
        target = parse_target(target)
        return self.weight(target, c, process) * error_scale(target, c)


# --- the weightings -----------------------------------------------------------------------------------------


def nelbo() -> Weighting:
    """NELBO: eps-space weight w_eps = -1/2 d lambda/dt (Kingma et al. 2021, VDM, eq. 17).

    On x0 this is -1/2 SNR'(t) (since m_x0 = 1/SNR and SNR' = SNR lambda'). With the squared error averaged
    over dimensions and the importance weight 1/p(t) applied (the objective's default), the per-example loss
    is an unbiased estimate of the continuous NELBO diffusion term  1/2 int_{t_min}^{t_max} (-lambda') E|eps -
    eps_hat|^2 dt  in nats per dimension. Seed 000's table writes it without the 1/2 (-SNR' on x0).
    """
    return Weighting("nelbo", lambda c, p: -0.5 * c.d_logsnr, Target.EPS)


def weighted() -> Weighting:
    """Seed 000 "weighted": unit weight in the trained target's own space, E|X - X_hat|^2.

    The four targets give four different objectives (eps: L_simple; x0: -2 NELBO / SNR'; ...).
    """
    return Weighting("weighted", lambda c, p: torch.ones_like(c.t), None)


def rescaled() -> Weighting:
    """Seed 000 "rescaled": the NELBO divided by its x0-space weight, i.e. x0-space weight 1.

    On the other targets: eps  sigma^2/alpha^2;  v  sigma^2/(alpha^2+sigma^2)^2
    (VP: sigma^2/(alpha^2+sigma^2));  score  sigma^4/alpha^2.
    Identity: nelbo_loss / rescaled_loss = -1/2 SNR'(t) for every target (seed 000 writes the NELBO without
    the 1/2, so its ratio is -SNR').
    """
    return Weighting("rescaled", lambda c, p: torch.ones_like(c.t), Target.X0)


def eps_simple() -> Weighting:
    """L_simple: eps-space weight 1, E|eps - eps_hat|^2 (Ho et al. 2020, eq. 14)."""
    return Weighting("eps_simple", lambda c, p: torch.ones_like(c.t), Target.EPS)


def min_snr(gamma: float = 5.0) -> Weighting:
    """Min-SNR-gamma: x0-space weight min(SNR_t, gamma) (Hang et al. 2023, eq. 8; default gamma = 5).

    Equivalently min(SNR, gamma)/SNR on eps and, for VP, min(SNR, gamma)/(SNR + 1) on v.
    """
    gamma = float(gamma)
    if not gamma > 0:
        raise ValueError(f"min_snr needs gamma > 0, got {gamma}")
    return Weighting(f"min_snr(gamma={gamma:g})", lambda c, p: torch.clamp(c.snr, max=gamma), Target.X0)


def _vlb_weight(clip: float) -> WeightFn:
    def fn(c: Coefficients, process: Process) -> Tensor:
        assert isinstance(process, DiscreteChain)
        t = c.t.to(torch.float64).cpu()
        if bool(((t * process.T - torch.round(t * process.T)).abs() > _GRID_TOL).any()):
            raise ValueError(
                "weighting 'vlb_clipped' needs t on the chain grid t_i = i/T; "
                "use the 'discrete' time distribution"
            )
        i = process.index(t)
        if bool(((i < 1) | (i > process.T)).any()):
            raise ValueError(f"vlb_clipped: step index out of 1..{process.T}")
        beta = process.betas[i - 1]
        beta_tilde = process.posterior_variance()[i - 1]
        one_minus_abar = 1.0 - process.alpha_bar[i]
        w = beta**2 / (2.0 * beta_tilde * (1.0 - beta) * one_minus_abar)  # beta_tilde_1 = 0: w_1 = inf
        return torch.clamp(w, 0.0, clip).to(c.t.device)

    return fn


def vlb_clipped(clip: float = 1.0) -> Weighting:
    """Seed 001 "l2_weighted": eps-space weight
    w_i = beta_i^2 / (2 beta_tilde_i (1 - beta_i)(1 - alpha_bar_i)), clipped to [0, clip] (default 1).

    This is Ho et al. 2020's VLB weight beta^2 / (2 sigma_i^2 alpha_i (1 - alpha_bar_i)) (eq. 12) with
    sigma_i^2 = beta_tilde_i; for i >= 2 it equals 1/2 (SNR_{i-1}/SNR_i - 1), the exact discrete KL term in
    eps-space. Step indices are 1-based (t_i = i/T, i = 1..T); at i = 1, beta_tilde_1 = 0 so w_1 = inf,
    clipped to ``clip`` (seed 001's 0-based w_0). Needs a :class:`DiscreteChain` and t on its grid.
    """
    clip = float(clip)
    if not clip > 0:
        raise ValueError(f"vlb_clipped needs clip > 0, got {clip}")
    return Weighting(f"vlb_clipped(clip={clip:g})", _vlb_weight(clip), Target.EPS, requires_chain=True)


def uniform_score() -> Weighting:
    """Seed 003 "uniform": score-space weight lambda(t) = 1, E|s - s_hat|^2 (Song & Ermon 2019 notation).

    Equivalent eps weight 1/sigma_t^2 (it grows without bound as t -> 0).
    """
    return Weighting("uniform_score", lambda c, p: torch.ones_like(c.t), Target.SCORE)


def inverse_variance() -> Weighting:
    """Seed 003 "inverse variance": score-space weight lambda(t) = sigma_t^2 (Song et al. 2021, sec. 3.3:
    lambda proportional to 1/E|grad log q(x_t|x0)|^2). It equals eps_simple: sigma^2 |ds|^2 = |d eps|^2."""
    return Weighting("inverse_variance", lambda c, p: c.sigma**2, Target.SCORE)


def likelihood() -> Weighting:
    """Likelihood weighting: score-space weight g(t)^2 (Song et al. 2021b, "Maximum likelihood training of
    score-based diffusion models", Thm. 1). With g^2 = -sigma^2 lambda', the eps weight is -lambda' = 2 x
    nelbo."""
    return Weighting("likelihood", lambda c, p: c.g2, Target.SCORE)


# --- weightings of the ELBO integrand (Kingma & Gao 2023) ---------------------------------------------------


def elbo_weighting(name: str, w_of_logsnr: Callable[[Tensor], Tensor]) -> Weighting:
    """The ELBO integrand weighted by w(lambda) (Kingma & Gao 2023, eq. 5):

        L_w = 1/2 int w(lambda_t) (-d lambda/dt) E|eps - eps_hat|^2 dt = 1/2 int w(lambda) E|...|^2 d lambda,

    i.e. the eps-space weight w_eps(t) = -1/2 lambda'(t) w(lambda_t). With the objective's importance weight
    1/p(t), the loss depends on the schedule only through its log-SNR endpoints (K&G sec. 3); p(t) is a
    proposal that sets the variance. w = 1 is ``nelbo``.
    """

    def fn(c: Coefficients, process: Process) -> Tensor:
        return -0.5 * c.d_logsnr * w_of_logsnr(c.logsnr)

    return Weighting(name, fn, Target.EPS)


def sigmoid(b: float = -2.0) -> Weighting:
    """Sigmoid weighting of the ELBO integrand, w(lambda) = sigmoid(b - lambda) (Kingma & Gao 2023, sec. 5,
    "sigmoid weighting"; monotone, so an ELBO of noise-augmented data). Default shift b = -2 (not checked
    against the paper's text here: give b explicitly to reproduce a published setting)."""
    b = float(b)
    return elbo_weighting(f"sigmoid(b={b:g})", lambda lam: torch.sigmoid(b - lam))


def _lognormal_logsnr_density(lam: Tensor, P_mean: float, P_std: float) -> Tensor:
    """p(lambda), lambda = -2 ln sigma~, ln sigma~ ~ N(P_mean, P_std^2): N(lambda; -2 P_mean, (2 P_std)^2)."""
    mean, std = -2.0 * P_mean, 2.0 * P_std
    return torch.exp(-0.5 * ((lam - mean) / std) ** 2) / (std * math.sqrt(2.0 * math.pi))


def edm(sigma_data: float = 0.5, P_mean: float = -1.2, P_std: float = 1.2) -> Weighting:
    """EDM's objective (Karras et al. 2022, eq. 2 and 8, Table 1) as a weighting of the ELBO integrand:

        E_{ln sigma ~ N(P_mean, P_std^2)} lambda(sigma) |D(y + sigma n; sigma) - y|^2,
        lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2,

    with the VE noise level sigma = sigma_t / alpha_t = e^{-lambda/2} (so |D - y|^2 = sigma^2 |d eps|^2), is
    1/2 int w(lambda) E|d eps|^2 d lambda with (Kingma & Gao 2023, sec. 4 / App. D)

        w(lambda) = 2 N(lambda; -2 P_mean, (2 P_std)^2) (e^{-lambda} + sigma_data^2) / sigma_data^2.

    p(sigma) is part of this objective (inside w). Under the default importance weighting any proposal p(t)
    estimates it; the ``edm_lognormal`` time distribution (EDM's own sampling of sigma) gives per-example
    losses Z lambda(sigma) |D - y|^2, Z = the lognormal's mass inside [t_min, t_max] (~1). Defaults: EDM's
    sigma_data = 0.5 (images in [-1, 1]), P_mean = -1.2, P_std = 1.2.
    """
    sigma_data, P_mean, P_std = float(sigma_data), float(P_mean), float(P_std)
    if not (sigma_data > 0 and P_std > 0):
        raise ValueError(f"edm needs sigma_data > 0 and P_std > 0, got {sigma_data}, {P_std}")

    def w(lam: Tensor) -> Tensor:
        sd2 = sigma_data**2
        return 2.0 * _lognormal_logsnr_density(lam, P_mean, P_std) * (torch.exp(-lam) + sd2) / sd2

    return elbo_weighting(f"edm(sigma_data={sigma_data:g}, P_mean={P_mean:g}, P_std={P_std:g})", w)


def p2(k: float = 1.0, gamma: float = 1.0) -> Weighting:
    """P2 (perception prioritized) weighting (Choi et al. 2022, eq. 8): lambda'_t = lambda_t / (k + SNR_t)^g,
    (g = gamma) where lambda_t is the weight that turns the VLB into L_simple, so the eps-space weight is
    (k + SNR_t)^-gamma. k = 1 as in the paper; gamma = 1 (the paper also uses 0.5); gamma = 0 is L_simple."""
    k, gamma = float(k), float(gamma)
    if not (k > 0 and gamma >= 0):
        raise ValueError(f"p2 needs k > 0 and gamma >= 0, got k={k}, gamma={gamma}")
    return Weighting(f"p2(k={k:g}, gamma={gamma:g})", lambda c, p: (k + c.snr) ** -gamma, Target.EPS)


def flow_matching() -> Weighting:
    """Flow matching / rectified flow: unit weight on the velocity u = dx_t/dt = alpha' x0 + sigma' eps
    (Lipman et al. 2023 eq. 14-15; Liu et al. 2023 eq. 1; Esser et al. 2024 eq. 2-3), any trained target.

    Its eps weight is m_u = (sigma_t lambda'_t / 2)^2, i.e. the ELBO weighting (:func:`elbo_weighting`)
    w(lambda_t) = -1/2 sigma_t^2 lambda'_t. For the linear interpolant (sigma = t, lambda' = -2/(t(1-t))) this
    is w(lambda) = t/(1-t) = e^{-lambda/2} (Kingma & Gao 2023, App. D): flow matching with t ~ U is the ELBO
    integrand weighted by e^{-lambda/2}.
    """
    return Weighting("flow_matching", lambda c, p: torch.ones_like(c.t), Target.FLOW)


WEIGHTINGS: dict[str, Callable[..., Weighting]] = {
    "nelbo": nelbo,
    "weighted": weighted,
    "rescaled": rescaled,
    "eps_simple": eps_simple,
    "min_snr": min_snr,
    "vlb_clipped": vlb_clipped,
    "uniform_score": uniform_score,
    "inverse_variance": inverse_variance,
    "likelihood": likelihood,
    "sigmoid": sigmoid,
    "edm": edm,
    "p2": p2,
    "flow_matching": flow_matching,
}


def build_weighting(name: str, **options: object) -> Weighting:
    """Build a weighting by name (see WEIGHTINGS); unknown names/options raise UnknownNameError."""
    return build(WEIGHTINGS, name, "weighting", **options)


__all__ = [
    "WEIGHTINGS",
    "Weighting",
    "build_weighting",
    "edm",
    "elbo_weighting",
    "eps_simple",
    "flow_matching",
    "inverse_variance",
    "likelihood",
    "min_snr",
    "nelbo",
    "p2",
    "rescaled",
    "sigmoid",
    "uniform_score",
    "vlb_clipped",
    "weighted",
]
