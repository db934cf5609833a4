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
    check_denoiser_options,
    check_device,
    check_process_range,
    check_sampler_options,
    domain,
    param,
    parse_dataclass,
    to_dict,
)

PRECISIONS = ("fp32", "bf16", "fp64")
FEATURES = ("classifier", "inception")


@dataclass(frozen=True)
class ImageDataConfig:
    name: str = param("digits", doc="digits | mnist | fashion_mnist | cifar10")
    root: str | None = param(None, doc="directory with the IDX / CIFAR files (ignored for digits)")
    flip: bool = param(False, doc="random horizontal flip of training batches (seed 001 flipped all)")
    n_train: int | None = param(None, ge=2, doc="cap on training images (None: all)")
    n_val: int | None = param(None, ge=2, doc="cap on held-out images for validation and metrics")


@dataclass(frozen=True)
class ImageProcessConfig:
    name: str = param("ddpm", doc="forward process (difflab.processes.PROCESSES)")
    options: dict = field(
        default_factory=dict, metadata=domain("ddpm: T (default 1000, >= 2), schedule (default linear)")
    )


@dataclass(frozen=True)
class ImageObjectiveConfig:
    target: str = param("eps", doc="network target: x0 | eps | v | score")
    weighting: str = param("eps_simple", doc="loss weighting w(lambda)")
    time_dist: str = param("discrete", doc="training-time distribution")
    norm: str = param("l2", doc="l2 | l1 | pseudo_huber")
    options: dict = field(default_factory=dict, metadata=domain("objective options"))


@dataclass(frozen=True)
class ImageModelConfig:
    channels: int = param(32, ge=1, doc="base channels of the UNet")
    channel_mults: tuple[int, ...] = param((1, 2, 2), ge=1, min_len=1, doc="channel multiplier per level")
    num_res_blocks: int = param(2, ge=1, doc="residual blocks per level")
    attn_resolutions: tuple[int, ...] = param((4,), ge=1, doc="resolutions with self-attention")
    dropout: float = param(0.0, ge=0, lt=1, doc="dropout probability")
    num_heads: int = param(1, ge=1, doc="attention heads")
    scale_shift: bool = param(False, doc="FiLM scale-shift time conditioning")
    input_scaling: bool = param(False, doc="c_in scaling of the network input")
    # "none", "edm" (Karras et al. 2022 eq. 7, x0 target; sigma_data = 0.5: images in [-1, 1]) or
    # "scale_by_sigma" (s = -F / sigma_t, score target)
    preconditioning: str = param(
        "none", doc="none | edm (Karras et al. 2022 eq. 7; x0) | scale_by_sigma (s = -F / sigma_t; score)"
    )
    time_input: str = param(
        "t", doc="network time input: t | logsnr (log-SNR rescaled to [0, 1]; Kingma et al. 2021)"
    )


@dataclass(frozen=True)
class ImageTrainConfig:
    steps: int = param(20_000, ge=1, doc="optimizer steps")
    epochs: float | None = param(None, gt=0, doc="if set, overrides steps: round(epochs * n_train / batch)")
    batch_size: int = param(128, ge=1, doc="the *global* batch (split across ranks under torchrun)")
    lr: float = param(2e-4, gt=0, doc="peak learning rate")
    optimizer: str = param("adamw", doc="adam | adamw")
    weight_decay: float = param(0.0, ge=0, doc="weight decay")
    lr_schedule: str = param("constant", doc="constant | cosine (after warm-up)")
    warmup: int = param(200, ge=0, doc="linear warm-up steps")
    ema: float = param(0.999, ge=0, lt=1, doc="EMA decay of the evaluated weights")
    grad_clip: float = param(1.0, ge=0, doc="gradient-norm clip (0: off)")
    precision: str = param("fp32", doc="fp32 | bf16 (autocast) | fp64")
    device: str = param("cpu", doc="cpu | cuda (cuda:<local rank> under torchrun)")
    val_every: int = param(1000, ge=1, doc="steps between validation loss, grid PNG and tracked FID/IS")
    patience: int = param(0, ge=0, doc="early stopping after this many validations without gain (0: off)")
    checkpoint_every: int = param(1000, ge=0, doc="steps between checkpoints")
    log_every: int = param(50, ge=1, doc="steps per logged loss")
    time_bins: int = param(20, ge=1, doc="bins of the loss-by-time curve")
    seed: int = param(0, doc="seed of initialisation, minibatches, t and eps")


