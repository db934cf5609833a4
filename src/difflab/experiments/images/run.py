"""The image pipeline (study kind "images"): train, track, sample and evaluate one UNet diffusion run.

Public API (wired into the CLI and the study engine by :mod:`difflab.experiments.images.kind`):

* :func:`run_image_experiment` -- train (resuming exactly), validate and track every ``val_every`` steps,
  evaluate;
* :func:`sample_image_run` -- ``difflab sample RUN``: a PNG grid and an .npz of samples;
* :func:`evaluate_image_run` -- ``difflab evaluate RUN``: the final metrics again.

Files in a run directory: ``config.json`` (resolved, with ``kind = "images"``), ``checkpoint.pt`` (model, EMA,
optimizer, step, history, validation records and early-stopping state), ``log.csv`` (step, epoch, train loss,
val loss, FID, IS per validation), ``grids/step_XXXXXXX.png`` (a sample grid per validation),
``history.json`` (loss by step and by time bin), ``samples.npz`` (uint8 samples, NCHW), ``samples.png``,
``metrics.json``. Under torchrun only rank 0 writes (see :mod:`difflab.experiments.training.dist`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from difflab.experiments.common.configs import ConfigError, check_device_available
from difflab.experiments.common.figures import save_image_grid
from difflab.experiments.common.rundir import (
    RunDirError,
    check_reuse,
    config_hash,
    read_config,
    write_csv_atomic,
    write_json,
)
from difflab.experiments.images.bpd import bits_per_dim_metrics
from difflab.experiments.images.config import (
    ImageEvalConfig,
    ImageRunConfig,
    image_config_to_dict,
    parse_image_config,
    validate_image_config,
)
from difflab.experiments.images.evaluate import (
    draw_image_samples,
    feature_network,
    resolve_grid,
    sample_quality,
    to_uint8,
)
from difflab.experiments.images.train import (
    ImageParts,
    build_image_parts,
    grad_norm_summary,
    load_ema_denoiser,
    train_image_model,
)
from difflab.experiments.study.convergence import run_verdict
from difflab.experiments.training.dist import (
    DistInfo,
    cleanup_distributed,
    resolve_device,
    setup_distributed,
)

__all__ = ["evaluate_image_run", "run_image_experiment", "sample_image_run"]

LOG_COLUMNS = ["step", "epoch", "train_loss", "val_loss", "fid", "is", "seconds"]


def write_log_csv(run_dir: str, records: list[dict]) -> None:
    """``log.csv``: one row per validation (rewritten whole, so a resumed run never duplicates rows)."""
    write_csv_atomic(os.path.join(run_dir, "log.csv"), records, LOG_COLUMNS)


def _draw(
    den: Any, process: Any, shape: tuple[int, ...], n: int, ev: ImageEvalConfig, steps: int, device: Any
):
    """``draw_image_samples`` with the run's sampler, grid, options, seed and batch."""
    return draw_image_samples(
        den,
        process,
        shape,
        n,
        sampler=ev.sampler,
        steps=steps,
        grid=ev.grid,
        options=ev.options(),
        seed=ev.seed,
        batch=ev.batch,
        device=device,
    )


def _tracking_hook(parts: ImageParts, run_dir: str, net: Any, feature: str | None):
    """At each validation: a sample grid PNG and (with ``eval.n_track > 0``) FID/IS of ``n_track`` samples."""
    ev = parts.config.eval
    shape = tuple(parts.x_train.shape[1:])
    reference = parts.train_data.images

    def hook(step: int, ema: Any) -> dict:
        x, _ = _draw(ema, parts.process, shape, max(ev.n_track, ev.n_grid), ev, ev.track_steps, parts.device)
        save_image_grid(x[: ev.n_grid], os.path.join(run_dir, "grids", f"step_{step:07d}.png"))
        if net is None or ev.n_track < 2:
            return {}
        q = sample_quality(
            net,
            reference,
            parts.x_val,
            x[: ev.n_track],
            levels=parts.levels,
            seed=ev.seed,
            with_floor=False,
            feature=feature,
        )
        return {"fid": q["fid"], "is": q["is"]}

    return hook


