"""One 2D run, end to end: validate, build, train (resuming from the run's checkpoint), evaluate, write
outputs; and the same run loaded back from its directory to sample or re-evaluate it.

Files in the run directory: ``config.json`` (resolved), ``checkpoint.pt`` (model, EMA, optimizer, step,
history, learning curve), ``history.json`` (loss by step and by time), ``curves.json`` (the learning curve,
:mod:`difflab.experiments.toy2d.curves`), ``metrics.json``, ``samples.npz``.

Budget rule (``train.until_converged``): after training to S steps the curve's verdict is read
(:mod:`difflab.experiments.study.convergence`); while it is not "converged" and 2S <= ``train.max_steps``
the budget is doubled and training resumes from the checkpoint (the curve keeps its points: those of S are
a subset of those of 2S). The LR schedule must then be "constant" after warm-up: a cosine schedule depends
on the final budget, so a doubled run could not equal any uninterrupted run (and a restarted cosine would
re-warm a decayed model); with a constant LR the doubled run is bit-identical to an uninterrupted run of
the final length.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np
import torch

from difflab.experiments.common.configs import (
    ConfigError,
    check_device_available,
    check_process_range,
    same_objective_key,
)
from difflab.experiments.common.rundir import (
    RunDirError,
    check_reuse,
    check_trained,
    config_hash,
    read_config,
    write_json,
)
from difflab.experiments.study.convergence import next_budget, run_verdict
from difflab.experiments.toy2d.baselines import check_baseline_config, run_baseline
from difflab.experiments.toy2d.build import (
    DIFFUSION_MODELS,
    RunParts,
    build_process_objective,
    build_run_parts,
    check_names,
)
from difflab.experiments.toy2d.config import RunConfig, config_to_dict, parse_config, total_steps
from difflab.experiments.toy2d.curves import curve_evaluator, curve_metric
from difflab.experiments.toy2d.evaluate import NoGradDenoiser, draw_samples, evaluate_run
from difflab.experiments.training.curves import check_curve_points, curve_cost, train_with_curve
from difflab.experiments.training.trainer import Trainer
from difflab.registry import UnknownNameError


def validate_config(data: dict | RunConfig) -> RunConfig:
    """Parse and check every name against its table (raises ConfigError listing valid choices)."""
    config = parse_config(data) if isinstance(data, dict) else data
    try:
        process = check_names(config)
        if config.model.name not in DIFFUSION_MODELS:
            check_baseline_config(config, process)
    except ConfigError:
        raise
    except (UnknownNameError, ValueError) as err:  # bad names, options or ranges of the parts
        raise ConfigError(str(err)) from None
    check_process_range(process)
    _check_cross_fields(config)
    _check_curve_config(config)
    return config


def same_run_key(raw: dict) -> str | None:
    """The key of what the run computes (:func:`~difflab.experiments.common.configs.same_objective_key`);
    None for the oracle and the baselines (they have no weighting to compare)."""
    config = validate_config(dict(raw))
    if config.model.name != "mlp":
        return None
    process, objective = build_process_objective(config)
    return same_objective_key(config_to_dict(config), process, objective)


def _check_cross_fields(config: RunConfig) -> None:
    """Rules between fields (each field's own range is in its schema): values that would be clamped or
    ignored in the run are errors here."""
    tr, m, data = config.train, config.model, config.data
    if tr.epochs is not None and round(tr.epochs * data.n_train / tr.batch_size) < 1:
        raise ConfigError(
            f"train.epochs = {tr.epochs:g} gives {tr.epochs * data.n_train / tr.batch_size:.3g} steps "
            f"(n_train {data.n_train}, batch_size {tr.batch_size}); need at least one step"
        )
    if tr.batch_size > data.n_train and m.name in DIFFUSION_MODELS:
        raise ConfigError(f"train.batch_size ({tr.batch_size}) exceeds data.n_train ({data.n_train})")
    if m.name in DIFFUSION_MODELS and m.options:
        raise ConfigError(
            f"model.options {sorted(m.options)} would be ignored: model {m.name!r} takes no options "
            "(they are for the baselines)"
        )
    if m.embed_dim < 4 or m.embed_dim % 2:
        raise ConfigError(f"model.embed_dim must be an even number >= 4, got {m.embed_dim}")


def _check_curve_config(config: RunConfig) -> None:
    """Domains of the learning-curve and budget-rule fields (ConfigError naming the field)."""
    ev, tr = config.eval, config.train
    try:
        check_curve_points(ev.curve_points)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if ev.curve_n < 2:  # at most data.n_test points are used
        raise ConfigError(f"eval.curve_n must be >= 2, got {ev.curve_n}")
    if ev.curve_n_samples < 0 or ev.curve_n_samples == 1:
        raise ConfigError(f"eval.curve_n_samples must be 0 or >= 2, got {ev.curve_n_samples}")
    if ev.curve_sample_steps < 1:
        raise ConfigError(f"eval.curve_sample_steps must be >= 1, got {ev.curve_sample_steps}")
    if not 0.0 < ev.curve_rtol < 1.0:
        raise ConfigError(f"eval.curve_rtol must lie in (0, 1), got {ev.curve_rtol}")
    if ev.verdict_rtol < 0 or ev.verdict_atol < 0:
        raise ConfigError("eval.verdict_rtol and eval.verdict_atol must be >= 0")
    if not tr.until_converged:
        return
    steps = total_steps(config)
    if tr.lr_schedule != "constant":
        raise ConfigError(
            'train.until_converged needs train.lr_schedule = "constant" (a cosine schedule depends on the '
            "final budget, so doubling it could not resume exactly)"
        )
    if ev.curve_points == 0:
        raise ConfigError("train.until_converged needs a learning curve: eval.curve_points > 0")
    if tr.max_steps is None or tr.max_steps < steps:
        raise ConfigError(
            f"train.until_converged needs train.max_steps >= train.steps ({steps}), got {tr.max_steps}"
        )


def _progress_bar(total: int, initial: int, desc: str):
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, leave=False)

    def callback(step: int, loss: float) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4g}")
        bar.refresh()

    return callback


def train_run(config: RunConfig, run_dir: str | None, progress: bool = False, parts: RunParts | None = None):
    """Build (unless ``parts`` are given) and train a run, resuming from run_dir/checkpoint.pt if present
    (RunDirError if that checkpoint came from another config), with its learning curve and, under
    ``train.until_converged``, the budget rule. Returns (parts, trainer); the curve's verdict and
    ``budget_doublings`` are in ``trainer.extra``."""
    parts = parts if parts is not None else build_run_parts(config)
    trainer = None
    if parts.trainable:
        device = torch.device(config.train.device)
        parts.denoiser.to(device)
        x_train = parts.data.train.to(torch.float32).to(device)
        trainer = Trainer(
            parts.denoiser,
            parts.objective,
            x_train,
            config.train,
            parts.total_steps,
            run_dir,
            identity=config_to_dict(config),
        )
        trainer.maybe_resume()
        # a resumed budget-doubled run continues at its doubled budget (saved with the checkpoint)
        trainer.total_steps = int(trainer.extra.get("budget", parts.total_steps))
        callback = (
            _progress_bar(config.train.max_steps or parts.total_steps, trainer.step, config.label or "train")
            if progress
            else None
        )
        _train_to_verdict(parts, trainer, callback)
    return parts, trainer


def _train_to_verdict(parts: RunParts, trainer: Trainer, callback: Any) -> None:
    """Train with the curve; apply the budget rule; leave the verdict in ``trainer.extra["verdict"]``."""
    config = parts.config
    ev, tr = config.eval, config.train
    metric = curve_metric(parts)
    evaluate = curve_evaluator(parts) if ev.curve_points else None
    while True:
        if evaluate is None:
            trainer.train(callback)
            trainer.extra["verdict"] = run_verdict(None, metric)
            return
        curve = train_with_curve(trainer, ev.curve_points, evaluate, metric, callback)
        # the relative tolerance only for the KL (>= 0, zero for a perfect model): an NLL's size depends on
        # the data's scale and entropy, so 10 % of it is no measure of "has stopped changing"
        rtol = ev.verdict_rtol if metric == "kl" else 0.0
        verdict = run_verdict(curve, metric, rtol, ev.verdict_atol, ev.verdict_doublings)
        trainer.extra["verdict"] = verdict
        budget = (
            next_budget(trainer.total_steps, verdict["verdict"], tr.max_steps) if tr.until_converged else None
        )
        if budget is None or trainer.history.status == "diverged":
            return
        trainer.total_steps = trainer.extra["budget"] = budget
        trainer.history.status = "running"
        trainer.extra["budget_doublings"] = int(trainer.extra.get("budget_doublings", 0)) + 1


def _write_history(run_dir: str, trainer: Trainer) -> dict[str, Any]:
    """history.json and curves.json of a trained run; returns steps, train_seconds, final_loss, the curve's
    verdict and cost (``curve_seconds``, ``curve_overhead_pct``) and ``budget_doublings``."""
    h = trainer.history
    centres, by_time = h.loss_by_time()
    write_json(
        os.path.join(run_dir, "history.json"),
        {"steps": h.steps, "loss": h.loss, "time_bins": centres, "loss_by_time": by_time},
    )
    out: dict[str, Any] = {
        "steps": trainer.step,
        "train_seconds": round(h.seconds, 3),
        "final_loss": h.loss[-1] if h.loss else float("nan"),
        **trainer.extra.get("verdict", {}),
        "budget_doublings": int(trainer.extra.get("budget_doublings", 0)),
    }
    curve = trainer.extra.get("curve")
    if curve is not None:
        write_json(os.path.join(run_dir, "curves.json"), curve)
        out.update(curve_cost(curve, h.seconds))
    return out


def run_experiment(config_dict: dict, run_dir: str, progress: bool = False) -> dict[str, Any]:
    """Train and evaluate one run; the study engine's run function. Returns metrics and a status.

    Nothing is written before the checks pass: RunDirError if ``run_dir`` holds a run of another config
    (:func:`~difflab.experiments.common.rundir.check_reuse`; a study never resumes such weights)."""
    config = validate_config(config_dict)
    resolved = config_to_dict(config)
    check_device_available(config.train.device)
    check_reuse(run_dir, resolved, resolve=lambda raw: config_to_dict(parse_config(raw)))
    parts = build_run_parts(config) if config.model.name in DIFFUSION_MODELS else None
    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, "config.json"), resolved)
    if parts is None:  # VAE-family, learned-variance DDPM, the "truth" floor row
        return run_baseline(config, run_dir)
    start = time.perf_counter()
    parts, trainer = train_run(config, run_dir, progress=progress, parts=parts)
    result: dict[str, Any] = {"status": "finished", "steps": 0}
    stamp = {"config_hash": config_hash(resolved)}  # metrics.json names the config that made it
    denoiser = parts.denoiser
    if trainer is not None:
        result.update(_write_history(run_dir, trainer))
        if trainer.history.status == "diverged":
            h = trainer.history
            result.update(status="diverged", diverged_at=h.diverged_at, diverged_reason=h.divergence_reason)
            result["seconds"] = round(time.perf_counter() - start, 3)
            write_json(os.path.join(run_dir, "metrics.json"), {**result, **stamp})
            return result
        denoiser = trainer.ema_model().cpu()  # 2D evaluation runs on the CPU
    metrics, samples = evaluate_run(parts, denoiser)
    result.update(metrics)
    if config.eval.score_error and parts.data.diffused is not None:
        from difflab.experiments.toy2d.score import write_score_error

        result.update(write_score_error(parts, denoiser, run_dir))
    np.savez_compressed(os.path.join(run_dir, "samples.npz"), **samples)
    result["seconds"] = round(time.perf_counter() - start, 3)
    write_json(os.path.join(run_dir, "metrics.json"), {**result, **stamp})
    return result


def load_trained(run_dir: str, finished: bool = False) -> tuple[RunParts, Any, str]:
    """The parts of a trained diffusion run, its EMA denoiser (on the CPU) and a note ("" or "(an unfinished
    run: step k of N)"), from the run directory. RunDirError for a missing or corrupt checkpoint, one made by
    a config other than ``config.json``, a diverged run, or (``finished``) an unfinished one."""
    config = validate_config(read_config(run_dir))
    if config.model.name not in DIFFUSION_MODELS:
        raise RunDirError(f"{run_dir}: model {config.model.name!r} is a baseline; only diffusion runs load")
    parts = build_run_parts(config)
    if not parts.trainable:
        return parts, parts.denoiser, ""
    trainer = Trainer(
        parts.denoiser,
        parts.objective,
        parts.data.train,
        config.train,
        parts.total_steps,
        run_dir,
        identity=config_to_dict(config),
    )
    if not trainer.maybe_resume():
        raise RunDirError(f"no checkpoint in {run_dir}: train it first")
    note = check_trained(trainer.state_dict(), os.path.join(run_dir, "checkpoint.pt"), finished=finished)
    return parts, trainer.ema_model().cpu(), note


def sample_path(run_dir: str, out: str | None, default_name: str) -> str:
    """Where ``difflab sample`` writes: ``out`` (``.npz`` appended if missing; a directory gets
    ``default_name`` inside it), else ``run_dir/default_name``."""
    if out is None:
        return os.path.join(run_dir, default_name)
    if os.path.isdir(out) or out.endswith(os.sep):
        return os.path.join(out, default_name)
    return out if out.endswith(".npz") else f"{out}.npz"


def sample_run(
    run_dir: str,
    sampler: str | None,
    steps: int,
    n: int,
    seed: int = 0,
    out: str | None = None,
    grid: str | None = None,
    options: dict[str, Any] | None = None,
) -> str:
    """Draw ``n`` samples from a trained run into an .npz (``samples``); returns a one-line summary.
    ConfigError for a grid the process cannot use; RunDirError (nothing written) if the samples are not
    finite."""
    from difflab.samplers import time_grid

    if steps < 1 or n < 1:
        raise ConfigError(f"sample needs --steps >= 1 and --n >= 1, got steps={steps}, n={n}")
    parts, denoiser, note = load_trained(run_dir)
    ev = parts.config.eval
    sampler_options = {**ev.sampler_options, **(options or {})}
    ev = dataclasses.replace(ev, steps=steps, grid=grid or ev.grid, sampler_options=sampler_options)
    parts.config = dataclasses.replace(parts.config, eval=ev)
    sampler = sampler or ev.sampler_names(parts.config.objective.target)[0]
    try:
        time_grid(parts.process, steps, ev.grid)
    except ValueError as err:
        raise ConfigError(f"--grid {ev.grid} --steps {steps}: {err}") from None
    x, nfe = draw_samples(parts, NoGradDenoiser(denoiser), sampler, n, seed)
    if not np.isfinite(x).all():
        raise RunDirError(
            f"{run_dir}: {int((~np.isfinite(x).any(axis=1)).sum())} of {len(x)} samples are not finite "
            f"({sampler}, {steps} steps); nothing written: try another sampler or more steps"
        )
    path = sample_path(run_dir, out, f"samples_{sampler}_{steps}.npz")
    np.savez_compressed(path, samples=x)
    return f"wrote {len(x)} samples ({sampler}, {steps} steps, NFE {nfe}) to {path}{note}"


def evaluate_saved_run(run_dir: str) -> dict[str, Any]:
    """Re-evaluate a finished diffusion run from its directory (same seeds: the recorded metrics).
    RunDirError for an unfinished or diverged run."""
    parts, denoiser, _ = load_trained(run_dir, finished=True)
    metrics, _ = evaluate_run(parts, denoiser)
    return metrics
