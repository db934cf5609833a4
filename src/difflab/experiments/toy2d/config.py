"""Strict, frozen configurations of a 2D run (a leaf: imports only :mod:`difflab.experiments.common`).

A run config is a nested dict (from TOML or a study) turned into frozen dataclasses by :func:`parse_config`.
Unknown sections or keys, and values of the wrong type, raise :class:`ConfigError` with the valid choices.
Names (process, target, weighting, sampler, ...) are checked against their tables by
:func:`difflab.experiments.toy2d.run.validate_config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from difflab.experiments.common.configs import ConfigError, domain, param, parse_dataclass
from difflab.parameterization import parse_target

__all__ = ["NATURAL_SAMPLERS", "ConfigError", "RunConfig", "natural_sampler", "parse_config", "total_steps"]


@dataclass(frozen=True)
class DataConfig:
    name: str = param("mixture8", doc="2D data set (difflab.data.toy2d.TOY2D)")
    n_train: int = param(80_000, ge=2, doc="training points")
    n_test: int = param(20_000, ge=2, doc="held-out points (metrics, NELBO, NLL)")
    seed: int = param(0, doc="seed of the data draw")
    root: str | None = param(None, doc="unused by the 2D data sets")


@dataclass(frozen=True)
class ProcessConfig:
    name: str = param("trig_vp", doc="forward process (difflab.processes.PROCESSES)")
    options: dict = field(
        default_factory=dict, metadata=domain("process options, e.g. {logsnr_max = 10} or {T = 1000}")
    )


@dataclass(frozen=True)
class ObjectiveConfig:
    target: str = param("eps", doc="network target: x0 | eps | v | score")
    weighting: str = param("nelbo", doc="loss weighting w(lambda)")
    time_dist: str = param("uniform", doc="training-time distribution")
    norm: str = param("l2", doc="l2 | l1 | pseudo_huber")
    options: dict = field(default_factory=dict, metadata=domain("objective options"))


@dataclass(frozen=True)
class ModelConfig:
    name: str = param("mlp", doc="mlp | oracle (the exact Bayes denoiser) | a baseline (toy2d.baselines)")
    hidden: int = param(256, ge=1, doc="hidden width of the MLP")
    layers: int = param(4, ge=1, doc="hidden layers of the MLP")
    time_embed: bool = param(True, doc="sinusoidal time embedding (else raw t)")
    embed_dim: int = param(32, ge=2, doc="time-embedding width (even)")
    activation: str = param("silu", doc="activation function")
    conditioning: str = param("film", doc="how the time embedding enters: film (scale-shift) | concat")
    input_scaling: bool = param(True, doc="c_in scaling of the network input")
    # "none", "edm" (Karras et al. 2022 eq. 7, x0 target; sigma_data = 1: the data are z-scored) or
    # "scale_by_sigma" (s = -F / sigma_t, score target)
    preconditioning: str = param(
        "none", doc="none | edm (Karras et al. 2022 eq. 7; x0) | scale_by_sigma (s = -F / sigma_t; score)"
    )
    time_input: str = param(
        "t", doc="network time input: t | logsnr (log-SNR rescaled to [0, 1]; Kingma et al. 2021)"
    )
    # model-specific options of the non-diffusion baselines (difflab.experiments.toy2d.baselines), e.g.
    # num_categories, latent_dim, latent_dims, tau_start, tau_end, init_from_data, vlb_weight
    options: dict = field(
        default_factory=dict, metadata=domain("options of a baseline model (none for mlp / oracle)")
    )


@dataclass(frozen=True)
class TrainConfig:
    steps: int = param(2000, ge=1, doc="optimizer steps")
    epochs: float | None = param(None, gt=0, doc="if set, overrides steps: epochs * n_train / batch_size")
    batch_size: int = param(1024, ge=1, doc="minibatch size (at most data.n_train)")
    lr: float = param(2e-3, gt=0, doc="peak learning rate")
    optimizer: str = param("adam", doc="adam | adamw")
    weight_decay: float = param(0.0, ge=0, doc="weight decay")
    lr_schedule: str = param("cosine", doc="constant | cosine (after warm-up)")
    warmup: int = param(100, ge=0, doc="linear warm-up steps")
    ema: float = param(0.999, ge=0, lt=1, doc="EMA decay of the evaluated weights")
    grad_clip: float = param(1.0, ge=0, doc="gradient-norm clip (0: off)")
    seed: int = param(0, doc="seed of initialisation, minibatches, t and eps")
    checkpoint_every: int = param(1000, ge=0, doc="steps between checkpoints (0: only at the end)")
    log_every: int = param(50, ge=1, doc="steps per logged loss")
    time_bins: int = param(100, ge=1, doc="bins of the loss-by-time curve")
    device: str = param("cpu", doc="cpu | cuda | cuda:N")
    # the budget rule (difflab.experiments.study.convergence): double train.steps, resuming from the
    # checkpoint, until the curve's verdict is "converged" or 2 * steps would exceed train.max_steps.
    # Needs lr_schedule = "constant" (warm-up, then constant: the schedule of the first S steps does not
    # depend on the final budget, so a doubled run is bit-identical to an uninterrupted run of 2S steps)
    until_converged: bool = param(False, doc="double train.steps (resuming) until the verdict is converged")
    max_steps: int | None = param(None, ge=1, doc="cap of the budget rule")


@dataclass(frozen=True)
class EvalConfig:
    n_samples: int = param(5000, ge=2, doc="samples drawn per sampler")
    sampler: str = param("natural", doc="natural (the target's own sampler, seed 000) or a samplers name")
    steps: int = param(256, ge=1, doc="sampler steps")
    grid: str = param("uniform_logsnr", doc="time grid of the sampler")
    also_ancestral: bool = param(True, doc="also draw with the ancestral sampler")
    n_nelbo: int = param(2000, ge=1, doc="test points of the NELBO estimate")
    nelbo_t_draws: int = param(512, ge=1, doc="t draws per NELBO point (MC s.e. < 0.005 nats/dim)")
    nll: bool = param(True, doc="PF-ODE NLL of the test points")
    n_nll: int = param(1000, ge=1, doc="test points of the PF-ODE NLL")
    nll_rtol: float = param(1e-5, gt=0, le=1e-2, doc="dopri5 rtol = atol of the PF-ODE NLL")
    kde_bandwidth: str = param("scott", choices=("scott", "silverman", "loo"), doc="KDE bandwidth rule")
    kde_n_eval: int = param(5000, ge=1, doc="points at which the KDE is evaluated")
    seed: int = param(1234, doc="seed of sampling and evaluation")
    # options of the chosen sampler, e.g. {snr = 0.16, n_corrector = 1} for "pc" (see difflab.samplers)
    sampler_options: dict = field(default_factory=dict, metadata=domain("options of the chosen samplers"))
    # further samplers to draw and score (comma-separated names, e.g. "pc,ode_heun"); prefixed metric keys
    also_samplers: str = param("", doc="further samplers, comma-separated (e.g. 'pc,ode_heun')")
    # seed 003's fixed KDE bandwidth in *raw* (unscaled) data units (h = 0.1 there); adds kde_kl_h (+ floor)
    kde_h_raw: float | None = param(None, gt=0, doc="fixed KDE bandwidth in raw data units (seed 003)")
    # per-mode sample fractions vs the true weights (mode_fractions.json in the run dir)
    mode_fractions: bool = param(False, doc="per-mode sample fractions vs the true weights")
    # E|s_theta - grad log p_t|^2 against t from the exact score of the law (score_error.json)
    score_error: bool = param(False, doc="score error against t from the exact score (score_error.json)")
    score_error_n: int = param(2000, ge=1, doc="points per time of the score error")
    score_error_bins: int = param(40, ge=1, doc="times of the score-error curve")
    # learning curve (difflab.experiments.toy2d.curves): 0 (none) or 4m + 1 log-spaced points from 1/16 of
    # the budget to the end (m per doubling), on the first curve_n (<= n_test) test points; PF-ODE tolerance
    # curve_rtol; sliced W2 of curve_n_samples samples (0: none; curve_sample_steps steps of the first
    # sampler) + floor
    curve_points: int = param(9, ge=0, doc="learning-curve points (0: none; else 4m + 1)")
    curve_n: int = param(200, ge=1, doc="test points of the learning-curve metrics")
    curve_n_samples: int = param(250, ge=0, doc="samples of the curve's sliced W2 (0: none)")
    curve_sample_steps: int = param(50, ge=1, doc="sampler steps of the curve's samples")
    curve_rtol: float = param(1e-2, gt=0, le=0.1, doc="dopri5 rtol = atol of the curve's PF-ODE NLL")
    curve_nelbo_t_draws: int = param(64, ge=1, doc="t draws per point of the curve's NELBO")
    # verdict: "converged" when |m(S) - m(S/2)| <= max(2 se, verdict_rtol |m(S)| + verdict_atol), and so
    # for each of the last verdict_doublings doublings (the curve spans 4: S/16 .. S)
    verdict_rtol: float = param(0.1, ge=0, doc="relative tolerance of the convergence verdict")
    verdict_atol: float = param(0.0, ge=0, doc="absolute tolerance of the convergence verdict")
    verdict_doublings: int = param(
        1, ge=1, le=4, doc="last doublings of training that must each pass the verdict (1: the last only)"
    )

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
