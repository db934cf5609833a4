"""Training of one image run: parts, the sharded common-random-numbers objective, validation, early stopping.

The training loss of step k is that of the :class:`~difflab.experiments.trainer.Trainer`: every random draw
(minibatch, flip, t, eps) comes from a generator seeded by (seed, k) alone, drawn for the *global* batch.
Under DistributedDataParallel each of R ranks takes rows ``[r B/R, (r+1) B/R)`` of that global draw and DDP
averages the gradients, so R ranks compute exactly the gradient of the single-process mean over B
(up to float summation order): ``grad (1/B) sum_b l_b = (1/R) sum_r grad (R/B) sum_{b in shard r} l_b``.

Validation (every ``train.val_every`` steps, seed 001): the same objective on held-out images, evaluated with
the EMA weights and a fixed generator (the same t and eps at every validation, so the curve is not noise).
Early stopping (seed 001's rule ``epoch - last_improvement > patience``): stop once more than ``patience``
validations in a row failed to improve the best validation loss.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from difflab.experiments.config import ConfigError
from difflab.experiments.images_config import ImageRunConfig, image_total_steps

_VAL_SALT = 0x7A1D


@dataclass(frozen=True)
class DistInfo:
    """Rank and world size of this process (``rank = 0, world_size = 1`` without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


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


def resolve_device(name: str, dist: DistInfo = DistInfo()) -> torch.device:
    """``cpu`` or ``cuda`` (``cuda:<local rank>`` under torchrun); cuda without a GPU is a ConfigError."""
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device = 'cuda' but torch.cuda.is_available() is False on this machine")
        return torch.device("cuda", dist.local_rank if dist.world_size > 1 else torch.cuda.current_device())
    return torch.device("cpu")


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
    """TargetDenoiser with data_std = 0.5 (images in [-1, 1]) for the optional input scaling c_in."""
    from difflab.parameterization import TargetDenoiser

    return TargetDenoiser(
        net, process, config.objective.target, input_scaling=config.model.input_scaling, data_std=0.5
    )


def build_image_parts(
    config: ImageRunConfig, dist: DistInfo = DistInfo(), verbose: bool = False
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
    dtype = model_dtype(config)
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


def model_dtype(config: ImageRunConfig) -> torch.dtype:
    """float64 for ``precision = "fp64"`` (reference numerics, e.g. equivalence tests), else float32."""
    return torch.float64 if config.train.precision == "fp64" else torch.float32


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast of the forward pass (``precision = "bf16"``); a no-op for fp32."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class ShardedObjective:
    """``objective(model, x0_global, generator=g)`` for the Trainer: random flip, t and eps drawn for the
    whole global batch from ``g`` (in that order), then this rank's rows, under autocast.

    With ``world_size = 1`` it is the plain objective on the whole batch with explicit draws.
    """

    def __init__(
        self, objective: Any, flip: bool, dist: DistInfo, precision: str, device: torch.device
    ) -> None:
        self.objective = objective
        self.flip = flip
        self.dist = dist
        self.precision = precision
        self.device = device

    def __call__(self, model: nn.Module, x0: Tensor, *, generator: torch.Generator) -> Any:
        B = x0.shape[0]
        if B % self.dist.world_size:
            raise ValueError(f"global batch {B} is not divisible by the world size {self.dist.world_size}")
        if self.flip:
            mask = (torch.rand(B, generator=generator) < 0.5).to(x0.device)
            x0 = torch.where(mask.view(-1, 1, 1, 1), x0.flip(-1), x0)
        t, _ = self.objective.time_dist.sample(B, generator)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        b = B // self.dist.world_size
        lo, hi = self.dist.rank * b, (self.dist.rank + 1) * b
        with autocast(self.device, self.precision):
            return self.objective(model, x0[lo:hi], t=t[lo:hi], eps=eps[lo:hi])


@torch.no_grad()
def validation_loss(
    objective: Any, denoiser: nn.Module, x_val: Tensor, seed: int, batch: int, precision: str = "fp32"
) -> float:
    """Mean per-example objective on held-out images; one fixed generator, so every call draws the same
    t and eps (common random numbers across validations and across arms)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + _VAL_SALT) % (2**63 - 1))
    was = denoiser.training
    denoiser.eval()
    total, n = 0.0, 0
    for i in range(0, x_val.shape[0], batch):
        xb = x_val[i : i + batch]
        with autocast(xb.device, precision):
            out = objective(denoiser, xb, generator=g)
        total += float(out.loss.detach().to(torch.float64).sum())
        n += xb.shape[0]
    denoiser.train(was)
    return total / max(1, n)


@dataclass
class EarlyStopping:
    """Seed 001's patience rule on a validation-loss sequence.

    ``update(value)`` returns True when training should stop: more than ``patience`` consecutive
    validations without a strict improvement of the best value (NaN never improves). ``patience = 0``
    disables it.
    """

    patience: int
    best: float = math.inf
    best_step: int = -1
    since_best: int = 0
    history: list[float] = field(default_factory=list)

    def update(self, value: float, step: int = -1) -> bool:
        self.history.append(value)
        if math.isfinite(value) and value < self.best:
            self.best, self.best_step, self.since_best = value, step, 0
        else:
            self.since_best += 1
        return self.patience > 0 and self.since_best > self.patience

    def state(self) -> dict:
        return {
            "patience": self.patience,
            "best": self.best,
            "best_step": self.best_step,
            "since_best": self.since_best,
            "history": list(self.history),
        }

    @classmethod
    def from_state(cls, state: dict) -> EarlyStopping:
        return cls(**state)


EvalHook = Callable[[int, nn.Module], dict]
"""``hook(step, ema_denoiser) -> extra columns`` (tracked FID/IS, sample grid), called on rank 0 only."""


def ddp_forward_model(parts: ImageParts, dist: DistInfo) -> nn.Module | None:
    """The denoiser whose network is wrapped in DistributedDataParallel (shares parameters), or None."""
    if dist.world_size <= 1:
        return None
    from torch.nn.parallel import DistributedDataParallel

    ids = [parts.device.index] if parts.device.type == "cuda" else None
    return build_denoiser(parts.config, parts.process, DistributedDataParallel(parts.unet, device_ids=ids))


def _eval_due(step: int, total: int, every: int) -> bool:
    return step > 0 and (step % every == 0 or step == total)


def train_image_model(
    parts: ImageParts,
    run_dir: str | None,
    dist: DistInfo = DistInfo(),
    eval_hook: EvalHook | None = None,
    progress: bool = False,
    on_eval: Callable[[list[dict]], None] | None = None,
) -> Any:
    """Train (resuming from ``run_dir/checkpoint.pt``), validating every ``val_every`` steps.

    Every rank computes the validation loss (identical parameters give identical values, so the early
    stopping decision agrees without communication); ``eval_hook`` and ``on_eval`` (CSV, PNG) run on rank 0.
    The validation records and the early-stopping state live in ``trainer.extra`` and so in the checkpoint:
    an interrupted run resumes exactly. Returns the Trainer (``trainer.extra["stopped_early"]`` is the step
    at which early stopping fired, if it did).
    """
    from difflab.experiments.trainer import Trainer

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
    )
    trainer.maybe_resume()
    extra = trainer.extra
    extra.setdefault("evals", [])
    extra.setdefault("early", EarlyStopping(tr.patience).state())
    extra.setdefault("stopped_early", None)
    bar = None
    if progress and dist.is_main:
        from tqdm import tqdm

        bar = tqdm(total=parts.total_steps, initial=trainer.step, desc=cfg.label or "train", leave=False)

    def callback(step: int, loss: float) -> None:
        if bar is not None:
            bar.n = step
            bar.set_postfix(loss=f"{loss:.4g}")
            bar.refresh()

    n_train = parts.x_train.shape[0]
    h = trainer.history
    while True:
        step = trainer.step
        last = extra["evals"][-1]["step"] if extra["evals"] else 0
        if h.status != "diverged" and _eval_due(step, parts.total_steps, tr.val_every) and last < step:
            ema = trainer.ema_model()
            record: dict[str, Any] = {
                "step": step,
                "epoch": round(step * tr.batch_size / n_train, 3),
                "train_loss": h.loss[-1] if h.loss else float("nan"),
                "val_loss": validation_loss(
                    parts.objective, ema, parts.x_val, tr.seed, max(tr.batch_size, 256), tr.precision
                ),
                "seconds": round(h.seconds, 3),
            }
            if eval_hook is not None and dist.is_main:
                record.update(eval_hook(step, ema))
            stopper = EarlyStopping.from_state(extra["early"])
            if stopper.update(record["val_loss"], step):
                extra["stopped_early"] = step
                h.status = "early_stopped"
            extra["early"] = stopper.state()
            extra["evals"].append(record)
            trainer.save_checkpoint()
            if on_eval is not None and dist.is_main:
                on_eval(extra["evals"])
        if h.status in ("finished", "diverged", "early_stopped") or trainer.step >= parts.total_steps:
            break
        nxt = min(parts.total_steps, (trainer.step // tr.val_every + 1) * tr.val_every)
        trainer.train(callback, until=nxt)
    if bar is not None:
        bar.close()
    return trainer


def checkpoint_path(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoint.pt")


def load_ema_denoiser(config: ImageRunConfig, run_dir: str, device: torch.device) -> nn.Module:
    """The run's denoiser carrying the EMA weights from ``run_dir/checkpoint.pt`` (eval mode)."""
    from difflab.data.images import dataset_shape
    from difflab.processes import build_process

    path = checkpoint_path(run_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint in {run_dir}: train the run first")
    state = torch.load(path, map_location=device, weights_only=False)
    process = build_process(config.process.name, **config.process.options)
    unet = build_unet(config, dataset_shape(config.data.name)).to(device=device, dtype=model_dtype(config))
    den = build_denoiser(config, process, unet)
    with torch.no_grad():
        for p, q in zip(den.parameters(), state["ema"], strict=True):
            p.copy_(q)
    return den.eval()
