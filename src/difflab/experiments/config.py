"""Strict, frozen run configurations.

A run config is a nested dict (from TOML or a study) turned into frozen dataclasses by :func:`parse_config`.
Unknown sections or keys, and values of the wrong type, raise :class:`ConfigError` with the valid choices.
Names (process, target, weighting, sampler, ...) are checked against their tables by :func:`validate_config`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A bad configuration: the message says which key and what is valid."""


@dataclass(frozen=True)
class DataConfig:
    name: str = "mixture8"
    n_train: int = 80_000
    n_test: int = 20_000
    seed: int = 0
    root: str | None = None


@dataclass(frozen=True)
class ProcessConfig:
    name: str = "trig_vp"
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ObjectiveConfig:
    target: str = "eps"
    weighting: str = "nelbo"
    time_dist: str = "uniform"
    norm: str = "l2"
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"  # "mlp" or "oracle" (the exact Bayes denoiser of a known law)
    hidden: int = 256
    layers: int = 4
    time_embed: bool = True
    embed_dim: int = 32
    activation: str = "silu"
    conditioning: str = "film"  # how the time embedding enters: "film" (scale-shift) or "concat"
    input_scaling: bool = True
    # model-specific options of the non-diffusion baselines (difflab.experiments.baselines_2d), e.g.
    # num_categories, latent_dim, latent_dims, tau_start, tau_end, init_from_data, vlb_weight
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    epochs: float | None = None  # if set, overrides steps: epochs * n_train / batch_size
    batch_size: int = 1024
    lr: float = 2e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    warmup: int = 100
    ema: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 50
    time_bins: int = 100
    device: str = "cpu"


@dataclass(frozen=True)
class EvalConfig:
    n_samples: int = 5000
    sampler: str = "natural"  # "natural" = the target's own sampler (seed 000); or any samplers name
    steps: int = 256
    grid: str = "uniform_logsnr"
    also_ancestral: bool = True
    n_nelbo: int = 2000
    nelbo_t_draws: int = 512  # MC part of the NELBO s.e. < 0.005 nats/dim on the default study (issue 9)
    nll: bool = True
    n_nll: int = 1000
    nll_rtol: float = 1e-5
    kde_bandwidth: str = "scott"
    kde_n_eval: int = 5000
    seed: int = 1234
    # options of the chosen sampler, e.g. {snr = 0.16, n_corrector = 1} for "pc" (see difflab.samplers)
    sampler_options: dict = field(default_factory=dict)
    # further samplers to draw and score (comma-separated names, e.g. "pc,ode_heun"); prefixed metric keys
    also_samplers: str = ""
    # seed 003's fixed KDE bandwidth in *raw* (unscaled) data units (h = 0.1 there); adds kde_kl_h (+ floor)
    kde_h_raw: float | None = None
    # per-mode sample fractions vs the true weights (mode_fractions.json in the run dir)
    mode_fractions: bool = False
    # E|s_theta - grad log p_t|^2 against t from the exact score of the law (score_error.json)
    score_error: bool = False
    score_error_n: int = 2000
    score_error_bins: int = 40


@dataclass(frozen=True)
class RunConfig:
    label: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    raise ConfigError(f"{where}: unsupported type {annotation}")  # pragma: no cover


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {'.'.join(filter(None, [where, unknown[0]]))!r}; valid keys"
            f"{' in [' + where + ']' if where else ''}: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key)
        else:
            kwargs[name] = _check_type(value, hint, key)
    return cls(**kwargs)


def parse_config(data: dict) -> RunConfig:
    """Nested dict -> RunConfig; unknown keys / wrong types raise ConfigError."""
    return _build(RunConfig, data, "")


def config_to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def total_steps(config: RunConfig) -> int:
    tr = config.train
    if tr.epochs is not None:
        return max(1, round(tr.epochs * config.data.n_train / tr.batch_size))
    return tr.steps


def validate_config(data: dict | RunConfig) -> RunConfig:
    """Parse and check every name against its table (raises ConfigError listing valid choices)."""
    from difflab.registry import UnknownNameError

    config = parse_config(data) if isinstance(data, dict) else data
    try:
        from difflab.experiments.build import build_run_parts

        build_run_parts(config, check_only=True)
    except ConfigError:
        raise
    except (UnknownNameError, ValueError) as err:  # bad names, options or ranges of the parts
        raise ConfigError(str(err)) from None
    tr = config.train
    if tr.batch_size < 1 or total_steps(config) < 1 or tr.lr <= 0:
        raise ConfigError("train.batch_size, train.steps and train.lr must be positive")
    if not 0.0 <= tr.ema < 1.0:
        raise ConfigError(f"train.ema must lie in [0, 1), got {tr.ema}")
    return config
