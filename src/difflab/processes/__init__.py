"""Forward processes and schedules (continuous time, t = 0 is data) and discrete DDPM adapters."""

from __future__ import annotations

from collections.abc import Callable

from difflab.processes.base import Coefficients, Process, VarianceProcess
from difflab.processes.continuous import VE, LinearVP, OrnsteinUhlenbeck, SubVP, TrigVP
from difflab.processes.discrete import BETA_SCHEDULES, DiscreteChain, ddpm_chain
from difflab.processes.flow import LOGSNR_MAX, LOGSNR_MIN, LinearInterpolant, ShiftedTrigVP
from difflab.registry import build


def trig_vp(
    t_min: float = 1e-4,
    t_max: float = 1.0 - 1e-4,
    resolution: float | None = None,
    base_resolution: float = 64.0,
) -> Process:
    """The trig (cosine) VP process; with ``resolution=d`` the shifted cosine of Hoogeboom et al. 2023
    (log-SNR + 2 log(base_resolution / d)), see :class:`ShiftedTrigVP`. Without it: :class:`TrigVP`."""
    if resolution is None:
        if base_resolution != 64.0:
            raise ValueError("base_resolution is an option of the shifted cosine: also give resolution")
        return TrigVP(t_min, t_max)
    return ShiftedTrigVP(resolution, base_resolution, t_min, t_max)


PROCESSES: dict[str, Callable[..., Process]] = {
    "trig_vp": trig_vp,
    "linear_vp": LinearVP,
    "ou": OrnsteinUhlenbeck,
    "sub_vp": SubVP,
    "ve": VE,
    "ddpm": ddpm_chain,
    "linear_interpolant": LinearInterpolant,
}


def build_process(
    name: str, logsnr_min: float | None = None, logsnr_max: float | None = None, **kwargs: object
) -> Process:
    """Build a process by name (see PROCESSES); unknown names/options raise an error listing valid ones.

    ``logsnr_max`` / ``logsnr_min`` set the clamps by log-SNR instead of time: t_min = t(logsnr_max),
    t_max = t(logsnr_min) (e.g. logsnr_max = 10 stops at sigma/alpha = e^-5).
    """
    process = build(PROCESSES, name, "process", **kwargs)
    if logsnr_max is not None:
        process.t_min = float(process.t_of_logsnr(float(logsnr_max)))
    if logsnr_min is not None:
        process.t_max = float(process.t_of_logsnr(float(logsnr_min)))
    if not 0.0 <= process.t_min < process.t_max <= 1.0:
        raise ValueError(f"clamps give t_min={process.t_min:g}, t_max={process.t_max:g}: need t_min < t_max")
    return process


__all__ = [
    "BETA_SCHEDULES",
    "LOGSNR_MAX",
    "LOGSNR_MIN",
    "PROCESSES",
    "VE",
    "Coefficients",
    "DiscreteChain",
    "LinearInterpolant",
    "LinearVP",
    "OrnsteinUhlenbeck",
    "Process",
    "ShiftedTrigVP",
    "SubVP",
    "TrigVP",
    "VarianceProcess",
    "build_process",
    "ddpm_chain",
    "trig_vp",
]
