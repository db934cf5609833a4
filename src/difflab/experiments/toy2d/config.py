"""Strict, frozen configurations of a 2D run (a leaf: imports only :mod:`difflab.experiments.common`).

A run config is a nested dict (from TOML or a study) turned into frozen dataclasses by :func:`parse_config`.
Unknown sections or keys, and values of the wrong type, raise :class:`ConfigError` with the valid choices.
Names (process, target, weighting, sampler, ...) are checked against their tables by
:func:`difflab.experiments.toy2d.run.validate_config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from difflab.experiments.common.configs import ConfigError, parse_dataclass
from difflab.parameterization import parse_target

__all__ = ["NATURAL_SAMPLERS", "ConfigError", "RunConfig", "natural_sampler", "parse_config", "total_steps"]


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
    # "none" or "edm" (Karras et al. 2022 eq. 7, x0 target only; sigma_data = 1: the data are z-scored)
    preconditioning: str = "none"
    conditioning: str = "film"  # how the time embedding enters: "film" (scale-shift) or "concat"
    input_scaling: bool = True
    # model-specific options of the non-diffusion baselines (difflab.experiments.toy2d.baselines), e.g.
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
    nelbo_t_draws: int = 16
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

    def sampler_names(self, target: str) -> list[str]:
        """Every sampler the run draws with: eval.sampler (the target's natural one for "natural"), then
        "ancestral" if also_ancestral, then the eval.also_samplers names (each once)."""
        names = [natural_sampler(target) if self.sampler == "natural" else self.sampler]
        names += ["ancestral"] if self.also_ancestral and "ancestral" not in names else []
        return names + [s for s in also_sampler_names(self.also_samplers) if s not in names]


#: seed 000's sampler of each target; the flow target (a velocity) integrates its ODE with Euler steps
NATURAL_SAMPLERS = {
    "x0": "ancestral",
    "eps": "ancestral",
    "v": "ddim",
    "score": "euler_maruyama",
    "flow": "ode_euler",
}


def natural_sampler(target: str) -> str:
    """Seed 000 sampled each target its own way: x0 and eps ancestrally, v by the deterministic
    (DDIM eta = 0) update, score by a Langevin-type SDE; we use the reverse-SDE Euler-Maruyama for score,
    and for the flow-matching velocity its ODE by Euler steps (Lipman et al. 2023; Liu et al. 2023).
    A target without an entry in :data:`NATURAL_SAMPLERS` is a ConfigError listing the table."""
    name = parse_target(target).value
    if name not in NATURAL_SAMPLERS:
        raise ConfigError(
            f"target {name!r} has no natural sampler; targets with one: {', '.join(sorted(NATURAL_SAMPLERS))}"
            " (set eval.sampler to a sampler name)"
        )
    return NATURAL_SAMPLERS[name]


def also_sampler_names(text: str) -> list[str]:
    """``eval.also_samplers`` ("pc,ode_heun") as a list of names."""
    return [s.strip() for s in text.split(",") if s.strip()]


@dataclass(frozen=True)
class RunConfig:
    label: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def parse_config(data: dict) -> RunConfig:
    """Nested dict -> RunConfig; unknown keys / wrong types raise ConfigError."""
    return parse_dataclass(RunConfig, data, "")


def config_to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def total_steps(config: RunConfig) -> int:
    tr = config.train
    if tr.epochs is not None:
        return max(1, round(tr.epochs * config.data.n_train / tr.batch_size))
    return tr.steps
