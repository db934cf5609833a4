"""Training past one device: torchrun + DistributedDataParallel (NCCL on GPUs, gloo on CPU). A leaf of
``training/``: it imports no run kind.

Usage (one node, 4 GPUs; ``train.batch_size`` is the *global* batch, split evenly across the ranks)::

    torchrun --nproc_per_node=4 -m difflab.cli train CONFIG.toml --out runs/x --device cuda

:func:`setup_distributed` reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (and ``MASTER_ADDR`` /
``MASTER_PORT``) and joins the process group; without them it is a no-op (rank 0 of 1). Each rank draws the
minibatch, flips, t and eps of the whole global batch from the per-step generator and keeps its own rows
(:class:`ShardedObjective`), DDP averages the gradients, so R ranks follow
the single-process trajectory up to float summation order (in float32, AdamW turns the round-off of
mathematically zero gradients -- biases feeding a GroupNorm -- into parameter differences of ~1e-5 after a
few steps, exactly as summing two half-batch gradients in one process does; ``train.precision = "fp64"``
shows the equivalence to 1e-9). Only rank 0 writes (checkpoint, logs, grids,
metrics); every rank reads the checkpoint to resume. Caveats: the logged training loss and loss-by-time bins
are rank 0's shard only; dropout draws from each rank's own global RNG (use dropout 0 for bitwise
equivalence tests).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

from difflab.experiments.common.configs import ConfigError, check_device


@dataclass(frozen=True)
class DistInfo:
    """Rank and world size of this process (``rank = 0, world_size = 1`` without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = DistInfo()


def dist_info_from_env() -> DistInfo:
    """Rank, world size and local rank from torchrun's environment (defaults 0, 1, 0)."""
    return DistInfo(
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def setup_distributed(device: str = "cpu") -> DistInfo:
    """Join the process group when ``WORLD_SIZE > 1`` (backend ``nccl`` for ``device = "cuda"``, else
    ``gloo``); also sets the CUDA device to ``cuda:<local rank>``. Returns this process's DistInfo."""
    info = dist_info_from_env()
    if info.world_size <= 1 or torch_dist.is_initialized():
        return info
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(info.local_rank)
    torch_dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


def cleanup_distributed(info: DistInfo) -> None:
    """Wait for every rank, then leave the process group (no-op for a single process)."""
    if info.world_size > 1 and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def model_dtype(precision: str) -> torch.dtype:
    """float64 for ``precision = "fp64"`` (reference numerics, e.g. equivalence tests), else float32."""
    return torch.float64 if precision == "fp64" else torch.float32


def resolve_device(name: str, dist: DistInfo = SINGLE_PROCESS) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` (:func:`~difflab.experiments.common.configs.check_device`); under
    torchrun every rank uses ``cuda:<local rank>``. cuda without a GPU is a ConfigError."""
    check_device(name)
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device = {name!r} but torch.cuda.is_available() is False on this machine"
            )
        if dist.world_size > 1:
            return torch.device("cuda", dist.local_rank)
        return torch.device(name) if ":" in name else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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


def _spawn_worker(rank: int, world_size: int, port: int, run_fn: Any, config: dict, run_dir: str) -> None:
    """``torch.multiprocessing.spawn`` target (tests, single-node use without torchrun): set torchrun's
    environment for ``rank`` and call ``run_fn(config, run_dir)``."""
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
        }
    )
    torch.set_num_threads(1)
    run_fn(config, run_dir)


def spawn(world_size: int, run_fn: Any, config: dict, run_dir: str, port: int | None = None) -> None:
    """Run ``run_fn(config, run_dir)`` (a picklable top-level function, e.g.
    :func:`difflab.experiments.images.run.run_image_experiment`) on ``world_size`` local processes."""
    import socket

    import torch.multiprocessing as mp

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    mp.spawn(_spawn_worker, args=(world_size, port, run_fn, config, run_dir), nprocs=world_size, join=True)
