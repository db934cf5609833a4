"""One run, end to end: build, train (resuming from the run's checkpoint), evaluate, write outputs.

Files in the run directory: ``config.json`` (resolved), ``checkpoint.pt`` (model, EMA, optimizer, step,
history), ``history.json`` (loss by step and by time), ``metrics.json``, ``samples.npz``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import torch

from difflab.experiments.build import DIFFUSION_MODELS, build_run_parts
from difflab.experiments.config import RunConfig, config_to_dict, validate_config
from difflab.experiments.trainer import Trainer


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
    os.replace(tmp, path)


def train_run(config: RunConfig, run_dir: str | None, progress: bool = False):
    """Build and train a run (resuming from run_dir/checkpoint.pt if present). Returns (parts, trainer)."""
    parts = build_run_parts(config)
    assert parts is not None
    trainer = None
    if parts.trainable:
        device = torch.device(config.train.device)
        parts.denoiser.to(device)
        x_train = parts.data.train.to(torch.float32).to(device)
        trainer = Trainer(parts.denoiser, parts.objective, x_train, config.train, parts.total_steps, run_dir)
        trainer.maybe_resume()
        callback = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(
                total=parts.total_steps, initial=trainer.step, desc=config.label or "train", leave=False
            )

            def callback(step: int, loss: float) -> None:
                bar.n = step
                bar.set_postfix(loss=f"{loss:.4g}")
                bar.refresh()

        trainer.train(callback)
    return parts, trainer


def run_experiment(config_dict: dict, run_dir: str, progress: bool = False) -> dict[str, Any]:
    """Train and evaluate one run; the study engine's run function. Returns metrics and a status."""
    from difflab.experiments.evaluate import evaluate_run

    config = validate_config(config_dict)
    os.makedirs(run_dir, exist_ok=True)
    _write_json(os.path.join(run_dir, "config.json"), config_to_dict(config))
    if config.model.name not in DIFFUSION_MODELS:  # VAE-family, learned-variance DDPM, the "truth" floor row
        from difflab.experiments.baselines_2d import run_baseline

        return run_baseline(config, run_dir)
    start = time.perf_counter()
    parts, trainer = train_run(config, run_dir, progress=progress)
    result: dict[str, Any] = {"status": "finished", "steps": 0}
    denoiser = parts.denoiser
    if trainer is not None:
        h = trainer.history
        result["steps"] = trainer.step
        result["train_seconds"] = round(h.seconds, 3)
        result["final_loss"] = h.loss[-1] if h.loss else float("nan")
        centres, by_time = h.loss_by_time()
        _write_json(
            os.path.join(run_dir, "history.json"),
            {"steps": h.steps, "loss": h.loss, "time_bins": centres, "loss_by_time": by_time},
        )
        if h.status == "diverged":
            result.update(status="diverged", diverged_at=h.diverged_at)
            result["seconds"] = round(time.perf_counter() - start, 3)
            _write_json(os.path.join(run_dir, "metrics.json"), result)
            return result
        denoiser = trainer.ema_model().cpu()  # 2D evaluation runs on the CPU
    metrics, samples = evaluate_run(parts, denoiser)
    result.update(metrics)
    if config.eval.score_error and parts.data.law is not None:
        from difflab.experiments.score_diagnostics import write_score_error

        result.update(write_score_error(parts, denoiser, run_dir))
    np.savez_compressed(os.path.join(run_dir, "samples.npz"), **samples)
    result["seconds"] = round(time.perf_counter() - start, 3)
    _write_json(os.path.join(run_dir, "metrics.json"), result)
    return result
