"""Strict, frozen configuration of one image run (seed 000 / seed 001 image studies).

A run config is a nested dict (from TOML, ``difflab train`` or a study) turned into frozen dataclasses by
:func:`parse_image_config`; unknown keys and wrong types raise
:class:`~difflab.experiments.common.configs.ConfigError`
naming the key and the valid ones (the same rules as the 2D configs, plus integer lists for the UNet).
:func:`validate_image_config` also checks every *name* (process, schedule, target, weighting, time
distribution, norm, sampler, grid, optimizer, data set, feature network) against its table and the
cross-field rules (batch divisible into steps, checkpoint/validation on log boundaries, ...).

Defaults follow seed 001 (Ho et al. 2020 DDPM: eps target, unit weight "L_simple", t ~ U{1..T}, T = 1000
linear betas) on the bundled 8x8 digits; evaluation uses 10,000 samples by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from difflab.experiments.common.configs import (
    ConfigError,
    check_choice,
    check_device,
    check_sampler_options,
    parse_dataclass,
    to_dict,
)

PRECISIONS = ("fp32", "bf16", "fp64")
FEATURES = ("classifier", "inception")


@dataclass(frozen=True)
class ImageDataConfig:
    name: str = "digits"  # digits | mnist | fashion_mnist | cifar10
    root: str | None = None  # directory with the IDX / CIFAR files (ignored for digits)
    flip: bool = False  # random horizontal flip of training batches (seed 001 flipped every data set)
    n_train: int | None = None  # cap on training images (None: all)
    n_val: int | None = None  # cap on held-out images used for validation loss and metrics (None: all)


@dataclass(frozen=True)
class ImageProcessConfig:
    name: str = "ddpm"
    options: dict = field(default_factory=dict)  # ddpm: T (default 1000), schedule (default "linear")


@dataclass(frozen=True)
class ImageObjectiveConfig:
    target: str = "eps"
    weighting: str = "eps_simple"
    time_dist: str = "discrete"
    norm: str = "l2"
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ImageModelConfig:
    channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (4,)
    dropout: float = 0.0
    num_heads: int = 1
    scale_shift: bool = False
    input_scaling: bool = False


@dataclass(frozen=True)
class ImageTrainConfig:
    steps: int = 20_000
    epochs: float | None = None  # if set, overrides steps: round(epochs * n_train / batch_size)
    batch_size: int = 128  # the *global* batch (split across ranks under torchrun)
    lr: float = 2e-4
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup: int = 200
    ema: float = 0.999
    grad_clip: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp64 (reference numerics)
    device: str = "cpu"  # cpu | cuda (cuda:<local rank> under torchrun)
    val_every: int = 1000  # validation loss, sample grid PNG and tracked FID/IS every this many steps
    patience: int = 0  # early stopping: stop after this many validations without improvement (0: off)
    checkpoint_every: int = 1000
    log_every: int = 50
    time_bins: int = 20
    seed: int = 0


@dataclass(frozen=True)
class ImageEvalConfig:
    enabled: bool = True  # False: train only (no final sampling or metrics)
    sampler: str = "ancestral"  # ancestral | ddim | any samplers name
    steps: int = 1000  # grid steps; on a DDPM chain at most T - 1 (the full chain: NFE = T)
    eta: float = 0.0  # deprecated alias of sampler_options.eta (DDIM's eta; ddim only)
    # options of the chosen sampler, e.g. {eta = 0.5} for "ddim", {snr = 0.16} for "pc" (see difflab.samplers)
    sampler_options: dict = field(default_factory=dict)
    grid: str = "auto"  # auto: "discrete" on a DDPM chain, else "uniform_logsnr"
    n_samples: int = 10_000
    batch: int = 1000  # sampling batch
    features: str = "classifier"  # classifier (trained on the data set, cached) | inception (local file)
    inception_path: str | None = None
    classifier_epochs: int = 10
    cache_dir: str | None = None  # classifier cache (default $DIFFLAB_CACHE or ~/.cache/difflab)
    n_track: int = 1000  # samples for FID/IS at each validation (0: none)
    track_steps: int = 100  # sampler steps for the tracked FID/IS and the grid PNG
    n_grid: int = 64
    bpd: bool = True  # discrete NELBO with the discretized decoder, bits/dim
    n_bpd: int = 1000
    bpd_mc_steps: int = 0  # 0: all T - 1 step KLs exactly; k > 0: k Monte-Carlo steps per image
    bpd_levels: int = 1000  # T of the discrete ELBO for a continuous process (a chain uses its own T)
    pf_ode: bool = True  # PF-ODE bits/dim, Hutchinson divergence, uniform dequantization
    n_pf_ode: int = 256
    pf_ode_solver: str = "dopri5"
    pf_ode_steps: int = 50  # rk4 / heun only
    pf_ode_rtol: float = 1e-4
    pf_ode_probes: int = 1  # Rademacher probes of Hutchinson's divergence estimator
    # lower endpoint of both bits/dim figures: sigma/alpha = this many half-bins of the data's grid (0: the
    # process's own t_min); see difflab.experiments.images.evaluate.likelihood_process (issue 9, item 1b)
    bpd_sigma_min: float = 1.5
    seed: int = 1234

    def options(self) -> dict[str, Any]:
        """The sampler options of the run: ``sampler_options``, with the ``eta`` alias when it is set."""
        return {**({"eta": self.eta} if self.eta != 0.0 else {}), **self.sampler_options}


@dataclass(frozen=True)
class ImageRunConfig:
    kind: str = "images"
    label: str = ""
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    process: ImageProcessConfig = field(default_factory=ImageProcessConfig)
    objective: ImageObjectiveConfig = field(default_factory=ImageObjectiveConfig)
    model: ImageModelConfig = field(default_factory=ImageModelConfig)
    train: ImageTrainConfig = field(default_factory=ImageTrainConfig)
    eval: ImageEvalConfig = field(default_factory=ImageEvalConfig)


def parse_image_config(data: dict) -> ImageRunConfig:
    """Nested dict -> :class:`ImageRunConfig`; unknown keys / wrong types raise ConfigError."""
    return parse_dataclass(ImageRunConfig, data, "")


def image_config_to_dict(config: ImageRunConfig) -> dict:
    """JSON-ready dict (tuples as lists); ``parse_image_config`` of it gives the config back."""
    return to_dict(config)


def image_total_steps(config: ImageRunConfig, n_train: int) -> int:
    """Optimizer steps: ``train.steps``, or ``round(epochs * n_train / batch_size)`` when epochs is set."""
    tr = config.train
    if tr.epochs is not None:
        return max(1, round(tr.epochs * n_train / tr.batch_size))
    return tr.steps


def _check_names(config: ImageRunConfig) -> Any:
    """Every name against its table (UnknownNameError / ConfigError listing the choices); returns the
    process."""
    from difflab.data.images import IMAGE_DATASETS
    from difflab.experiments.training.trainer import LR_SCHEDULES, OPTIMIZERS
    from difflab.likelihood.pf_ode import SOLVERS
    from difflab.objectives import build_objective
    from difflab.processes import build_process
    from difflab.registry import lookup
    from difflab.samplers import GRIDS, SAMPLERS

    tr, ev = config.train, config.eval
    check_choice(IMAGE_DATASETS, config.data.name, "image data set")
    process = build_process(config.process.name, **config.process.options)
    obj = config.objective
    build_objective(process, obj.target, obj.weighting, obj.time_dist, obj.norm, **obj.options)
    lookup(OPTIMIZERS, tr.optimizer, "optimizer")
    check_choice(LR_SCHEDULES, tr.lr_schedule, "lr schedule")
    check_choice(PRECISIONS, tr.precision, "precision")
    check_device(tr.device)
    lookup(SAMPLERS, ev.sampler, "sampler")
    if ev.grid != "auto":
        lookup(GRIDS, ev.grid, "grid")
    check_choice(FEATURES, ev.features, "feature network")
    check_choice(SOLVERS, ev.pf_ode_solver, "PF-ODE solver")
    check_sampler_options(ev.options(), SAMPLERS, [ev.sampler])
    return process


def _check_ranges(config: ImageRunConfig) -> None:
    tr, ev, m = config.train, config.eval, config.model
    positive = {
        "train.batch_size": tr.batch_size,
        "train.val_every": tr.val_every,
        "train.log_every": tr.log_every,
        "train.time_bins": tr.time_bins,
        "eval.steps": ev.steps,
        "eval.batch": ev.batch,
        "eval.track_steps": ev.track_steps,
        "model.channels": m.channels,
        "model.num_res_blocks": m.num_res_blocks,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if tr.lr <= 0 or (tr.epochs is None and tr.steps < 1) or (tr.epochs is not None and tr.epochs <= 0):
        raise ConfigError("train.lr and train.steps (or train.epochs) must be positive")
    if not 0.0 <= tr.ema < 1.0:
        raise ConfigError(f"train.ema must lie in [0, 1), got {tr.ema}")
    if tr.patience < 0:
        raise ConfigError(f"train.patience must be >= 0 (0 disables early stopping), got {tr.patience}")
    if not m.channel_mults or any(v < 1 for v in m.channel_mults):
        raise ConfigError(
            f"model.channel_mults must be a non-empty array of positive integers, got {m.channel_mults}"
        )
    if ev.bpd_sigma_min < 0 or ev.pf_ode_probes < 1:
        raise ConfigError("eval.bpd_sigma_min must be >= 0 and eval.pf_ode_probes >= 1")
    if ev.enabled and ev.n_samples < 2:
        raise ConfigError(f"eval.n_samples must be >= 2, got {ev.n_samples}")


def _check_cross_fields(config: ImageRunConfig, process: Any) -> None:
    from difflab.processes import DiscreteChain

    tr, ev = config.train, config.eval
    for key in ("val_every", "checkpoint_every"):
        value = getattr(tr, key)
        if value % tr.log_every:
            raise ConfigError(f"train.{key} ({value}) must be a multiple of train.log_every ({tr.log_every})")
    if ev.features == "inception" and not ev.inception_path:
        raise ConfigError("eval.features = 'inception' needs eval.inception_path (a local TorchScript file)")
    if ev.eta != 0.0 and "eta" in ev.sampler_options:
        raise ConfigError("set eval.sampler_options.eta or its alias eval.eta, not both")
    if ev.grid == "discrete" and not isinstance(process, DiscreteChain):
        raise ConfigError("eval.grid = 'discrete' needs a DDPM chain process (process.name = 'ddpm')")
    if config.data.name != "digits" and not config.data.root:
        raise ConfigError(
            f"data.name = {config.data.name!r} needs data.root (a local directory; nothing is downloaded)"
        )


def validate_image_config(data: dict | ImageRunConfig) -> ImageRunConfig:
    """Parse (if needed) and check every name and cross-field rule; raises ConfigError. Reads no data."""
    from difflab.registry import UnknownNameError

    config = parse_image_config(data) if isinstance(data, dict) else data
    if config.kind != "images":
        raise ConfigError(f"kind {config.kind!r}: an image run config must have kind 'images'")
    try:
        process = _check_names(config)
    except ConfigError:
        raise
    except (UnknownNameError, ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None
    _check_ranges(config)
    _check_cross_fields(config, process)
    return config
