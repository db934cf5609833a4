"""The image pipeline (study kind "images"): train, track, sample and evaluate one UNet diffusion run.

Public API (resolved by :mod:`difflab.experiments.kinds` and the CLI):

* :func:`validate_image_config` -- strict config check (see :mod:`difflab.experiments.images_config`);
* :func:`run_image_experiment` -- train (resuming exactly), validate and track every ``val_every`` steps,
  evaluate;
* :func:`finish_image_study` -- figures, report and terminal table of an image study;
* :func:`sample_image_run` -- ``difflab sample RUN``: a PNG grid and an .npz of samples;
* :func:`evaluate_image_run` -- ``difflab evaluate RUN``: the final metrics again.

Files in a run directory: ``config.json`` (resolved, with ``kind = "images"``), ``checkpoint.pt`` (model, EMA,
optimizer, step, history, validation records and early-stopping state), ``log.csv`` (step, epoch, train loss,
val loss, FID, IS per validation), ``grids/step_XXXXXXX.png`` (a sample grid per validation),
``history.json`` (loss by step and by time bin), ``samples.npz`` (uint8 samples, NCHW), ``samples.png``,
``metrics.json``. Under torchrun only rank 0 writes (see :mod:`difflab.experiments.distributed`).
"""

from __future__ import annotations

import csv
import json
import os
import time
from typing import Any

import numpy as np

from difflab.experiments.images_config import (
    ImageRunConfig,
    image_config_to_dict,
    parse_image_config,
    validate_image_config,
)
from difflab.experiments.images_eval import (
    bits_per_dim_metrics,
    draw_image_samples,
    feature_network,
    sample_quality,
    save_image_grid,
    to_uint8,
)
from difflab.experiments.images_train import (
    DistInfo,
    ImageParts,
    build_image_parts,
    load_ema_denoiser,
    resolve_device,
    train_image_model,
)

__all__ = [
    "evaluate_image_run",
    "finish_image_study",
    "run_image_experiment",
    "sample_image_run",
    "validate_image_config",
]

LOG_COLUMNS = ["step", "epoch", "train_loss", "val_loss", "fid", "is", "seconds"]


def _write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
    os.replace(tmp, path)


def write_log_csv(run_dir: str, records: list[dict]) -> None:
    """``log.csv``: one row per validation (rewritten whole, so a resumed run never duplicates rows)."""
    tmp = os.path.join(run_dir, f"log.csv.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LOG_COLUMNS)
        for r in records:
            writer.writerow(["" if r.get(c) is None else r.get(c) for c in LOG_COLUMNS])
    os.replace(tmp, os.path.join(run_dir, "log.csv"))


def _tracking_hook(parts: ImageParts, run_dir: str, net: Any, feature: str | None):
    """At each validation: a sample grid PNG and (with ``eval.n_track > 0``) FID/IS of ``n_track`` samples."""
    ev = parts.config.eval
    shape = tuple(parts.x_train.shape[1:])
    reference = parts.train_data.images

    def hook(step: int, ema: Any) -> dict:
        n = max(ev.n_track, ev.n_grid)
        x, _ = draw_image_samples(
            ema,
            parts.process,
            shape,
            n,
            sampler=ev.sampler,
            steps=ev.track_steps,
            grid=ev.grid,
            eta=ev.eta,
            seed=ev.seed,
            batch=ev.batch,
            device=parts.device,
        )
        save_image_grid(x[: ev.n_grid], os.path.join(run_dir, "grids", f"step_{step:07d}.png"))
        if net is None or ev.n_track < 2:
            return {}
        q = sample_quality(
            net, reference, parts.x_val, x[: ev.n_track], seed=ev.seed, with_floor=False, feature=feature
        )
        return {"fid": q["fid"], "is": q["is"]}

    return hook


def final_metrics(parts: ImageParts, ema: Any, run_dir: str | None, net: Any, feature_info: dict) -> dict:
    """Samples (``eval.n_samples``), FID/KID/IS with floor, bits/dim; writes samples.npz / samples.png."""
    ev = parts.config.eval
    shape = tuple(parts.x_train.shape[1:])
    start = time.perf_counter()
    x, info = draw_image_samples(
        ema,
        parts.process,
        shape,
        ev.n_samples,
        sampler=ev.sampler,
        steps=ev.steps,
        grid=ev.grid,
        eta=ev.eta,
        seed=ev.seed,
        batch=ev.batch,
        device=parts.device,
    )
    sample_seconds = time.perf_counter() - start
    out: dict[str, Any] = {
        **info,
        "n_samples": ev.n_samples,
        "sample_seconds_per_image": round(sample_seconds / ev.n_samples, 6),
    }
    if run_dir is not None:
        np.savez_compressed(os.path.join(run_dir, "samples.npz"), samples=to_uint8(x))
        save_image_grid(x[: ev.n_grid], os.path.join(run_dir, "samples.png"))
    out.update(feature_info)
    out.update(
        sample_quality(
            net,
            parts.train_data.images,
            parts.x_val.cpu(),
            x,
            seed=ev.seed,
            feature=feature_info.get("feature"),
        )
    )
    out.update(bits_per_dim_metrics(parts.config, ema, parts.process, parts.x_val, parts.levels))
    return out


def run_image_experiment(config_dict: dict, run_dir: str, progress: bool = False) -> dict[str, Any]:
    """Train and evaluate one image run (the study engine's run function and ``difflab train``'s).

    Resumes from ``run_dir/checkpoint.pt``. Under torchrun (``WORLD_SIZE > 1``) it joins the process group,
    trains with DDP and evaluates on rank 0 only; other ranks return ``{"status": ..., "rank": r}``.
    """
    from difflab.experiments.distributed import cleanup_distributed, setup_distributed

    config = validate_image_config(config_dict)
    dist = setup_distributed(config.train.device)
    try:
        return _run(config, run_dir, dist, progress)
    finally:
        cleanup_distributed(dist)


def _run(config: ImageRunConfig, run_dir: str, dist: DistInfo, progress: bool) -> dict[str, Any]:
    start = time.perf_counter()
    if dist.is_main:
        os.makedirs(run_dir, exist_ok=True)
        _write_json(os.path.join(run_dir, "config.json"), image_config_to_dict(config))
    parts = build_image_parts(config, dist, verbose=progress)
    ev = config.eval
    net, feature_info = None, {}
    if dist.is_main and ev.enabled:
        net, feature_info = feature_network(config, parts.train_data, parts.test_data, parts.device)
    hook = (
        _tracking_hook(parts, run_dir, net if ev.n_track > 0 else None, feature_info.get("feature"))
        if dist.is_main and ev.enabled
        else None
    )
    trainer = train_image_model(
        parts,
        run_dir,
        dist,
        eval_hook=hook,
        progress=progress,
        on_eval=lambda records: write_log_csv(run_dir, records),
    )
    h = trainer.history
    result: dict[str, Any] = {
        "status": "diverged" if h.status == "diverged" else "finished",
        "steps": trainer.step,
        "train_seconds": round(h.seconds, 3),
        "final_loss": h.loss[-1] if h.loss else float("nan"),
        "n_params": sum(p.numel() for p in parts.unet.parameters()),
    }
    early = trainer.extra.get("early", {})
    if trainer.extra.get("evals"):
        result["best_val_loss"] = early.get("best")
        result["best_val_step"] = early.get("best_step")
        result["val_loss"] = trainer.extra["evals"][-1]["val_loss"]
    if trainer.extra.get("stopped_early") is not None:
        result["stopped_early_at"] = trainer.extra["stopped_early"]
    if h.status == "diverged":
        result["diverged_at"] = h.diverged_at
    if not dist.is_main:
        return {**result, "rank": dist.rank}
    centres, by_time = h.loss_by_time()
    _write_json(
        os.path.join(run_dir, "history.json"),
        {
            "steps": h.steps,
            "loss": h.loss,
            "time_bins": centres,
            "loss_by_time": by_time,
            "evals": trainer.extra.get("evals", []),
        },
    )
    if h.status != "diverged" and ev.enabled:
        result.update(final_metrics(parts, trainer.ema_model(), run_dir, net, feature_info))
    result["seconds"] = round(time.perf_counter() - start, 3)
    _write_json(os.path.join(run_dir, "metrics.json"), result)
    return result


# ------------------------------------------------------------------------------------------- existing runs


def _load_config(run_dir: str) -> ImageRunConfig:
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"not a run directory (no config.json): {run_dir}")
    with open(path) as f:
        return validate_image_config(parse_image_config(json.load(f)))


