"""One sampler run: build the denoiser (exact, or the recipe's model from the cache), sample, measure.

Files in the run directory: ``config.json`` (resolved, ``"kind": "samplers"``), ``metrics.json``,
``samples.npz``. The trained model lives in ``<cache>/<recipe hash>/`` (a ``toy2d`` run directory, its own
``metrics.json`` included), made once under ``<cache>/<recipe hash>.lock`` so that parallel study workers
never train it twice; ``<cache>`` is ``cache_dir``, else ``<study out>/trained`` when the run directory sits
in a study's ``runs/``, else ``<run dir>/trained``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab.experiments.common.rundir import RunDirError, read_config, write_json
from difflab.experiments.sampler_study.cache import cached_recipe_run, canonical_hash
from difflab.experiments.sampler_study.config import (
    SamplerRunConfig,
    is_image_recipe,
    recipe_config,
    sampler_config_to_dict,
    steps_for_nfe,
    validate_sampler_config,
)
from difflab.experiments.sampler_study.images import image_run
from difflab.experiments.sampler_study.pushforward import pushforward_kl, pushforward_log_density
from difflab.experiments.toy2d.config import RunConfig, config_to_dict

#: the sample metrics kept (each with its ``_floor``: the same metric on fresh true samples)
SAMPLE_METRICS = ("sw2", "mmd2", "kde_kl", "mode_tv", "w2")


@dataclass
class SamplerParts:
    config: SamplerRunConfig
    recipe: RunConfig
    data: Any
    process: Any
    denoiser: Any
    model_metrics: dict[str, Any]


def cache_root(config: SamplerRunConfig, run_dir: str) -> Path:
    """Where trained models are cached (see the module docstring)."""
    if config.cache_dir:
        return Path(config.cache_dir).expanduser()
    run = Path(run_dir).resolve()
    return run.parent.parent / "trained" if run.parent.name == "runs" else run / "trained"


def recipe_hash(recipe: RunConfig) -> str:
    """SHA-256 (16 hex digits) of the recipe's canonical JSON, label left out."""
    return canonical_hash(config_to_dict(recipe))


def trained_model(recipe: RunConfig, root: Path) -> tuple[Any, dict[str, Any]]:
    """The recipe's EMA denoiser (float64, no parameter gradients) and its own metrics; trains it the first
    time (a ``toy2d`` run in ``root/<hash>``) while holding ``root/<hash>.lock``."""
    from difflab.experiments.toy2d.evaluate import NoGradDenoiser
    from difflab.experiments.toy2d.run import load_trained, run_experiment

    metrics, model_dir = cached_recipe_run(config_to_dict(recipe), root, run_experiment)
    _, denoiser, _ = load_trained(str(model_dir), finished=True)
    return NoGradDenoiser(denoiser), metrics


def build_parts(config: SamplerRunConfig, run_dir: str) -> SamplerParts:
    """Data, process and denoiser of a run (the trained one from the cache)."""
    from difflab.data.toy2d import make_toy2d
    from difflab.processes import build_process

    recipe = recipe_config(config)
    d = recipe.data
    data = make_toy2d(d.name, d.n_train, d.n_test, d.seed)
    process = build_process(recipe.process.name, **recipe.process.options)
    if config.denoiser == "oracle":
        return SamplerParts(config, recipe, data, process, data.law.denoiser(process), {})
    denoiser, metrics = trained_model(recipe, cache_root(config, run_dir))
    return SamplerParts(config, recipe, data, process, denoiser, metrics)


