"""DistributedDataParallel: 2 CPU processes (gloo) on half the batch each end with the same parameters as
1 process on the whole batch (same seed, common random numbers), and only rank 0 writes.

Run in float64: in float32 even one process that sums two half-batch gradients instead of one full-batch
gradient drifts by ~2e-5 after 4 AdamW steps, because Adam turns the round-off of mathematically zero
gradients (biases feeding a GroupNorm) into steps of up to lr. float64 removes that amplification."""

from __future__ import annotations

import torch

from difflab.experiments.images.run import run_image_experiment
from difflab.experiments.training.dist import spawn

CONFIG = {
    "data": {"name": "digits", "n_train": 128, "n_val": 32, "flip": True},
    "process": {"name": "ddpm", "options": {"T": 50, "schedule": "cosine"}},
    "model": {"channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attn_resolutions": []},
    "train": {
        "steps": 4,
        "batch_size": 16,
        "lr": 1e-3,
        "warmup": 0,
        "grad_clip": 1.0,
        "val_every": 4,
        "log_every": 1,
        "checkpoint_every": 4,
        "ema": 0.9,
        "precision": "fp64",
    },
    "eval": {"enabled": False},
}


def test_two_gloo_ranks_match_one_process_on_the_whole_batch(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_image_experiment(CONFIG, str(tmp_path / "single"))
    finally:
        torch.set_num_threads(threads)
    spawn(2, run_image_experiment, CONFIG, str(tmp_path / "ddp"))
    a = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == single["steps"] == 4
    moved = 0.0
    for key, p in a["model"].items():
        q = b["model"][key]
        assert torch.allclose(p, q, rtol=0, atol=1e-9), (key, float((p - q).abs().max()))
        moved = max(moved, float(p.abs().max()))
    assert moved > 0
    for p, q in zip(a["ema"], b["ema"], strict=True):
        assert torch.allclose(p, q, rtol=0, atol=1e-9)
    # the validation loss is computed by every rank on identical parameters; rank 0 recorded it
    assert abs(a["extra"]["evals"][0]["val_loss"] - b["extra"]["evals"][0]["val_loss"]) < 1e-9
    # only rank 0 wrote: no stray temporary files from another rank
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir()
    )
