"""The image arm of the sampler study: a recipe of the ``images`` kind, trained once and cached, sampled by
every (sampler, grid, NFE) and scored by FID / KID / IS against the held-out floor.

Images have no exact denoiser, so only ``denoiser = "trained"`` is defined here; there is no pushforward
density either (a D x D Jacobian per image is out of reach), so no ``kl_push``. The FID floor is the FID of
held-out images against the same reference (the training images), at the same n; ``fid_same_n`` in the
images kind's docstring is the model at the floor's n.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from difflab.experiments.images.config import ImageRunConfig, image_config_to_dict
from difflab.experiments.sampler_study.cache import cached_recipe_run
from difflab.experiments.sampler_study.config import image_recipe, steps_for_nfe

IMAGE_METRICS = ("fid", "fid_floor", "fid_same_n", "kid", "kid_floor", "is", "is_floor", "n_floor")


def trained_image_model(recipe: ImageRunConfig, root: Path) -> tuple[Any, dict[str, Any], str]:
    """(EMA denoiser, the recipe run's own metrics, its directory); trained once under a file lock."""
    from difflab.experiments.images.run import run_image_experiment
    from difflab.experiments.images.train import load_ema_denoiser
    from difflab.experiments.training.dist import resolve_device

    metrics, model_dir = cached_recipe_run(image_config_to_dict(recipe), root, run_image_experiment)
    device = resolve_device(recipe.train.device)
    return load_ema_denoiser(recipe, str(model_dir), device), metrics, str(model_dir)


def image_run(config: Any, root: Path, nfe: int | None = None, n: int | None = None) -> dict[str, Any]:
    """Sample ``n_samples`` images at the run's NFE and score them (``_samples``: the draws)."""
    from difflab.data.images import dataset_shape
    from difflab.experiments.images.evaluate import draw_image_samples, feature_network, sample_quality
    from difflab.experiments.images.train import DATA_LEVELS, load_split
    from difflab.processes import build_process
    from difflab.samplers import SAMPLERS

    recipe = image_recipe(config)
    den, model_metrics, _ = trained_image_model(recipe, root)
    process = build_process(recipe.process.name, **recipe.process.options)
    steps = steps_for_nfe(SAMPLERS[config.sampler], nfe or config.nfe, config.sampler_options)
    device = next(den.parameters()).device
    t0 = time.perf_counter()
    x, info = draw_image_samples(
        den,
        process,
        dataset_shape(recipe.data.name),
        n or config.n_samples,
        sampler=config.sampler,
        steps=steps,
        grid=config.grid,
        options=config.sampler_options,
        seed=config.seed + 1,
        batch=recipe.eval.batch,
        device=device,
    )
    result: dict[str, Any] = {"status": "finished", "steps": steps, "nfe_actual": info["nfe"]}
    result["sample_seconds"] = round(time.perf_counter() - t0, 3)
    train, test = load_split(recipe, "train"), load_split(recipe, "test")
    net, feature_info = feature_network(recipe, train, test, device)
    heldout = test.images[: recipe.data.n_val] if recipe.data.n_val else test.images
    levels = DATA_LEVELS[recipe.data.name]  # samples enter the features on the data's grey levels
    q = sample_quality(
        net, train.images, heldout, x, levels=levels, seed=config.seed, feature=feature_info.get("feature")
    )
    result.update({k: q[k] for k in IMAGE_METRICS if k in q})
    result["model_fid"] = float(model_metrics.get("fid", float("nan")))
    result["_samples"] = x
    return result
