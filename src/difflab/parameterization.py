"""Prediction targets x0 / eps / v / score, converted through one hub: the pair (x0_hat, eps_hat).

With x_t = alpha_t x0 + sigma_t eps (any Gaussian process, not only VP):

    x0:     x0
    eps:    eps                                     eps = (x_t - alpha x0) / sigma
    v:      v = alpha eps - sigma x0                (Salimans & Ho 2022)
            x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2)
            eps = (sigma x_t + alpha v) / (alpha^2 + sigma^2)
    score:  s = -eps / sigma                        (score of q(x_t | x0); Tweedie: E[s] = grad log p_t)
    flow:   u = dx_t/dt = alpha' x0 + sigma' eps    (conditional velocity: Lipman et al. 2023 eq. 15;
            = eps - x0 for the linear interpolant alpha = 1 - t, sigma = t, Liu et al. 2023 eq. 1)
            with det = alpha sigma' - sigma alpha' = -alpha sigma lambda'/2 > 0:
            x0 = (sigma' x_t - sigma u) / det,   eps = (alpha u - alpha' x_t) / det

For one x_t, prediction errors obey alpha d_x0 + sigma d_eps = 0, hence in eps-space units

    |d_x0|^2 = (sigma/alpha)^2 |d_eps|^2      |d_v|^2 = ((alpha^2 + sigma^2)/alpha)^2 |d_eps|^2
    |d_s|^2  = sigma^-2 |d_eps|^2                |d_u|^2 = (sigma lambda' / 2)^2 |d_eps|^2

:func:`error_scale` returns these factors m_X (|d_X|^2 = m_X |d_eps|^2). Kingma & Gao (2023), sec. 2.
The flow target needs the time derivatives d_alpha, d_sigma (keyword arguments of the conversions).

Output preconditionings of :class:`TargetDenoiser` (:data:`PRECONDITIONINGS`): EDM's (Karras et al. 2022,
Table 1 and eq. 7) for the x0 target (D-space, where EDM writes its loss), and the score network scaled by
the noise level, s = -F / sigma_t, for the score target (Song & Ermon 2020, technique 3; the score-SDE code's
VP and sub-VP score models, Song et al. 2021), which leaves F at unit scale at every t.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    FLOW = "flow"


TARGETS: dict[str, Target] = {t.value: t for t in Target}


def parse_target(name: str | Target) -> Target:
    if isinstance(name, Target):
        return name
    return lookup(TARGETS, name, "target")


def _derivatives(
    target: Target, d_alpha: Tensor | None, d_sigma: Tensor | None, x: Tensor
) -> tuple[Tensor, Tensor]:
    if d_alpha is None or d_sigma is None:
        raise ValueError(f"target {target.value!r} needs d_alpha and d_sigma (the velocity dx_t/dt)")
    return expand_like(d_alpha, x), expand_like(d_sigma, x)


def to_hub(
    target: Target,
    out: Tensor,
    x_t: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    *,
    d_alpha: Tensor | None = None,
    d_sigma: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Convert a prediction of ``target`` into (x0_hat, eps_hat). alpha, sigma (and d_alpha, d_sigma for the
    flow target): (B,) coefficients."""
    a, s = expand_like(alpha, x_t), expand_like(sigma, x_t)
    if target is Target.FLOW:
        da, ds = _derivatives(target, d_alpha, d_sigma, x_t)
        det = a * ds - s * da
        return (ds * x_t - s * out) / det, (a * out - da * x_t) / det
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


def from_hub(
    target: Target,
    x0: Tensor,
    eps: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    *,
    d_alpha: Tensor | None = None,
    d_sigma: Tensor | None = None,
) -> Tensor:
    """The value of ``target`` for a pair (x0, eps) (the flow target also needs d_alpha, d_sigma)."""
    a, s = expand_like(alpha, x0), expand_like(sigma, x0)
    if target is Target.FLOW:
        da, ds = _derivatives(target, d_alpha, d_sigma, x0)
        return da * x0 + ds * eps
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
    if target is Target.FLOW:
        return (0.5 * c.sigma * c.d_logsnr) ** 2
    raise ValueError(target)  # pragma: no cover