def draw(parts: SamplerParts, n: int, nfe: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(x_T, samples, steps, NFE) of n draws; x_T from ``seed`` (the same for every arm)."""
    from difflab.samplers import SAMPLERS, prior_sample, time_grid

    c = parts.config
    spec = SAMPLERS[c.sampler]
    steps = steps_for_nfe(spec, nfe, c.sampler_options)
    grid = time_grid(parts.process, steps, c.grid)
    g = torch.Generator().manual_seed(seed)
    x_T = prior_sample(parts.process, (n, parts.data.test.shape[1]), g, torch.float64)
    with torch.no_grad():
        x0 = spec.fn(parts.denoiser, parts.process, x_T, grid, generator=g, **c.sampler_options)
    return x_T, x0, steps, spec.nfe(steps, **c.sampler_options)


def is_deterministic(config: SamplerRunConfig) -> bool:
    """Whether the sampler is a deterministic map of x_T (DDIM only at eta = 0)."""
    from difflab.samplers import SAMPLERS

    if config.sampler == "ddim":
        return float(config.sampler_options.get("eta", 0.0)) == 0.0
    return not SAMPLERS[config.sampler].stochastic


def measure(parts: SamplerParts, x_T: torch.Tensor, x0: torch.Tensor, steps: int) -> dict[str, Any]:
    """Sample metrics with floors, and the exact pushforward KL for a deterministic sampler."""
    from difflab.metrics.sample2d import sample_metrics
    from difflab.samplers import SAMPLERS, time_grid

    c, data = parts.config, parts.data
    sm = sample_metrics(
        x0,
        data.test[: c.n_samples].to(torch.float64),
        law=data.law,
        modes=data.modes,
        generator=torch.Generator().manual_seed(c.seed + 2),
        fresh=data.sample_fresh,
        kde_bandwidth_rule="scott",
        n_eval=c.kde_n_eval,
    )
    out: dict[str, Any] = {}
    for key in SAMPLE_METRICS:
        for suffix in ("", "_floor"):
            if key + suffix in sm:
                out[key + suffix] = float(sm[key + suffix])
    if not torch.isfinite(x0).all():
        out["nonfinite_samples"] = int((~torch.isfinite(x0)).any(1).sum())
    if c.n_pushforward and is_deterministic(c):
        grid = time_grid(parts.process, steps, c.grid)
        fn = SAMPLERS[c.sampler].fn
        xp, log_p = pushforward_log_density(
            fn, parts.denoiser, parts.process, x_T[: c.n_pushforward], grid, **c.sampler_options
        )
        out["kl_push"], out["kl_push_se"] = pushforward_kl(log_p, data.law.log_prob(xp))
    return out


def to_uint8(x: Any) -> np.ndarray:
    from difflab.experiments.images.evaluate import to_uint8 as images_uint8

    return images_uint8(x)


def run_sampler_experiment(raw: dict, run_dir: str, progress: bool = False) -> dict[str, Any]:
    """One run: validate, build, sample ``n_samples`` at the run's NFE, measure; the study's run function."""
    config = validate_sampler_config(dict(raw))
    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, "config.json"), sampler_config_to_dict(config))
    start = time.perf_counter()
    if is_image_recipe(config.recipe):
        result = image_run(config, cache_root(config, run_dir))
        samples = to_uint8(result.pop("_samples"))
    else:
        result = evaluate_parts(build_parts(config, run_dir))
        samples = result.pop("_samples")
    result["seconds"] = round(time.perf_counter() - start, 3)
    # the run's identity, also where the study fixes it instead of varying it (samplers-images-quick fixes
    # the denoiser): the report groups by these
    result.update(denoiser=config.denoiser, sampler=config.sampler, grid=config.grid)
    np.savez_compressed(os.path.join(run_dir, "samples.npz"), samples=samples)
    write_json(os.path.join(run_dir, "metrics.json"), result)
    return result


def evaluate_parts(parts: SamplerParts) -> dict[str, Any]:
    """Status, steps, NFE, timing and metrics of one run (``_samples``: the draws, for the caller)."""
    c = parts.config
    t0 = time.perf_counter()
    x_T, x0, steps, nfe = draw(parts, c.n_samples, c.nfe, c.seed + 1)
    result: dict[str, Any] = {"status": "finished", "steps": steps, "nfe_actual": nfe}
    result["sample_seconds"] = round(time.perf_counter() - t0, 3)
    result.update(measure(parts, x_T, x0, steps))
    if "kl" in parts.model_metrics:
        result["model_kl"] = float(parts.model_metrics["kl"])  # the trained model's own PF-ODE KL
    result["_samples"] = x0.numpy()
    return result


def _load_config(run_dir: str) -> SamplerRunConfig:
    raw = read_config(run_dir)
    if raw.get("kind") != "samplers":
        raise RunDirError(f"{run_dir} is not a sampler run")
    return validate_sampler_config(raw)


def _load(run_dir: str) -> SamplerParts:
    return build_parts(_load_config(run_dir), run_dir)


def evaluate_sampler_run(run_dir: str) -> dict[str, Any]:
    """Re-measure a finished run (same seeds and cached model: the recorded metrics)."""
    config = _load_config(run_dir)
    if is_image_recipe(config.recipe):
        result = image_run(config, cache_root(config, run_dir))
    else:
        result = evaluate_parts(build_parts(config, run_dir))
    result.pop("_samples")
    return result


def sample_sampler_run(run_dir: str, request: Any) -> str:
    """``difflab sample``: n draws with the run's (or the request's) sampler, grid and steps."""
    from dataclasses import replace

    from difflab.samplers import SAMPLERS

    c = _load_config(run_dir)
    c = replace(
        c,
        sampler=request.sampler or c.sampler,
        grid=request.grid or c.grid,
        sampler_options={**c.sampler_options, **dict(request.options)},
        seed=request.seed - 1,  # draws use seed + 1
    )
    nfe = SAMPLERS[c.sampler].nfe(request.steps, **c.sampler_options)
    c = validate_sampler_config(replace(c, nfe=max(2, nfe)))
    if is_image_recipe(c.recipe):
        result = image_run(c, cache_root(c, run_dir), nfe=nfe, n=request.n)
        x0, steps, nfe = to_uint8(result["_samples"]), result["steps"], result["nfe_actual"]
    else:
        parts = build_parts(c, run_dir)
        _, x, steps, nfe = draw(parts, request.n, nfe, request.seed)
        x0 = x.numpy()
    out = request.out or os.path.join(run_dir, f"samples_{c.sampler}_{steps}.npz")
    np.savez_compressed(out, samples=x0)
    return f"wrote {len(x0)} samples ({c.sampler}, {steps} steps, NFE {nfe}) to {out}"
