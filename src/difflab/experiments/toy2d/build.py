"""Turn a RunConfig into objects: data, process, objective, denoiser. The only place names become objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from difflab.experiments.common.configs import (
    check_choice,
    check_denoiser_options,
    check_device,
    check_sampler_options,
)
from difflab.experiments.toy2d.config import ConfigError, RunConfig, also_sampler_names, total_steps
from difflab.experiments.training.trainer import LR_SCHEDULES, OPTIMIZERS
from difflab.parameterization import TargetDenoiser, parse_target
from difflab.processes import Process, build_process
from difflab.registry import lookup

DIFFUSION_MODELS = ("mlp", "oracle")
#: every model name: the diffusion denoisers above, and the baselines and the "truth" floor row run by
#: :func:`difflab.experiments.toy2d.baselines.run_baseline` (see BASELINE_MODELS there)
MODELS = (*DIFFUSION_MODELS, "truth", "categorical_vae", "gaussian_vae", "hierarchical_vae", "lv_ddpm")


@dataclass
class RunParts:
    config: RunConfig
    process: Process
    objective: Any
    data: Any
    denoiser: nn.Module | Any
    total_steps: int
    trainable: bool


def build_process_objective(config: RunConfig) -> tuple[Process, Any]:
    """The run's process and objective from their names and options (UnknownNameError on a bad name)."""
    from difflab.objectives import build_objective

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
    return process, objective


def check_logsnr_bound(process: Process, max_logsnr: float, name: str) -> None:
    """ConfigError unless the process's largest log-SNR, logsnr(t_min), is within ``max_logsnr``: the bound
    of a data set whose diffused law is a quadrature (``difflab.data.toy2d.DIFFUSED_MAX_LOGSNR``)."""
    top = float(process.logsnr(process.t_min))
    if top > max_logsnr + 1e-9:
        raise ConfigError(
            f"the exact score of {name!r} (the oracle, eval.score_error) is a quadrature valid up to log-SNR "
            f"{max_logsnr:g}, but the process reaches {top:.4g} at t_min = {process.t_min:g}; choose a "
            f"process whose largest log-SNR is at most {max_logsnr:g} (e.g. trig_vp with "
            f"logsnr_max <= {max_logsnr:g})"
        )


def check_names(config: RunConfig) -> Process:
    """Check every name of a run against its table and the cross-field rules; returns the process.

    Raises ConfigError or UnknownNameError (the message lists the valid choices). Reads no data."""
    from difflab.data.toy2d import TOY2D, oracle_sets
    from difflab.models.mlp import ACTIVATIONS, CONDITIONINGS
    from difflab.samplers import GRIDS, SAMPLERS

    process, _ = build_process_objective(config)
    m, ev = config.model, config.eval
    lookup({n: n for n in MODELS}, m.name, "model")
    lookup(ACTIVATIONS, m.activation, "activation")
    check_choice(CONDITIONINGS, m.conditioning, "conditioning")
    check_denoiser_options(m.preconditioning, m.time_input, config.objective.target)
    check_device(config.train.device)
    lookup(TOY2D, config.data.name, "data set")
    lookup(OPTIMIZERS, config.train.optimizer, "optimizer")
    check_choice(LR_SCHEDULES, config.train.lr_schedule, "lr schedule")
    if ev.sampler != "natural":
        lookup(SAMPLERS, ev.sampler, "sampler")
    for name in also_sampler_names(ev.also_samplers):
        lookup(SAMPLERS, name, "sampler (eval.also_samplers)")
    check_sampler_options(ev.sampler_options, SAMPLERS, ev.sampler_names(config.objective.target))
    lookup(GRIDS, ev.grid, "grid")
    source = TOY2D[config.data.name]
    if m.name == "oracle" and not source.has_oracle:
        raise ConfigError(
            f"model 'oracle' (the exact denoiser) needs a data set whose diffused score is known in closed "
            f"form ({', '.join(oracle_sets())}); {config.data.name!r} is not one"
        )
    if (m.name == "oracle" or ev.score_error) and source.has_oracle:
        check_logsnr_bound(process, source.max_logsnr, config.data.name)
    if config.train.checkpoint_every % config.train.log_every:
        raise ConfigError("train.checkpoint_every must be a multiple of train.log_every")
    return process


def build_run_parts(config: RunConfig) -> RunParts:
    """Build every part of a diffusion run (data, process, objective, denoiser); names already checked."""
    from difflab.data.toy2d import make_toy2d
    from difflab.models.mlp import MLP

    m = config.model
    if m.name not in DIFFUSION_MODELS:
        raise ConfigError(f"model {m.name!r} is not a diffusion denoiser; see toy2d.baselines.run_baseline")
    process, objective = build_process_objective(config)
    data = make_toy2d(config.data.name, config.data.n_train, config.data.n_test, config.data.seed)
    if m.name == "oracle":
        denoiser: Any = data.diffused.denoiser(process)
        trainable = False
    else:
        torch.manual_seed(config.train.seed)
        dim = data.train.shape[1]
        net = MLP(dim, m.hidden, m.layers, m.time_embed, m.embed_dim, m.activation, m.conditioning)
        target = parse_target(config.objective.target)
        denoiser = TargetDenoiser(
            net,
            process,
            target,
            m.input_scaling,
            data_std=1.0,
            preconditioning=m.preconditioning,
            time_input=m.time_input,
        )  # data_std: the 2D sets are z-scored
        trainable = True
    return RunParts(config, process, objective, data, denoiser, total_steps(config), trainable)