def final_metrics(parts: ImageParts, ema: Any, run_dir: str | None, net: Any, feature_info: dict) -> dict:
    """Samples (``eval.n_samples``), FID/KID/IS with floor, bits/dim; writes samples.npz / samples.png."""
    ev = parts.config.eval
    shape = tuple(parts.x_train.shape[1:])
    start = time.perf_counter()
    x, info = _draw(ema, parts.process, shape, ev.n_samples, ev, ev.steps, parts.device)
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
            levels=parts.levels,
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
    config = validate_image_config(config_dict)
    dist = setup_distributed(config.train.device)
    try:
        return _run(config, run_dir, dist, progress)
    finally:
        cleanup_distributed(dist)


def _result_from_trainer(trainer: Any, parts: ImageParts) -> dict[str, Any]:
    """Status, steps, seconds, losses, validation and early-stopping figures of a trained run."""
    h = trainer.history
    result: dict[str, Any] = {
        "status": "diverged" if h.status == "diverged" else "finished",
        "steps": trainer.step,
        "train_seconds": round(h.seconds, 3),
        "final_loss": h.loss[-1] if h.loss else float("nan"),
        "n_params": sum(p.numel() for p in parts.unet.parameters()),
        **grad_norm_summary(h),
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
        result["diverged_reason"] = h.divergence_reason
    return result


def _write_history(run_dir: str, trainer: Any) -> None:
    h = trainer.history
    centres, by_time = h.loss_by_time()
    history = {"steps": h.steps, "loss": h.loss, "grad_norm": h.grad_norm, "grad_norm_max": h.grad_norm_max}
    history |= {"time_bins": centres, "loss_by_time": by_time}
    write_json(os.path.join(run_dir, "history.json"), {**history, "evals": trainer.extra.get("evals", [])})


#: the image verdict's tolerance: val_loss has no s.e. on record, so "converged" means it moved by at most
#: 2% over the last doubling of training
IMAGE_VERDICT_RTOL = 0.02


def image_curve(trainer: Any, n_track: int) -> dict[str, Any]:
    """The learning curve of an image run from its validation records (every ``train.val_every`` steps, EMA
    weights, one fixed generator: the same t / eps at every point and for every arm): EMA validation loss
    and, with ``eval.n_track``, FID of ``n_track`` samples (``n_track`` stated in the record; no same-n floor
    is computed along the curve)."""
    points = []
    for rec in trainer.extra.get("evals", []):
        metrics = {k: rec[k] for k in ("val_loss", "fid") if isinstance(rec.get(k), int | float)}
        points.append({"step": rec["step"], "train_seconds": rec.get("seconds"), "metrics": metrics})
    return {"verdict_metric": "val_loss", "points": points, "n_track": n_track}


def _curve_result(run_dir: str, trainer: Any, n_track: int) -> dict[str, Any]:
    """curves.json of an image run and its verdict keys (:func:`run_verdict` on the EMA validation loss)."""
    curve = image_curve(trainer, n_track)
    write_json(os.path.join(run_dir, "curves.json"), curve)
    return run_verdict(curve, "val_loss", rtol=IMAGE_VERDICT_RTOL)


def _run(config: ImageRunConfig, run_dir: str, dist: DistInfo, progress: bool) -> dict[str, Any]:
    """Check the run directory and load the data before writing anything, then train and evaluate."""
    start = time.perf_counter()
    resolved = image_config_to_dict(config)
    check_device_available(config.train.device)
    check_reuse(run_dir, resolved, resolve=lambda raw: image_config_to_dict(parse_image_config(raw)))
    parts = build_image_parts(config, dist, verbose=progress)
    if config.train.batch_size > parts.x_train.shape[0]:
        raise ConfigError(
            f"train.batch_size ({config.train.batch_size}) exceeds the {parts.x_train.shape[0]} training "
            f"images of {config.data.name!r}"
        )
    ev = config.eval
    net, feature_info, hook = None, {}, None
    if dist.is_main and ev.enabled:  # a bad Inception file is an error before anything is written
        net, feature_info = feature_network(config, parts.train_data, parts.test_data, parts.device)
        hook = _tracking_hook(parts, run_dir, net if ev.n_track > 0 else None, feature_info.get("feature"))
    if dist.is_main:
        os.makedirs(run_dir, exist_ok=True)
        write_json(os.path.join(run_dir, "config.json"), resolved)

    def on_eval(records: list[dict]) -> None:
        write_log_csv(run_dir, records)

    trainer = train_image_model(parts, run_dir, dist, eval_hook=hook, progress=progress, on_eval=on_eval)
    result = _result_from_trainer(trainer, parts)
    if not dist.is_main:
        return {**result, "rank": dist.rank}
    _write_history(run_dir, trainer)
    result.update(_curve_result(run_dir, trainer, ev.n_track))
    if result["status"] != "diverged" and ev.enabled:
        result.update(final_metrics(parts, trainer.ema_model(), run_dir, net, feature_info))
    result["seconds"] = round(time.perf_counter() - start, 3)
    write_json(os.path.join(run_dir, "metrics.json"), {**result, "config_hash": config_hash(resolved)})
    return result


# ------------------------------------------------------------------------------------------- existing runs


def _load_config(run_dir: str) -> ImageRunConfig:
    return validate_image_config(read_config(run_dir))


def sample_image_run(
    run_dir: str,
    sampler: str | None,
    steps: int,
    n: int,
    seed: int,
    out: str | None = None,
    grid: str | None = None,
    options: dict[str, Any] | None = None,
) -> str:
    """Draw ``n`` samples from a trained run's EMA model; write ``<out>.npz`` (uint8 NCHW ``samples``) and a
    PNG grid of the first 64 beside it. ``sampler``/``grid``/``options`` default to the run's ``eval``
    settings (options: the run's sampler options updated by ``options``). Returns a one-line summary."""
    from difflab.data.images import dataset_shape
    from difflab.processes import build_process

    if steps < 1 or n < 1:
        raise ConfigError(f"sample needs --steps >= 1 and --n >= 1, got steps={steps}, n={n}")
    config = _load_config(run_dir)
    device = resolve_device(config.train.device)
    den = load_ema_denoiser(config, run_dir, device)
    process = build_process(config.process.name, **config.process.options)
    name = sampler or config.eval.sampler
    try:
        resolve_grid(process, steps, grid or config.eval.grid)
    except ValueError as err:
        raise ConfigError(f"--grid {grid or config.eval.grid} --steps {steps}: {err}") from None
    x, info = draw_image_samples(
        den,
        process,
        dataset_shape(config.data.name),
        n,
        sampler=name,
        steps=steps,
        grid=grid or config.eval.grid,
        options={**config.eval.options(), **(options or {})},
        seed=seed,
        batch=config.eval.batch,
        device=device,
    )
    if not bool(torch.isfinite(x).all()):
        raise RunDirError(
            f"{run_dir}: samples are not finite ({name}, {steps} steps); nothing written: try another "
            "sampler or more steps"
        )
    default = f"samples_{name}_{info['sample_steps']}.npz"
    path = os.path.join(out, default) if out and (os.path.isdir(out) or out.endswith(os.sep)) else out
    path = path or os.path.join(run_dir, default)
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
    den = load_ema_denoiser(config, run_dir, parts.device, finished=True)
    net, feature_info = feature_network(config, parts.train_data, parts.test_data, parts.device)
    metrics = final_metrics(parts, den, None, net, feature_info)
    write_json(os.path.join(run_dir, "evaluation.json"), metrics)
    return metrics
