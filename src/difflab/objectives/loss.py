"""Denoising objectives: target x weighting x time distribution x norm.

For a batch x0 (B, *dims), times t (B,) and noise eps, with x_t = alpha_t x0 + sigma_t eps, the per-example
loss is

    loss_b = w_X(t_b) * iw(t_b) * mean_dims norm( X_hat(x_t, t_b) - X(x0, eps, t_b) )

where X is the trained target (``from_hub`` gives its value for (x0, eps)), w_X the weighting converted to
X-space (:class:`~difflab.objectives.weighting.Weighting`), and iw = 1/p(t) the importance weight of the time
distribution when ``importance=True``. The caller reduces over the batch.

Importance (decision): ``importance=True`` is the default for *every* weighting. The loss is then an
unbiased estimate of int_{t_min}^{t_max} w_X(t) E[norm] dt whatever p(t) is; p(t) only sets the variance,
and identities between weightings (nelbo / rescaled = -1/2 SNR', likelihood = 2 nelbo, ...) hold under any
p(t). For the NELBO this is the continuous diffusion-term estimator in nats/dim (seed 000's study NELBO).
Under ``uniform`` the factor is the constant t_max - t_min (~1); under ``discrete`` it is 1. Set
``importance=False`` to make p(t) part of the objective, E_{p(t)}[w norm] (EDM-style "the sampling density
is a weighting").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from difflab._broadcast import batch_time, expand_like, mean_except_batch
from difflab.objectives.time_dist import TIME_DISTRIBUTIONS, TimeDistribution, build_time_distribution
from difflab.objectives.weighting import WEIGHTINGS, Weighting, build_weighting
from difflab.parameterization import Target, from_hub, parse_target
from difflab.processes.base import Process
from difflab.registry import UnknownNameError, build

# --- norms --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Norm:
    """Elementwise penalty of the residual r = X_hat - X, averaged over the non-batch dimensions."""

    name: str
    fn: Callable[[Tensor], Tensor]

    def __call__(self, residual: Tensor) -> Tensor:
        return mean_except_batch(self.fn(residual))


def l2() -> Norm:
    """Squared error r^2 (the norm of every likelihood identity)."""
    return Norm("l2", lambda r: r**2)


def l1() -> Norm:
    """Absolute error |r| (seed 001 "l1")."""
    return Norm("l1", torch.abs)


def huber(delta: float = 1.0) -> Norm:
    """Smooth L1 with threshold delta (PyTorch ``smooth_l1_loss`` with beta = delta; seed 001 uses delta = 1):
    0.5 r^2 / delta if |r| < delta else |r| - 0.5 delta. (For delta = 1 it equals ``huber_loss``.)"""
    delta = float(delta)
    if delta < 0:
        raise ValueError(f"huber needs delta >= 0, got {delta}")
    return Norm(
        f"huber(delta={delta:g})",
        lambda r: F.smooth_l1_loss(r, torch.zeros_like(r), reduction="none", beta=delta),
    )


NORMS: dict[str, Callable[..., Norm]] = {"l2": l2, "l1": l1, "huber": huber}


def build_norm(name: str, **options: object) -> Norm:
    return build(NORMS, name, "norm", **options)


# --- the objective ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossOutput:
    """Per-example loss and diagnostics, all (B,).

    ``loss = weight * importance * raw_error`` (data dtype); ``raw_error`` = norm of the target-space residual
    averaged over dimensions (data dtype); ``t``, ``logsnr``, ``weight`` (= w_X(t)) and ``importance``
    (1/p(t), or 1 when disabled) are float64.
    """

    loss: Tensor
    t: Tensor
    logsnr: Tensor
    weight: Tensor
    raw_error: Tensor
    importance: Tensor


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    gdev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, dtype=x.dtype, device=gdev, generator=generator).to(x.device)


def predict_hub(
    denoiser: object, x_t: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor
) -> tuple[Tensor, Tensor]:
    """(x0_hat, eps_hat) from a :class:`~difflab.parameterization.TargetDenoiser` (its ``predict``) or from a
    plain denoiser ``D(x_t, t) -> x0_hat`` (eps_hat = (x_t - alpha x0_hat) / sigma). alpha, sigma: (B,)."""
    if hasattr(denoiser, "predict"):
        return denoiser.predict(x_t, t)  # type: ignore[attr-defined]
    x0_hat = denoiser(x_t, t)  # type: ignore[operator]
    eps_hat = (x_t - expand_like(alpha, x_t) * x0_hat) / expand_like(sigma, x_t)
    return x0_hat, eps_hat


class DenoisingObjective:
    """A denoising loss: ``objective(denoiser, x0, *, generator=None, t=None, eps=None) -> LossOutput``.

    Args:
        process: the forward process.
        target: the trained target X (x0 / eps / v / score).
        weighting: a :class:`Weighting` (converted to X-space with ``error_scale``).
        time_dist: a :class:`TimeDistribution` for ``process``.
        norm: a :class:`Norm` (default L2).
        importance: multiply by 1/p(t) (default True; see the module docstring).

    The denoiser's prediction in X-space is its raw output when ``denoiser.target`` is X, otherwise it is
    converted through the hub (so an x0-network can be trained with an eps-space loss); a plain callable
    ``D(x_t, t) -> x0_hat`` is treated the same way. t and eps may be passed (common random numbers across
    arms).
    """

    def __init__(
        self,
        process: Process,
        target: Target | str,
        weighting: Weighting,
        time_dist: TimeDistribution,
        norm: Norm | None = None,
        importance: bool = True,
    ) -> None:
        weighting.check(process)
        if time_dist.process is not process:
            raise ValueError("time_dist was built for a different process than the objective's")
        self.process = process
        self.target = parse_target(target)
        self.weighting = weighting
        self.time_dist = time_dist
        self.norm = norm if norm is not None else l2()
        self.importance = bool(importance)

    def weight(self, t: Tensor) -> Tensor:
        """w_X(t) (float64) for the trained target."""
        return self.weighting.weight(self.target, self.process.coefficients(t), self.process)

    def __call__(
        self,
        denoiser: object,
        x0: Tensor,
        *,
        generator: torch.Generator | None = None,
        t: Tensor | float | None = None,
        eps: Tensor | None = None,
    ) -> LossOutput:
        B = x0.shape[0]
        if t is None:
            t, iw = self.time_dist.sample(B, generator)
        else:
            t = batch_time(t, x0).cpu()
            iw = self.time_dist.importance(t)
        t = t.cpu()
        if not self.importance:
            iw = torch.ones_like(iw)
        if eps is None:
            eps = _randn_like(x0, generator)
        elif eps.shape != x0.shape:
            raise ValueError(f"eps of shape {tuple(eps.shape)} does not match x0 {tuple(x0.shape)}")
        c = self.process.coefficients(t)
        w = self.weighting.weight(self.target, c, self.process)
        dev = x0.device
        alpha, sigma = c.alpha.to(dev), c.sigma.to(dev)
        derivs = {"d_alpha": c.d_alpha.to(dev), "d_sigma": c.d_sigma.to(dev)}  # for the flow target
        x_t = expand_like(alpha, x0) * x0 + expand_like(sigma, x0) * eps
        t_dev = t.to(dev)
        if getattr(denoiser, "target", None) is self.target and hasattr(denoiser, "raw"):
            pred = denoiser.raw(x_t, t_dev, c)  # type: ignore[attr-defined]
        else:
            hub = predict_hub(denoiser, x_t, t_dev, alpha, sigma)
            pred = from_hub(self.target, *hub, alpha, sigma, **derivs)
        value = from_hub(self.target, x0, eps, alpha, sigma, **derivs)
        raw_error = self.norm(pred - value)
        factor = (w * iw).to(device=dev, dtype=raw_error.dtype)
        return LossOutput(
            loss=factor * raw_error, t=t, logsnr=c.logsnr, weight=w, raw_error=raw_error, importance=iw
        )

    def __repr__(self) -> str:
        return (
            f"DenoisingObjective(target={self.target.value}, weighting={self.weighting.name}, "
            f"time_dist={self.time_dist.name}, norm={self.norm.name}, importance={self.importance})"
        )


def _option_names(ctor: Callable[..., object], skip: tuple[str, ...] = ()) -> set[str]:
    import inspect

    params = inspect.signature(ctor).parameters.values()
    return {
        p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.name not in skip
    }


def build_objective(
    process: Process,
    target: Target | str = "eps",
    weighting: str | Weighting = "nelbo",
    time_dist: str | TimeDistribution = "uniform",
    norm: str | Norm = "l2",
    **options: object,
) -> DenoisingObjective:
    """Build a :class:`DenoisingObjective` from names (or objects).

    ``options`` are routed to every component that accepts them: ``importance`` (objective), ``gamma`` /
    ``clip`` / ``b`` / ``k`` / ``sigma_data`` (weighting), ``stratified`` (logsnr_uniform), ``m`` / ``s``
    (logit_normal), ``delta`` (huber); ``P_mean`` / ``P_std`` go to both the ``edm`` weighting and the
    ``edm_lognormal`` time distribution when both are chosen (one setting, consistent). An option no chosen
    component accepts raises :class:`~difflab.registry.UnknownNameError` listing the valid ones.
    """
    slots: dict[str, dict[str, object]] = {"objective": {}, "weighting": {}, "time_dist": {}, "norm": {}}
    accepts = {"objective": {"importance"}, "weighting": set(), "time_dist": set(), "norm": set()}
    if isinstance(weighting, str) and weighting in WEIGHTINGS:
        accepts["weighting"] = _option_names(WEIGHTINGS[weighting])
    if isinstance(time_dist, str) and time_dist in TIME_DISTRIBUTIONS:
        accepts["time_dist"] = _option_names(TIME_DISTRIBUTIONS[time_dist], skip=("self", "process"))
    if isinstance(norm, str) and norm in NORMS:
        accepts["norm"] = _option_names(NORMS[norm])
    for key, value in options.items():
        owners = [slot for slot, names in accepts.items() if key in names]
        if not owners:
            valid = ", ".join(sorted(set().union(*accepts.values())))
            raise UnknownNameError(f"unknown objective option {key!r}; valid options here: {valid}")
        for owner in owners:
            slots[owner][key] = value
    w = weighting if isinstance(weighting, Weighting) else build_weighting(weighting, **slots["weighting"])
    p_t = (
        time_dist
        if isinstance(time_dist, TimeDistribution)
        else build_time_distribution(time_dist, process, **slots["time_dist"])
    )
    n = norm if isinstance(norm, Norm) else build_norm(norm, **slots["norm"])
    return DenoisingObjective(process, target, w, p_t, n, **slots["objective"])  # type: ignore[arg-type]


__all__ = [
    "NORMS",
    "DenoisingObjective",
    "LossOutput",
    "Norm",
    "build_norm",
    "build_objective",
    "huber",
    "l1",
    "l2",
    "predict_hub",
]
