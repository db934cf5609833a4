"""Evaluation of one run on 2D data: likelihood (NELBO, exact NLL by the PF-ODE, KL to the known law),
samples from the target's natural sampler and from the ancestral one, and sample metrics with their floors.

Units: NELBO and NLL in nats per dimension; KL(q || p_theta) in nats (per 2D point); sample metrics as in
:mod:`difflab.metrics.sample2d`. Every figure is computed on held-out data with the sample sizes recorded.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from difflab.experiments.build import RunParts, natural_sampler


class _NoGradDenoiser:
    """Wrap a denoiser module for sampling: float64, no parameter gradients."""

    def __init__(self, denoiser: Any) -> None:
        if isinstance(denoiser, nn.Module):
            denoiser = copy.deepcopy(denoiser).double().eval()
            for p in denoiser.parameters():
                p.requires_grad_(False)
        self.denoiser = denoiser

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x_t, t)


def draw_samples(parts: RunParts, denoiser: Any, sampler: str, n: int, seed: int) -> tuple[np.ndarray, int]:
    """n samples with ``sampler`` on the run's grid; returns (samples, NFE). Same seed => same x_T across arms."""
    from difflab.samplers import SAMPLERS, prior_sample, time_grid

    ev = parts.config.eval
    spec = SAMPLERS[sampler]
    grid_kind = ev.grid
    grid = time_grid(parts.process, ev.steps, grid_kind)
    g = torch.Generator().manual_seed(seed)
    dim = parts.data.train.shape[1]
    x_T = prior_sample(parts.process, (n, dim), g, torch.float64)
    with torch.no_grad():
        x0 = spec.fn(denoiser, parts.process, x_T, grid, generator=g)
    return x0.numpy(), spec.nfe(ev.steps)


def evaluate_run(parts: RunParts, denoiser: Any) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """All metrics of one run. Returns (metrics, samples by sampler name)."""
    from difflab.likelihood.elbo import continuous_nelbo
    from difflab.likelihood.pf_ode import pf_ode_log_likelihood
    from difflab.metrics.sample2d import sample_metrics

    ev = parts.config.eval
    data = parts.data
    den = _NoGradDenoiser(denoiser)
    x_test = data.test.to(torch.float64)
    dim = x_test.shape[1]
    metrics: dict[str, float] = {}

    # NELBO (Monte Carlo over t, stratified), nats/dim
    g = torch.Generator().manual_seed(ev.seed)
    x_nelbo = x_test[: ev.n_nelbo]
    with torch.no_grad():
        elbo = continuous_nelbo(den, parts.process, x_nelbo, n_t=ev.nelbo_t_draws, generator=g)
    total = elbo.total / dim
    metrics["nelbo"] = float(total.mean())
    metrics["nelbo_se"] = float(total.std() / math.sqrt(total.numel()))
    metrics["n_nelbo"] = int(total.numel())

    # exact NLL by the PF-ODE (exact divergence in 2D), and KL(q || p_theta) where q is known
    if ev.nll:
        x_nll = x_test[: ev.n_nll]
        res = pf_ode_log_likelihood(
            den, parts.process, x_nll, divergence="exact", solver="dopri5", rtol=ev.nll_rtol, atol=ev.nll_rtol
        )
        logp = res.log_prob.detach()
        metrics["nll"] = float(-logp.mean() / dim)
        metrics["nll_se"] = float(logp.std() / math.sqrt(logp.numel()) / dim)
        metrics["nll_nfe"] = int(res.nfe)
        metrics["n_nll"] = int(logp.numel())
        if data.law is not None:
            log_q = data.law.log_prob(x_nll)
            diff = log_q - logp
            metrics["kl"] = float(diff.mean())
            metrics["kl_se"] = float(diff.std() / math.sqrt(diff.numel()))
            metrics["nll_true"] = float(-log_q.mean() / dim)

    # samples: the target's natural sampler, and the ancestral one
    samplers = [ev.sampler if ev.sampler != "natural" else natural_sampler(parts.config.objective.target)]
    if ev.also_ancestral and "ancestral" not in samplers:
        samplers.append("ancestral")
    samples: dict[str, np.ndarray] = {}
    ref = data.test[: ev.n_samples].to(torch.float64)
    for i, name in enumerate(samplers):
        x, nfe = draw_samples(parts, den, name, ev.n_samples, ev.seed + 1)
        samples[name] = x
        prefix = "" if i == 0 else f"{name}_"
        mg = torch.Generator().manual_seed(ev.seed + 2)
        sm = sample_metrics(
            torch.as_tensor(x),
            ref,
            law=data.law,
            modes=data.modes,
            generator=mg,
            fresh=data.sample_fresh,
            kde_bandwidth_rule=ev.kde_bandwidth,
            n_eval=ev.kde_n_eval,
        )
        for key, value in sm.items():
            if i > 0 and key.endswith("_floor"):
                continue
            metrics[prefix + key] = float(value)
        metrics[prefix + "nfe"] = int(nfe)
        if i == 0:
            metrics["sampler"] = name  # type: ignore[assignment]
    metrics["n_samples"] = int(ev.n_samples)
    return metrics, samples
