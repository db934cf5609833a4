"""Strict, frozen configuration of one sampler run (``kind = "samplers"``).

A sampler run names a denoiser (``oracle``: the exact Bayes denoiser of the recipe's data law; ``trained``:
the recipe's model, trained once and cached), a sampler and grid (:data:`difflab.samplers.SAMPLERS`,
:data:`~difflab.samplers.GRIDS`) and a target number of denoiser evaluations ``nfe``; the grid steps are
``steps = max(1, round((nfe - denoise_final) / evals_per_step))`` (:func:`steps_for_nfe`), so the NFE actually
spent (``nfe_actual`` in the metrics) can differ from the nominal one by up to one step's evaluations.

``recipe`` is a ``toy2d`` run config (data, process, objective, model, train, eval): its data and process
are the run's for both denoisers; its eval settings only govern the trained model's own evaluation. A recipe
with ``kind = "images"`` is an image run config instead (:mod:`difflab.experiments.sampler_study.images`:
trained denoiser only, FID / KID / IS with the held-out floor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from difflab.experiments.common.configs import (
    ConfigError,
    check_sampler_options,
    parse_dataclass,
    to_dict,
)
from difflab.experiments.images.config import ImageRunConfig, validate_image_config
from difflab.experiments.toy2d.config import RunConfig

DENOISERS = ("oracle", "trained")


@dataclass(frozen=True)
class SamplerRunConfig:
    kind: str = "samplers"
    label: str = ""
    denoiser: str = "oracle"  # oracle (exact Bayes denoiser of the law) | trained (the recipe's model)
    sampler: str = "ode_heun"
    grid: str = "uniform_logsnr"
    nfe: int = 100  # target denoiser evaluations (see steps_for_nfe)
    sampler_options: dict = field(default_factory=dict)
    n_samples: int = 1000  # samples for the sample metrics (and as many fresh true samples for the floors)
    n_pushforward: int = 256  # samples for the exact pushforward KL of deterministic samplers (0: off)
    kde_n_eval: int = 2000  # fresh points of q for the KDE-KL
    seed: int = 1234
    recipe: dict = field(default_factory=dict)  # a toy2d run config (see the module docstring)
    cache_dir: str | None = None  # trained-model cache (default: <study out>/trained beside runs/)


def steps_for_nfe(spec: Any, nfe: int, options: dict[str, Any]) -> int:
    """Grid steps whose NFE (``spec.nfe``, with the final denoising) is nearest to ``nfe``, at least 1."""
    per_step = spec.evals_per_step(**options)
    return max(1, round((int(nfe) - 1) / per_step))


def parse_sampler_config(raw: dict) -> SamplerRunConfig:
    """Nested dict -> SamplerRunConfig; unknown keys / wrong types raise ConfigError."""
    return parse_dataclass(SamplerRunConfig, raw, "")


def recipe_config(config: SamplerRunConfig) -> RunConfig:
    """The recipe as a checked toy2d RunConfig (a diffusion model on a data set with a known law)."""
    from difflab.experiments.toy2d.run import validate_config

    try:
        recipe = validate_config(dict(config.recipe))
    except ConfigError as err:
        raise ConfigError(f"recipe: {err}") from None
    if recipe.model.name != "mlp":
        raise ConfigError(f"recipe.model.name must be 'mlp' (a trained denoiser), got {recipe.model.name!r}")
    return recipe


def validate_sampler_config(raw: dict | SamplerRunConfig) -> SamplerRunConfig:
    """Parse and check every name, range and the sampler x grid combination; raises ConfigError."""
    from difflab.experiments.common.configs import check_choice
    from difflab.processes import build_process
    from difflab.registry import UnknownNameError, lookup
    from difflab.samplers import GRIDS, SAMPLERS, time_grid

    config = parse_sampler_config(raw) if isinstance(raw, dict) else raw
    if config.kind != "samplers":
        raise ConfigError(f"kind {config.kind!r}: a sampler run config must have kind 'samplers'")
    check_choice(DENOISERS, config.denoiser, "denoiser")
    process_config = _recipe_process(config)
    for key in ("nfe", "n_samples", "kde_n_eval"):
        if getattr(config, key) < 2:
            raise ConfigError(f"{key} must be >= 2, got {getattr(config, key)}")
    if config.n_pushforward < 0:
        raise ConfigError(f"n_pushforward must be >= 0 (0: off), got {config.n_pushforward}")
    try:
        spec = lookup(SAMPLERS, config.sampler, "sampler")
        lookup(GRIDS, config.grid, "grid")
        check_sampler_options(config.sampler_options, SAMPLERS, [config.sampler])
        process = build_process(process_config.name, **process_config.options)
        time_grid(process, steps_for_nfe(spec, config.nfe, config.sampler_options), config.grid)
    except ConfigError:
        raise
    except (UnknownNameError, ValueError) as err:  # also: a grid undefined on the process (discrete)
        raise ConfigError(str(err)) from None
    return config


def is_image_recipe(recipe: dict) -> bool:
    return recipe.get("kind") == "images"


def image_recipe(config: Any) -> ImageRunConfig:
    """The recipe as a checked image run config; the oracle is a ConfigError (no exact denoiser)."""
    if config.denoiser != "trained":
        raise ConfigError("denoiser 'oracle' needs a known law; image recipes support only 'trained'")
    try:
        return validate_image_config(dict(config.recipe))
    except ConfigError as err:
        raise ConfigError(f"recipe: {err}") from None


def _recipe_process(config: SamplerRunConfig) -> Any:
    """Check the recipe (an image recipe, or a 2D one whose data set has a known law); its process config."""
    from difflab.data.toy2d import TOY2D

    if is_image_recipe(config.recipe):
        return image_recipe(config).process
    recipe = recipe_config(config)
    if TOY2D[recipe.data.name].law is None:
        mixtures = sorted(name for name, source in TOY2D.items() if source.law is not None)
        raise ConfigError(
            f"data set {recipe.data.name!r} has no Gaussian-mixture law: the oracle needs its exact score "
            f"(sets with one: {', '.join(mixtures)})"
        )
    return recipe.process


def sampler_config_to_dict(config: SamplerRunConfig) -> dict:
    return to_dict(config)