def sample_image_run(
    run_dir: str,
    sampler: str | None,
    steps: int,
    n: int,
    seed: int,
    out: str | None = None,
    grid: str | None = None,
) -> str:
    """Draw ``n`` samples from a trained run's EMA model; write ``<out>.npz`` (uint8 NCHW ``samples``) and a
    PNG grid of the first 64 beside it. ``sampler``/``grid`` default to the run's ``eval`` settings.
    Returns a one-line summary."""
    from difflab.data.images import dataset_shape
    from difflab.processes import build_process

    config = _load_config(run_dir)
    device = resolve_device(config.train.device)
    den = load_ema_denoiser(config, run_dir, device)
    process = build_process(config.process.name, **config.process.options)
    name = sampler or config.eval.sampler
    x, info = draw_image_samples(
        den,
        process,
        dataset_shape(config.data.name),
        n,
        sampler=name,
        steps=steps,
        grid=grid or config.eval.grid,
        eta=config.eval.eta if name == "ddim" else 0.0,
        seed=seed,
        batch=config.eval.batch,
        device=device,
    )
    path = out or os.path.join(run_dir, f"samples_{name}_{info['sample_steps']}.npz")
    if not path.endswith(".npz"):
        path += ".npz"
    np.savez_compressed(path, samples=to_uint8(x))
    png = save_image_grid(x[:64], path[: -len(".npz")] + ".png")
    return (
        f"wrote {n} samples ({name}, {info['sample_steps']} {info['sample_grid']} steps, NFE {info['nfe']}) "
        f"to {path} "
        f"and a grid to {png}"
    )


def evaluate_image_run(run_dir: str) -> dict[str, Any]:
    """Recompute the final metrics of a trained run (EMA weights); also written to ``evaluation.json``."""
    config = _load_config(run_dir)
    parts = build_image_parts(config)
    den = load_ema_denoiser(config, run_dir, parts.device)
    net, feature_info = feature_network(config, parts.train_data, parts.test_data, parts.device)
    metrics = final_metrics(parts, den, None, net, feature_info)
    _write_json(os.path.join(run_dir, "evaluation.json"), metrics)
    return metrics


def finish_image_study(study: Any, result: Any, out_dir: str) -> str:
    """Figures, report and the terminal table of an image study (see :mod:`images_report`)."""
    from difflab.experiments.images_report import finish_image_study as finish

    return finish(study, result, out_dir)
