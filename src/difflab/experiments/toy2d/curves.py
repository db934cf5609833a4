"""The 2D learning-curve evaluation: cheap, low-variance metrics of the EMA model on a fixed held-out subset.

At every curve point (:mod:`difflab.experiments.training.curves`), on the first ``eval.curve_n`` test points
(at most ``data.n_test``; ``eval.curve_n_samples`` likewise; the same points for every arm and every point
of training, the same t / eps draws, the same prior draws):

* ``kl`` = mean_i [log q(x_i) - log p_theta(x_i)] (nats per point, where the law q is known) and ``nll`` =
  -mean_i log p_theta(x_i) / d (nats/dim), log p_theta by the probability-flow ODE with exact divergence and
  adaptive Dormand-Prince at ``eval.curve_rtol`` (Chen et al. 2018; Song et al. 2021, eq. 39); per-point
  values are kept so that the change between two points has a paired standard error;
* ``nelbo`` (nats/dim) with its s.e., ``eval.curve_nelbo_t_draws`` stratified t per point (one fixed
  generator). Default 64, not the final evaluation's 512: on 200 points the spread of the per-point NELBO
  over the points (s.e. about 0.02-0.03 nats/dim) dominates anyway, and 512 draws made the NELBO 70 % of a
  curve point's cost (0.44 of 0.62 s, default study's mixture8 eps arm, one thread);
* ``sw2``: sliced W_2 (Bonneel et al. 2015) of ``eval.curve_n_samples`` samples of the run's first sampler
  on its grid with ``eval.curve_sample_steps`` steps (fewer than the final evaluation's: a trend, not the
  final figure) against as many held-out points, and ``sw2_floor``: the same with fresh true samples in place
  of the model's (same n, same projections), the value a perfect model gets.

Cost: the PF-ODE (about 40-70 adaptive steps at rtol 1e-2, each with d = 2 backward passes) and the sampler
dominate; at rtol 1e-2 the KL moves by about 0.002 nats against 1e-3 (measured on a score-SDE arm with KL
0.63, s.e. 0.036), far inside its standard error, and the curve point costs about a third as much.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from difflab.experiments.toy2d.build import RunParts
from difflab.experiments.toy2d.evaluate import NoGradDenoiser, draw_samples


def curve_metric(parts: RunParts) -> str:
    """The metric the verdict reads: exact KL where the density is known (every built-in set), else the
    PF-ODE NLL."""
    return "kl" if parts.data.density is not None else "nll"


def curve_evaluator(parts: RunParts):
    """An EMA model -> (metrics, per-point values) function for :func:`train_with_curve`."""
    from difflab.likelihood.elbo import continuous_nelbo
    from difflab.likelihood.pf_ode import pf_ode_log_likelihood
    from difflab.metrics.sample2d import sliced_wasserstein

    ev = parts.config.eval
    data = parts.data
    x = data.test[: ev.curve_n].to(torch.float64)
    dim = x.shape[1]
    log_q = data.density.log_prob(x) if data.density is not None else None
    n_s = min(ev.curve_n_samples, data.test.shape[0])
    ref = data.test[:n_s].to(torch.float64)
    sampler = ev.sampler_names(parts.config.objective.target)[0]
    sample_parts = dataclasses.replace(
        parts,
        config=dataclasses.replace(parts.config, eval=dataclasses.replace(ev, steps=ev.curve_sample_steps)),
    )
    fresh = data.sample_fresh(n_s, torch.Generator().manual_seed(ev.seed + 14))
    proj_seed = ev.seed + 15
    floor = sliced_wasserstein(fresh, ref, generator=torch.Generator().manual_seed(proj_seed))

    def evaluate(model: Any) -> tuple[dict[str, float], dict[str, list[float]]]:
        den = NoGradDenoiser(model.cpu())
        metrics: dict[str, float] = {}
        values: dict[str, list[float]] = {}
        g = torch.Generator().manual_seed(ev.seed + 13)
        with torch.no_grad():
            elbo = continuous_nelbo(den, parts.process, x, n_t=ev.curve_nelbo_t_draws, generator=g)
        total = elbo.total / dim
        metrics["nelbo"] = float(total.mean())
        metrics["nelbo_se"] = float(total.std() / math.sqrt(total.numel()))
        res = pf_ode_log_likelihood(
            den, parts.process, x, divergence="exact", solver="dopri5", rtol=ev.curve_rtol, atol=ev.curve_rtol
        )
        logp = res.log_prob.detach()
        metrics["nll"] = float(-logp.mean() / dim)
        metrics["nll_se"] = float(logp.std() / math.sqrt(logp.numel()) / dim)
        values["nll"] = (-logp / dim).tolist()
        metrics["nll_nfe"] = int(res.nfe)
        if log_q is not None:
            diff = log_q - logp
            metrics["kl"] = float(diff.mean())
            metrics["kl_se"] = float(diff.std() / math.sqrt(diff.numel()))
            values["kl"] = diff.tolist()
        if n_s >= 2:
            xs, _ = draw_samples(sample_parts, den, sampler, n_s, ev.seed + 16)
            metrics["sw2"] = sliced_wasserstein(
                torch.as_tensor(xs), ref, generator=torch.Generator().manual_seed(proj_seed)
            )
            metrics["sw2_floor"] = floor
        return metrics, values

    return evaluate
