"""Strict, frozen configuration of one image run (seed 000 / seed 001 image studies).

A run config is a nested dict (from TOML, ``difflab train`` or a study) turned into frozen dataclasses by
:func:`parse_image_config`; unknown keys and wrong types raise
:class:`~difflab.experiments.config.ConfigError`
naming the key and the valid ones (the same rules as the 2D configs, plus integer lists for the UNet).
:func:`validate_image_config` also checks every *name* (process, schedule, target, weighting, time
distribution, norm, sampler, grid, optimizer, data set, feature network) against its table and the
cross-field rules (batch divisible into steps, checkpoint/validation on log boundaries, ...).

Defaults follow seed 001 (Ho et al. 2020 DDPM: eps target, unit weight "L_simple", t ~ U{1..T}, T = 1000
linear betas) on the bundled 8x8 digits; evaluation uses 10,000 samples by default.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from difflab.experiments.config import ConfigError, _check_type

PRECISIONS = ("fp32", "bf16", "fp64")
DEVICES = ("cpu", "cuda")
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
    eta: float = 0.0  # DDIM eta (ddim only)
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
    seed: int = 1234


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


def _check(value: Any, hint: Any, where: str) -> Any:
    """Type check with integer lists (``tuple[int, ...]``) on top of the 2D configs' rules."""
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected an array of integers, got {value!r}")
        return tuple(_check_type(v, int, f"{where}[{i}]") for i, v in enumerate(value))
    return _check_type(value, hint, where)


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where_txt = f" in [{where}]" if where else ""
        raise ConfigError(
            f"unknown key {'.'.join(filter(None, [where, unknown[0]]))!r}; "
            f"valid keys{where_txt}: {', '.join(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        kwargs[name] = (
            _build(hint, value, key) if dataclasses.is_dataclass(hint) else _check(value, hint, key)
        )
    return cls(**kwargs)


def parse_image_config(data: dict) -> ImageRunConfig:
    """Nested dict -> :class:`ImageRunConfig`; unknown keys / wrong types raise ConfigError."""
    return _build(ImageRunConfig, data, "")


def image_config_to_dict(config: ImageRunConfig) -> dict:
    """JSON-ready dict (tuples as lists); ``parse_image_config`` of it gives the config back."""
    return json_ready(dataclasses.asdict(config))


def json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    return obj


def image_total_steps(config: ImageRunConfig, n_train: int) -> int:
    """Optimizer steps: ``train.steps``, or ``round(epochs * n_train / batch_size)`` when epochs is set."""
    tr = config.train
    if tr.epochs is not None:
        return max(1, round(tr.epochs * n_train / tr.batch_size))
    return tr.steps


def validate_image_config(data: dict | ImageRunConfig) -> ImageRunConfig:
    """Parse (if needed) and check every name and cross-field rule; raises ConfigError. Reads no data."""
    from difflab.data.images import IMAGE_DATASETS
    from difflab.experiments.trainer import LR_SCHEDULES, OPTIMIZERS
    from difflab.likelihood.pf_ode import SOLVERS
    from difflab.objectives import build_objective
    from difflab.processes import DiscreteChain, build_process
    from difflab.registry import UnknownNameError, lookup
    from difflab.samplers import GRIDS, SAMPLERS

    config = parse_image_config(data) if isinstance(data, dict) else data
    if config.kind != "images":
        raise ConfigError(f"kind {config.kind!r}: an image run config must have kind 'images'")
    tr, ev, m = config.train, config.eval, config.model
    try:
        lookup({n: n for n in IMAGE_DATASETS}, config.data.name, "image data set")
        process = build_process(config.process.name, **config.process.options)
        obj = config.objective
        build_objective(process, obj.target, obj.weighting, obj.time_dist, obj.norm, **obj.options)
        lookup(OPTIMIZERS, tr.optimizer, "optimizer")
        lookup({s: s for s in LR_SCHEDULES}, tr.lr_schedule, "lr schedule")
        lookup({p: p for p in PRECISIONS}, tr.precision, "precision")
        lookup({d: d for d in DEVICES}, tr.device, "device")
        lookup(SAMPLERS, ev.sampler, "sampler")
        if ev.grid != "auto":
            lookup(GRIDS, ev.grid, "grid")
        lookup({f: f for f in FEATURES}, ev.features, "feature network")
        lookup({s: s for s in SOLVERS}, ev.pf_ode_solver, "PF-ODE solver")
    except (UnknownNameError, ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(str(err)) from None
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
    for key in ("val_every", "checkpoint_every"):
        value = getattr(tr, key)
        if value % tr.log_every:
            raise ConfigError(f"train.{key} ({value}) must be a multiple of train.log_every ({tr.log_every})")
    if not m.channel_mults or any(v < 1 for v in m.channel_mults):
        raise ConfigError(
            f"model.channel_mults must be a non-empty array of positive integers, got {m.channel_mults}"
        )
    if ev.enabled and ev.n_samples < 2:
        raise ConfigError(f"eval.n_samples must be >= 2, got {ev.n_samples}")
    if ev.features == "inception" and not ev.inception_path:
        raise ConfigError("eval.features = 'inception' needs eval.inception_path (a local TorchScript file)")
    if ev.eta != 0.0 and ev.sampler != "ddim":
        raise ConfigError(f"eval.eta applies to the ddim sampler only (sampler is {ev.sampler!r})")
    if ev.grid == "discrete" and not isinstance(process, DiscreteChain):
        raise ConfigError("eval.grid = 'discrete' needs a DDPM chain process (process.name = 'ddpm')")
    if config.data.name != "digits" and not config.data.root:
        raise ConfigError(
            f"data.name = {config.data.name!r} needs data.root (a local directory; nothing is downloaded)"
        )
    return config
