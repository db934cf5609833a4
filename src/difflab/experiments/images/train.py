"""Training of one image run: its parts (data, process, objective, UNet), then the Trainer under validation
and early stopping (:mod:`difflab.experiments.training.validation`), sharded across ranks
(:class:`~difflab.experiments.training.dist.ShardedObjective`).

The training loss of step k is that of the :class:`~difflab.experiments.training.trainer.Trainer`: every
random draw (minibatch, flip, t, eps) comes from a generator seeded by (seed, k) alone, drawn for the
*global* batch.
Under DistributedDataParallel each of R ranks takes rows ``[r B/R, (r+1) B/R)`` of that global draw and DDP
averages the gradients, so R ranks compute exactly the gradient of the single-process mean over B
(up to float summation order): ``grad (1/B) sum_b l_b = (1/R) sum_r grad (R/B) sum_{b in shard r} l_b``.

Validation (every ``train.val_every`` steps, seed 001): the same objective on held-out images, evaluated with
the EMA weights and a fixed generator (the same t and eps at every validation, so the curve is not noise).
Early stopping (seed 001's rule ``epoch - last_improvement > patience``): stop once more than ``patience``
validations in a row failed to improve the best validation loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from difflab.experiments.common.configs import ConfigError
from difflab.experiments.common.rundir import check_checkpoint_config, check_trained, load_checkpoint
from difflab.experiments.images.config import ImageRunConfig, image_config_to_dict, image_total_steps
from difflab.experiments.training.curves import curve_steps
from difflab.experiments.training.dist import (
    SINGLE_PROCESS,
    DistInfo,
    ShardedObjective,
    model_dtype,
    resolve_device,
)
from difflab.experiments.training.trainer import Trainer
from difflab.experiments.training.validation import EvalHook, Validation, train_with_validation


@dataclass
class ImageParts:
    """Everything a run is built from (the only place where config names become objects)."""

    config: ImageRunConfig
    process: Any
    objective: Any  # DenoisingObjective
    x_train: Tensor  # (N, C, H, W) in [-1, 1] on the run's device (capped by data.n_train)
    x_val: Tensor  # held-out images on the device (capped by data.n_val)
    train_data: Any  # ImageData, full train split (for the feature classifier)
    test_data: Any  # ImageData, full test split
    unet: nn.Module
    denoiser: nn.Module  # TargetDenoiser(unet)
    total_steps: int
    device: torch.device
    levels: int  # grey levels of the data (256 for 8-bit images, 17 for digits)


#: validation also at the log-spaced points S/16, S/8, S/4, S/2, S of the budget S (one per doubling), so an
#: image run's learning curve has its half-budget point for the verdict whatever ``train.val_every`` is
IMAGE_CURVE_POINTS = 5

DATA_LEVELS = {"digits": 17, "mnist": 256, "fashion_mnist": 256, "cifar10": 256}


def load_split(config: ImageRunConfig, split: str) -> Any:
    """One split as :class:`~difflab.data.images.ImageData`; missing/corrupt files become ConfigError."""
    from difflab.data.images import DatasetError, load_image_data

    try:
        return load_image_data(config.data.name, config.data.root, split)
    except DatasetError as err:
        raise ConfigError(f"data ({config.data.name}, root={config.data.root!r}): {err}") from None


def build_unet(config: ImageRunConfig, shape: tuple[int, int, int]) -> nn.Module:
    """The UNet of ``config.model`` initialised from ``train.seed`` (the global RNG state is left alone)."""
    from difflab.models.unet import UNet

    m = config.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return UNet(
            shape[0],
            m.channels,
            m.channel_mults,
            m.num_res_blocks,
            m.attn_resolutions,
            m.dropout,
            image_size=shape[1],
            num_heads=m.num_heads,
            scale_shift=m.scale_shift,
        )


def build_denoiser(config: ImageRunConfig, process: Any, net: nn.Module) -> nn.Module:
    """TargetDenoiser with data_std = 0.5 (images in [-1, 1]) for the optional input scaling c_in and EDM's
    preconditioning (``model.preconditioning``)."""
    from difflab.parameterization import TargetDenoiser

    m = config.model
    return TargetDenoiser(
        net,
        process,
        config.objective.target,
        m.input_scaling,
        data_std=0.5,
        preconditioning=m.preconditioning,
        time_input=m.time_input,
    )


def build_image_parts(
    config: ImageRunConfig, dist: DistInfo = SINGLE_PROCESS, verbose: bool = False
) -> ImageParts:
    """Load the data, build process, objective, UNet and denoiser on the configured device."""
    from difflab.objectives import build_objective
    from difflab.processes import build_process

    device = resolve_device(config.train.device, dist)
    train, test = load_split(config, "train"), load_split(config, "test")
    process = build_process(config.process.name, **config.process.options)
    obj = config.objective
    objective = build_objective(process, obj.target, obj.weighting, obj.time_dist, obj.norm, **obj.options)
    x_train = train.images[: config.data.n_train] if config.data.n_train else train.images
    x_val = test.images[: config.data.n_val] if config.data.n_val else test.images
    if x_train.shape[0] < 2 or x_val.shape[0] < 2:
        raise ConfigError(
            f"need at least 2 training and 2 held-out images, got {x_train.shape[0]} and {x_val.shape[0]}"
        )
    dtype = model_dtype(config.train.precision)
    unet = build_unet(config, train.shape).to(device=device, dtype=dtype)
    if verbose and dist.is_main:
        print(unet.describe())
    denoiser = build_denoiser(config, process, unet)
    total = image_total_steps(config, x_train.shape[0])
    return ImageParts(
        config,
        process,
        objective,
        x_train.to(device=device, dtype=dtype),
        x_val.to(device=device, dtype=dtype),
        train,
        test,
        unet,
        denoiser,
        total,
        device,
        DATA_LEVELS[config.data.name],
    )


def ddp_forward_model(parts: ImageParts, dist: DistInfo) -> nn.Module | None:
    """The denoiser whose network is wrapped in DistributedDataParallel (shares parameters), or None."""
    if dist.world_size <= 1:
        return None
    from torch.nn.parallel import DistributedDataParallel

    ids = [parts.device.index] if parts.device.type == "cuda" else None
    return build_denoiser(parts.config, parts.process, DistributedDataParallel(parts.unet, device_ids=ids))


def train_image_model(
    parts: ImageParts,
    run_dir: str | None,
    dist: DistInfo = SINGLE_PROCESS,
    eval_hook: EvalHook | None = None,
    progress: bool = False,
    on_eval: Callable[[list[dict]], None] | None = None,
) -> Any:
    """Train (resuming from ``run_dir/checkpoint.pt``), validating every ``val_every`` steps
    (:func:`~difflab.experiments.training.validation.train_with_validation`).

    Every rank computes the validation loss (identical parameters give identical values, so the early
    stopping decision agrees without communication); ``eval_hook`` and ``on_eval`` (CSV, PNG) run on rank 0.
    Returns the Trainer (``trainer.extra["stopped_early"]`` is the step at which early stopping fired).
    """
    cfg = parts.config
    tr = cfg.train
    if tr.batch_size % dist.world_size:
        raise ConfigError(
            f"train.batch_size {tr.batch_size} must be divisible by the world size {dist.world_size}"
        )
    objective = ShardedObjective(parts.objective, cfg.data.flip, dist, tr.precision, parts.device)
    trainer = Trainer(
        parts.denoiser,
        objective,
        parts.x_train,
        tr,
        parts.total_steps,
        run_dir,
        forward_model=ddp_forward_model(parts, dist),
        write=dist.is_main,
        identity=image_config_to_dict(cfg),
    )
    trainer.maybe_resume()
    bar = None
    if progress and dist.is_main:
        from tqdm import tqdm

        bar = tqdm(total=parts.total_steps, initial=trainer.step, desc=cfg.label or "train", leave=False)

    def callback(step: int, loss: float) -> None:
        if bar is not None:
            bar.n = step
            bar.set_postfix(loss=f"{loss:.4g}")
            bar.refresh()

    points = tuple(curve_steps(parts.total_steps, IMAGE_CURVE_POINTS, tr.log_every))
    v = Validation(
        parts.objective, parts.x_val, tr.val_every, tr.patience, tr.precision, dist.is_main, points
    )
    train_with_validation(trainer, v, eval_hook, callback, on_eval)
    if bar is not None:
        bar.close()
    return trainer


def grad_norm_summary(history: Any) -> dict[str, float]:
    """Instability figures of a run from its pre-clip gradient-norm history (Trainer.history):
    ``grad_norm_max`` = the largest single-step norm, ``grad_norm_median`` = the median over log intervals of
    the interval mean, ``grad_spike_ratio`` = their ratio (seed 001's loss-weight spikes show up here even
    when ``train.grad_clip`` keeps them out of the update). Empty history: {}."""
    if not history.grad_norm:
        return {}
    peak = max(history.grad_norm_max)
    median = float(torch.tensor(history.grad_norm, dtype=torch.float64).median())
    ratio = peak / median if median > 0 else float("inf")
    return {"grad_norm_max": peak, "grad_norm_median": median, "grad_spike_ratio": ratio}


def checkpoint_path(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoint.pt")


def load_ema_denoiser(
    config: ImageRunConfig, run_dir: str, device: torch.device, finished: bool = False
) -> nn.Module:
    """The run's denoiser carrying the EMA weights from ``run_dir/checkpoint.pt`` (eval mode). RunDirError
    for a corrupt checkpoint, one of another config, a diverged run, or (``finished``) an unfinished one."""
    from difflab.data.images import dataset_shape
    from difflab.processes import build_process

    path = checkpoint_path(run_dir)
    state = load_checkpoint(path, map_location=device)
    check_checkpoint_config(state, image_config_to_dict(config), path)
    check_trained(state, path, finished=finished)
    process = build_process(config.process.name, **config.process.options)
    unet = build_unet(config, dataset_shape(config.data.name)).to(
        device=device, dtype=model_dtype(config.train.precision)
    )
    den = build_denoiser(config, process, unet)
    with torch.no_grad():
        for p, q in zip(den.parameters(), state["ema"], strict=True):
            p.copy_(q)
    return den.eval()
