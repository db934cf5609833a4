"""Turn a RunConfig into objects: data, process, objective, denoiser. The only place names become objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from difflab.experiments.config import ConfigError, RunConfig, total_steps
from difflab.experiments.trainer import LR_SCHEDULES, OPTIMIZERS
from difflab.parameterization import TargetDenoiser, parse_target
from difflab.processes import Process, build_process
from difflab.registry import lookup

DIFFUSION_MODELS = ("mlp", "oracle")
#: every model name: the diffusion denoisers above, and the baselines and the "truth" floor row run by
#: :func:`difflab.experiments.baselines_2d.run_baseline` (see BASELINE_MODELS there)
MODELS = (*DIFFUSION_MODELS, "truth", "categorical_vae", "gaussian_vae", "hierarchical_vae", "lv_ddpm")


def natural_sampler(target: str) -> str:
    """Seed 000 sampled each target its own way: x0 and eps ancestrally, v by the deterministic
    (DDIM eta = 0) update, score by a Langevin-type SDE; we use the reverse-SDE Euler-Maruyama for score."""
    return {"x0": "ancestral", "eps": "ancestral", "v": "ddim", "score": "euler_maruyama"}[target]


def _check_sampler_options(config: RunConfig, samplers: dict[str, Any]) -> None:
    """eval.also_samplers must name samplers, and each eval.sampler_options key must be accepted by at least
    one sampler the run draws with (else it would be silently ignored)."""
    import inspect

    from difflab.experiments.evaluate import also_sampler_names

    ev = config.eval
    names = [natural_sampler(config.objective.target) if ev.sampler == "natural" else ev.sampler]
    names += ["ancestral"] if ev.also_ancestral else []
    for name in also_sampler_names(ev.also_samplers):
        lookup(samplers, name, "sampler (eval.also_samplers)")
        names.append(name)
    accepted = set().union(*(inspect.signature(samplers[n].fn).parameters for n in names))
    accepted -= {"denoiser", "process", "x_T", "grid", "generator", "callback"}
    unknown = sorted(set(ev.sampler_options) - accepted)
    if unknown:
        raise ConfigError(
            f"eval.sampler_options: {unknown[0]!r} is not an option of the samplers {names}; "
            f"valid: {', '.join(sorted(accepted))}"
        )


@dataclass
class RunParts:
    config: RunConfig
    process: Process
    objective: Any
    data: Any
    denoiser: nn.Module | Any
    total_steps: int
    trainable: bool


def build_run_parts(config: RunConfig, check_only: bool = False) -> RunParts | None:
    """Build (or with ``check_only`` just check) every named part of a run."""
    from difflab.data.toy2d import TOY2D, make_toy2d
    from difflab.models.mlp import ACTIVATIONS, CONDITIONINGS, MLP
    from difflab.objectives import build_objective
    from difflab.samplers import GRIDS, SAMPLERS

    process = build_process(config.process.name, **config.process.options)
    obj = config.objective
    objective = build_objective(
        process,
        target=obj.target,
        weighting=obj.weighting,
        time_dist=obj.time_dist,
        norm=obj.norm,
        **obj.options,
    )
    lookup({m: m for m in MODELS}, config.model.name, "model")
    lookup(ACTIVATIONS, config.model.activation, "activation")
    lookup({c: c for c in CONDITIONINGS}, config.model.conditioning, "conditioning")
    lookup({d: d for d in ("cpu", "cuda")}, config.train.device.split(":")[0], "device")
    lookup(TOY2D, config.data.name, "data set")
    lookup(OPTIMIZERS, config.train.optimizer, "optimizer")
    lookup({s: s for s in LR_SCHEDULES}, config.train.lr_schedule, "lr schedule")
    if config.eval.sampler != "natural":
        lookup(SAMPLERS, config.eval.sampler, "sampler")
    _check_sampler_options(config, SAMPLERS)
    lookup(GRIDS, config.eval.grid, "grid")
    m = config.model
    if m.name == "oracle" and TOY2D[config.data.name].law is None:
        raise ConfigError(
            f"model 'oracle' needs a data set with a known density; {config.data.name!r} has none"
        )
    if config.train.checkpoint_every % config.train.log_every:
        raise ConfigError("train.checkpoint_every must be a multiple of train.log_every")
    if m.name not in DIFFUSION_MODELS:
        from difflab.experiments.baselines_2d import check_baseline_config

        check_baseline_config(config, process)
    if check_only:
        return None
    if m.name not in DIFFUSION_MODELS:
        raise ConfigError(f"model {m.name!r} is not a diffusion denoiser; see baselines_2d.run_baseline")

    data = make_toy2d(config.data.name, config.data.n_train, config.data.n_test, config.data.seed)
    if m.name == "oracle":
        denoiser: Any = data.law.denoiser(process)
        trainable = False
    else:
        torch.manual_seed(config.train.seed)
        dim = data.train.shape[1]
        net = MLP(dim, m.hidden, m.layers, m.time_embed, m.embed_dim, m.activation, m.conditioning)
        denoiser = TargetDenoiser(net, process, parse_target(obj.target), input_scaling=m.input_scaling)
        trainable = True
    return RunParts(config, process, objective, data, denoiser, total_steps(config), trainable)
