"""Training past one device: torchrun + DistributedDataParallel (NCCL on GPUs, gloo on CPU).

Usage (one node, 4 GPUs; ``train.batch_size`` is the *global* batch, split evenly across the ranks)::

    torchrun --nproc_per_node=4 -m difflab.experiments.distributed CONFIG.toml --out runs/x --device cuda
    torchrun --nproc_per_node=2 -m difflab.cli train CONFIG.toml --out runs/x     # the same via the CLI

:func:`setup_distributed` reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (and ``MASTER_ADDR`` /
``MASTER_PORT``) and joins the process group; without them it is a no-op (rank 0 of 1). Each rank draws the
minibatch, flips, t and eps of the whole global batch from the per-step generator and keeps its own rows
(:class:`~difflab.experiments.images_train.ShardedObjective`), DDP averages the gradients, so R ranks follow
the single-process trajectory up to float summation order (in float32, AdamW turns the round-off of
mathematically zero gradients -- biases feeding a GroupNorm -- into parameter differences of ~1e-5 after a
few steps, exactly as summing two half-batch gradients in one process does; ``train.precision = "fp64"``
shows the equivalence to 1e-9). Only rank 0 writes (checkpoint, logs, grids,
metrics); every rank reads the checkpoint to resume. Caveats: the logged training loss and loss-by-time bins
are rank 0's shard only; dropout draws from each rank's own global RNG (use dropout 0 for bitwise
equivalence tests).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import torch
import torch.distributed as torch_dist

from difflab.experiments.images_train import DistInfo


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
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(info.local_rank)
    torch_dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


def cleanup_distributed(info: DistInfo) -> None:
    """Wait for every rank, then leave the process group (no-op for a single process)."""
    if info.world_size > 1 and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def _spawn_worker(rank: int, world_size: int, port: int, config: dict, run_dir: str) -> None:
    """``torch.multiprocessing.spawn`` target (tests, single-node use without torchrun): set torchrun's
    environment for ``rank`` and run :func:`difflab.experiments.images.run_image_experiment`."""
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
    from difflab.experiments.images import run_image_experiment

    run_image_experiment(config, run_dir)


def spawn(world_size: int, config: dict, run_dir: str, port: int | None = None) -> None:
    """Run one image experiment on ``world_size`` local processes (gloo on CPU, nccl on GPUs)."""
    import socket

    import torch.multiprocessing as mp

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    mp.spawn(_spawn_worker, args=(world_size, port, config, run_dir), nprocs=world_size, join=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m difflab.experiments.distributed CONFIG [--out DIR] [--set key=value]`` (torchrun)."""
    from difflab.cli import _load_toml, apply_sets

    parser = argparse.ArgumentParser(prog="difflab.experiments.distributed", description=main.__doc__)
    parser.add_argument("config", help='image run TOML (kind = "images" optional)')
    parser.add_argument("--out", help="run directory (default runs/<config stem>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="shorthand for --set train.device=...")
    args = parser.parse_args(argv)
    sets = args.set + ([f"train.device={args.device}"] if args.device else [])
    raw = apply_sets(_load_toml(args.config), sets)
    raw.pop("kind", None)
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    from difflab.experiments.images import run_image_experiment

    result = run_image_experiment(raw, out, progress=True)
    if dist_info_from_env().is_main:
        print(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
