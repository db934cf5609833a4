"""Forward processes and schedules (continuous time, t = 0 is data) and discrete DDPM adapters."""

from __future__ import annotations

from collections.abc import Callable

from difflab.processes.base import Coefficients, Process, VarianceProcess
from difflab.processes.continuous import VE, LinearVP, OrnsteinUhlenbeck, SubVP, TrigVP
from difflab.processes.discrete import BETA_SCHEDULES, DiscreteChain, ddpm_chain
from difflab.registry import build

PROCESSES: dict[str, Callable[..., Process]] = {
    "trig_vp": TrigVP,
    "linear_vp": LinearVP,
    "ou": OrnsteinUhlenbeck,
    "sub_vp": SubVP,
    "ve": VE,
    "ddpm": ddpm_chain,
}


def build_process(name: str, **kwargs: object) -> Process:
    """Build a process by name (see PROCESSES); unknown names/options raise an error listing valid ones."""
    return build(PROCESSES, name, "process", **kwargs)


__all__ = [
    "BETA_SCHEDULES",
    "PROCESSES",
    "VE",
    "Coefficients",
    "DiscreteChain",
    "LinearVP",
    "OrnsteinUhlenbeck",
    "Process",
    "SubVP",
    "TrigVP",
    "VarianceProcess",
    "build_process",
    "ddpm_chain",
]