@dataclass(frozen=True)
class EDMPreconditioning:
    """EDM's c_skip, c_out, c_in, c_noise at VE noise level sigma (float64; Karras et al. 2022, Table 1):

    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)  c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)             c_noise = ln(sigma) / 4

    and D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (eq. 7). In difflab's convention the VE state and
    noise level are x~ = x_t / alpha_t and sigma~ = sigma_t / alpha_t (EDM sec. 4, Table 1 "VP" column).
    """

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor

    @classmethod
    def at(cls, sigma: Tensor, sigma_data: float) -> EDMPreconditioning:
        norm2 = sigma**2 + sigma_data**2
        return cls(
            c_skip=sigma_data**2 / norm2,
            c_out=sigma * sigma_data / norm2.sqrt(),
            c_in=norm2.rsqrt(),
            c_noise=0.25 * torch.log(sigma),
        )


PRECONDITIONINGS: dict[str, str] = {
    "none": "the network's output is the target itself",
    "edm": "D = c_skip x~ + c_out F(c_in x~; c_noise) (Karras et al. 2022 eq. 7; x0 target only)",
    "scale_by_sigma": "s = -F(x_t, t) / sigma_t (Song & Ermon 2020; score-SDE's models; score target only)",
}
"""Preconditioning names of :class:`TargetDenoiser` (unknown names are errors listing these)."""

PRECONDITIONING_TARGET: dict[str, Target] = {"edm": Target.X0, "scale_by_sigma": Target.SCORE}
"""The one target each output preconditioning is defined for ("none" fits every target)."""

TIME_INPUTS: dict[str, str] = {
    "t": "the network sees the process time t in [0, 1]",
    "logsnr": "the network sees u = (lambda_max - lambda_t) / (lambda_max - lambda_min) in [0, 1] (VDM)",
}
"""What :class:`TargetDenoiser` feeds its network as time (unknown names are errors listing these)."""


def time_input_error(time_input: str, preconditioning: str) -> str | None:
    """Why ``time_input`` cannot go with ``preconditioning`` (None when it can): EDM feeds its own c_noise."""
    if time_input == "t" or preconditioning != "edm":
        return None
    return (
        f"model.time_input = {time_input!r} does not combine with model.preconditioning = 'edm', "
        "whose network already takes c_noise = ln(sigma) / 4; use time_input = 't'"
    )


def logsnr_time(process: Process, t: Tensor) -> Tensor:
    """The log-SNR rescaled to [0, 1], u = (lambda_max - lambda_t) / (lambda_max - lambda_min) (float64).

    lambda_max = lambda(t_min) and lambda_min = lambda(t_max), so u runs from 0 (least noise) to 1 like t,
    and u = t exactly for a process whose log-SNR is linear in t on [0, 1]. Conditioning the network on the
    noise level rather than on t is VDM's choice (Kingma et al. 2021, sec. 3.4: the network takes gamma(t))
    and EDM's (c_noise = ln(sigma) / 4; Karras et al. 2022, Table 1): at high log-SNR a process's t crowds
    the whole resolved range into a sliver (OU with logsnr_max 7.85: lambda in [2, 7.85] is t in
    [4e-5, 0.024]), where a time embedding barely changes.
    """
    return rescale_logsnr(process.logsnr(t), *logsnr_range(process))


def logsnr_range(process: Process) -> tuple[float, float]:
    """(lambda_max, lambda_min) = (lambda(t_min), lambda(t_max)), the endpoints of :func:`logsnr_time`."""
    return float(process.logsnr(process.t_min)), float(process.logsnr(process.t_max))


def rescale_logsnr(logsnr: Tensor, lam_max: float, lam_min: float) -> Tensor:
    """u = (lambda_max - lambda) / (lambda_max - lambda_min)."""
    return (lam_max - logsnr) / (lam_max - lam_min)


def preconditioning_error(preconditioning: str, target: Target | str) -> str | None:
    """Why ``preconditioning`` cannot wrap a network of ``target`` (None when it can)."""
    need = PRECONDITIONING_TARGET.get(preconditioning)
    if need is None or parse_target(target) is need:
        return None
    return (
        f"model.preconditioning = {preconditioning!r} ({PRECONDITIONINGS[preconditioning]}) needs "
        f"objective.target = {need.value!r}, got {parse_target(target).value!r}"
    )


