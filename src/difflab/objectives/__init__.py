"""Denoising objectives: target x weighting w(t) x time distribution p(t) x norm (see ``loss``)."""

from __future__ import annotations

from difflab.objectives.loss import (
    NORMS,
    DenoisingObjective,
    LossOutput,
    Norm,
    build_norm,
    build_objective,
    predict_hub,
)
from difflab.objectives.time_dist import (
    TIME_DISTRIBUTIONS,
    DiscreteTime,
    EDMLogNormalTime,
    LogitNormalTime,
    LogSNRUniformTime,
    StratifiedTime,
    TimeDistribution,
    UniformTime,
    build_time_distribution,
)
from difflab.objectives.weighting import WEIGHTINGS, Weighting, build_weighting

__all__ = [
    "NORMS",
    "TIME_DISTRIBUTIONS",
    "WEIGHTINGS",
    "DenoisingObjective",
    "DiscreteTime",
    "EDMLogNormalTime",
    "LogSNRUniformTime",
    "LogitNormalTime",
    "LossOutput",
    "Norm",
    "StratifiedTime",
    "TimeDistribution",
    "UniformTime",
    "Weighting",
    "build_norm",
    "build_objective",
    "build_time_distribution",
    "build_weighting",
    "predict_hub",
]