@dataclass(frozen=True)
class ImageEvalConfig:
    enabled: bool = param(True, doc="False: train only (no final sampling or metrics)")
    sampler: str = param("ancestral", doc="ancestral | ddim | any samplers name")
    steps: int = param(1000, ge=1, doc="grid steps; on a DDPM chain at most T - 1 (full chain: NFE = T)")
    eta: float = param(0.0, ge=0, doc="deprecated alias of sampler_options.eta (ddim only)")
    # options of the chosen sampler, e.g. {eta = 0.5} for "ddim", {snr = 0.16} for "pc" (see difflab.samplers)
    sampler_options: dict = field(default_factory=dict, metadata=domain("options of the chosen sampler"))
    grid: str = param("auto", doc="auto: discrete on a DDPM chain, else uniform_logsnr")
    n_samples: int = param(10_000, ge=2, doc="samples of the final metrics")
    batch: int = param(1000, ge=1, doc="sampling batch")
    features: str = param("classifier", doc="classifier (cached) | inception (local file)")
    inception_path: str | None = param(None, doc="local TorchScript Inception file")
    classifier_epochs: int = param(10, ge=1, doc="epochs of the feature classifier")
    cache_dir: str | None = param(None, doc="classifier cache (default $DIFFLAB_CACHE or ~/.cache/difflab)")
    n_track: int = param(1000, ge=0, doc="samples for FID/IS at each validation (0: none)")
    track_steps: int = param(100, ge=1, doc="sampler steps for the tracked FID/IS and the grid PNG")
    n_grid: int = param(64, ge=1, doc="images in a grid PNG")
    bpd: bool = param(True, doc="discrete NELBO with the discretized decoder, bits/dim")
    n_bpd: int = param(1000, ge=1, doc="images of the bits/dim estimate")
    bpd_mc_steps: int = param(0, ge=0, doc="0: all T - 1 step KLs exactly; k > 0: k Monte-Carlo steps")
    bpd_levels: int = param(1000, ge=2, doc="T of the discrete ELBO for a continuous process")
    pf_ode: bool = param(True, doc="PF-ODE bits/dim, Hutchinson divergence, uniform dequantization")
    n_pf_ode: int = param(256, ge=1, doc="images of the PF-ODE bits/dim")
    pf_ode_solver: str = param("dopri5", doc="PF-ODE solver")
    pf_ode_steps: int = param(50, ge=1, doc="steps of rk4 / heun")
    pf_ode_rtol: float = param(1e-4, gt=0, le=1e-2, doc="dopri5 rtol of the PF-ODE")
    pf_ode_probes: int = param(1, ge=1, doc="Rademacher probes of Hutchinson's divergence estimator")
    # lower endpoint of both bits/dim figures: sigma/alpha = this many half-bins of the data's grid (0: the
    # process's own t_min); see difflab.experiments.images.bpd.likelihood_process (issue 9, item 1b)
    bpd_sigma_min: float = param(1.5, ge=0, doc="lower endpoint of the bits/dim figures, in half-bins")
    seed: int = param(1234, doc="seed of sampling and evaluation")

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
    check_denoiser_options(config.model.preconditioning, config.model.time_input, obj.target)
    check_choice(SOLVERS, ev.pf_ode_solver, "PF-ODE solver")
    check_sampler_options(ev.options(), SAMPLERS, [ev.sampler])
    check_process_range(process)
    return process


def _check_ranges(config: ImageRunConfig) -> None:
    """What a field's own domain cannot say (each field's range is in its schema above)."""
    tr, data = config.train, config.data
    n_train = data.n_train
    if tr.epochs is not None and n_train is not None and round(tr.epochs * n_train / tr.batch_size) < 1:
        raise ConfigError(
            f"train.epochs = {tr.epochs:g} gives no step at data.n_train {data.n_train}, "
            f"batch_size {tr.batch_size}"
        )
    if data.n_train is not None and tr.batch_size > data.n_train:
        raise ConfigError(f"train.batch_size ({tr.batch_size}) exceeds data.n_train ({data.n_train})")


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


def same_run_key(raw: dict) -> str | None:
    """The key of what the image run computes
    (:func:`~difflab.experiments.common.configs.same_objective_key`)."""
    from difflab.experiments.common.configs import same_objective_key
    from difflab.objectives import build_objective
    from difflab.processes import build_process

    config = validate_image_config(dict(raw))
    process = build_process(config.process.name, **config.process.options)
    obj = config.objective
    objective = build_objective(process, obj.target, obj.weighting, obj.time_dist, obj.norm, **obj.options)
    return same_objective_key(image_config_to_dict(config), process, objective)