class TargetDenoiser(nn.Module):
    """Wrap a backbone ``net(x_t, t) -> prediction of target`` as a denoiser ``D(x_t, t) -> x0_hat``.

    ``predict(x_t, t)`` returns both hub quantities (x0_hat, eps_hat). Coefficients are computed in float64
    and cast to the data dtype.

    With ``input_scaling`` the network sees c_in x_t, c_in = 1 / sqrt(alpha_t^2 data_std^2 + sigma_t^2), so
    its input has unit variance at every t (Karras et al. 2022, Table 1, c_in); this matters for VE processes.

    With ``preconditioning="edm"`` (target x0 only) the network is EDM's F: the prediction is
    D = c_skip x~ + c_out F(c_in x~, c_noise) with x~ = x_t / alpha_t, sigma~ = sigma_t / alpha_t and
    sigma_data = ``data_std`` (:class:`EDMPreconditioning`); the network's time input is
    c_noise = ln(sigma~)/4.
    The loss stays in D = x0 space, as EDM writes it (eq. 2, 8); ``input_scaling`` is implied (c_in).

    With ``preconditioning="scale_by_sigma"`` (target score only) the score is s = -F(x_t, t) / sigma_t
    (Song & Ermon 2020, sec. 4 technique 3; score-SDE's ``get_score_fn``): F is eps-like, of unit scale at
    every t, where an unscaled network must itself grow its output like 1/sigma_t (~50 at log-SNR 7.85).
    Only the network's output is reparameterised: the objective, its weighting and its minimiser (the
    true score) are unchanged.

    With ``time_input="logsnr"`` the network's time input is :func:`logsnr_time` (the log-SNR rescaled to
    [0, 1]) instead of t: a reparameterisation of the network's input only, as above.
    """

    def __init__(
        self,
        net: nn.Module,
        process: Process,
        target: Target | str,
        input_scaling: bool = False,
        data_std: float = 1.0,
        preconditioning: str = "none",
        time_input: str = "t",
    ) -> None:
        super().__init__()
        self.net = net
        self.process = process
        self.target = parse_target(target)
        self.input_scaling = input_scaling
        self.data_std = float(data_std)
        lookup(PRECONDITIONINGS, preconditioning, "preconditioning")
        error = preconditioning_error(preconditioning, self.target)
        if error is not None:
            raise ValueError(error)
        self.preconditioning = preconditioning
        lookup(TIME_INPUTS, time_input, "time input")
        error = time_input_error(time_input, preconditioning)
        if error is not None:
            raise ValueError(error)
        self.time_input = time_input
        self._logsnr_range = logsnr_range(process) if time_input == "logsnr" else None

    def _edm(self, x_t: Tensor, t: Tensor, c: Coefficients | None) -> Tensor:
        c = c if c is not None else self.process.coefficients(t.detach().cpu())
        pre = EDMPreconditioning.at(c.sigma / c.alpha, self.data_std)
        x_ve = x_t / expand_like(c.alpha.to(x_t.device), x_t)
        f = self.net(x_ve * expand_like(pre.c_in.to(x_t.device), x_t), pre.c_noise.to(x_t.device, x_t.dtype))
        return (
            expand_like(pre.c_skip.to(x_t.device), x_t) * x_ve
            + expand_like(pre.c_out.to(x_t.device), x_t) * f
        )

    def raw(self, x_t: Tensor, t: Tensor, c: Coefficients | None = None) -> Tensor:
        """The network's prediction in target space at (x_t, t) (D = x0_hat with EDM preconditioning).

        ``c``: the process coefficients at ``t`` when the caller has them (float64, CPU), so that one
        forward pass evaluates them once; computed here otherwise."""
        t = batch_time(t, x_t)
        if self.preconditioning == "edm":
            return self._edm(x_t, t, c)
        if c is None and (self.input_scaling or self.scaled or self._logsnr_range is not None):
            c = self.process.coefficients(t.detach().cpu())
        if self.input_scaling:
            c_in = (c.alpha**2 * self.data_std**2 + c.sigma**2).rsqrt().to(x_t.device)
            x_t = x_t * expand_like(c_in, x_t)
        t_net = t
        if self._logsnr_range is not None:
            t_net = rescale_logsnr(c.logsnr, *self._logsnr_range).to(t.device)
        out = self.net(x_t, t_net.to(x_t.dtype))
        if self.scaled:
            out = out * expand_like((-1.0 / c.sigma).to(x_t.device, out.dtype), out)
        return out

    @property
    def scaled(self) -> bool:
        """True for the score network scaled by the noise level (``preconditioning="scale_by_sigma"``)."""
        return self.preconditioning == "scale_by_sigma"

    def predict(self, x_t: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        t = batch_time(t, x_t)
        c = self.process.coefficients(t.detach().cpu())
        dev = x_t.device
        alpha, sigma = c.alpha.to(dev), c.sigma.to(dev)
        derivs = {"d_alpha": c.d_alpha.to(dev), "d_sigma": c.d_sigma.to(dev)}
        return to_hub(self.target, self.raw(x_t, t, c), x_t, alpha, sigma, **derivs)

    def forward(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        return self.predict(x_t, t)[0]
