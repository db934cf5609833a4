"""Evaluation of one run on 2D data: likelihood (NELBO, exact NLL by the PF-ODE, KL to the known law),
samples from the target's natural sampler and from the ancestral one, and sample metrics with their floors.

Units: NELBO and NLL in nats per dimension; KL(q || p_theta) in nats (per 2D point); sample metrics as in
:mod:`difflab.metrics.sample2d`. Every figure is computed on held-out data with the sample sizes recorded.

Per-point values (issue 10): :func:`evaluate_run` also returns, beside the samples (so they are saved in the
run's ``samples.npz``), ``pointwise_<metric>`` arrays whose means are the recorded metrics exactly:
``pointwise_kl`` = log q(x_i) - log p_theta(x_i) (nats), ``pointwise_nll`` = -log p_theta(x_i) / D and
``pointwise_nelbo`` = NELBO(x_i) / D. Every arm evaluates the same held-out points with generators seeded
from ``eval.seed``, so arm - arm differences of these arrays are paired (same points, same t / eps draws).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from difflab.experiments.common.configs import options_for
from difflab.experiments.toy2d.build import RunParts

POINTWISE_PREFIX = "pointwise_"


class CastNetwork(nn.Module):
    """Run a backbone in ``dtype`` (float32: the precision it was trained in) inside a float64 pipeline:
    inputs are cast to ``dtype``, the prediction back to the input's dtype."""

    def __init__(self, net: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.net = net.to(dtype)
        self.dtype = dtype

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x_t.to(self.dtype), t.to(self.dtype)).to(x_t.dtype)


class NoGradDenoiser:
    """Wrap a denoiser module for evaluation: no parameter gradients; the diffusion arithmetic (process
    coefficients, target -> (x0_hat, eps_hat) hub, samplers, estimators) in float64.

    ``network_dtype`` is the dtype the backbone (``denoiser.net`` of a
    :class:`~difflab.parameterization.TargetDenoiser`) runs in. Default: the dtype of its parameters, i.e.
    the precision it was trained in (float32), so a float64 copy would only add digits the function does not
    have: on the default
    study's mixture8 eps arm the NELBO over 2000 points x 512 t draws moved by 5e-9 nats/dim (0.49398490 vs
    0.49398490, MC s.e. 0.0036) and took 6.6 s instead of 17.0 s on one thread. ``torch.float64`` gives the
    whole model in float64 (the behaviour before)."""

    def __init__(self, denoiser: Any, network_dtype: torch.dtype | None = None) -> None:
        if isinstance(denoiser, nn.Module):
            net = getattr(denoiser, "net", None)
            if network_dtype is None and isinstance(net, nn.Module):
                network_dtype = next(net.parameters(), torch.empty(0, dtype=torch.float64)).dtype
            denoiser = copy.deepcopy(denoiser).double().eval()
            net = getattr(denoiser, "net", None)
            if network_dtype not in (None, torch.float64) and isinstance(net, nn.Module):
                denoiser.net = CastNetwork(net, network_dtype)
            for p in denoiser.parameters():
                p.requires_grad_(False)
        self.denoiser = denoiser

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x_t, t)


#: dopri5 steps (accepted + rejected) of the PF-ODE NLL before it is recorded as "did not converge"; a
#: trained 2D model needs tens to a few hundred (31 at rtol 1e-3 on the tiny test run: NFE 188)
NLL_MAX_STEPS = 2000


def draw_samples(parts: RunParts, denoiser: Any, sampler: str, n: int, seed: int) -> tuple[np.ndarray, int]:
    """n samples with ``sampler`` on the run's grid; returns (samples, NFE). Same seed: same x_T across arms.

    ``eval.sampler_options`` entries the sampler accepts are passed to it (e.g. ``snr``, ``n_corrector``)."""
    from difflab.samplers import SAMPLERS, prior_sample, time_grid

    ev = parts.config.eval
    spec = SAMPLERS[sampler]
    options = options_for(spec.fn, ev.sampler_options)
    grid_kind = ev.grid
    grid = time_grid(parts.process, ev.steps, grid_kind)
    g = torch.Generator().manual_seed(seed)
    dim = parts.data.train.shape[1]
    x_T = prior_sample(parts.process, (n, dim), g, torch.float64)
    with torch.no_grad():
        x0 = spec.fn(denoiser, parts.process, x_T, grid, generator=g, **options)
    return x0.numpy(), spec.nfe(ev.steps, **options)


def sample_quality(
    parts_or_data: Any, x: np.ndarray | torch.Tensor, *, with_floor: bool = True
) -> dict[str, float]:
    """The 2D sample metrics of one sample set (:func:`~difflab.metrics.sample2d.sample_metrics`), plus,
    behind the eval flags, seed 003's fixed-bandwidth KDE measure (``kde_kl_h`` and its floor, h given in raw
    data units by ``eval.kde_h_raw`` and divided by the z-scoring scale) and per-mode fractions
    (``mode_frac_<k>``; the true weights are ``law.weights``). Shared by diffusion and baseline runs so that
    every row of a study is measured by the same code on the same reference, evaluation points and seeds."""
    from difflab.metrics.sample2d import kde_kl, mode_coverage, sample_metrics

    config, data = parts_or_data.config, parts_or_data.data
    ev = config.eval
    ref = data.test[: ev.n_samples].to(torch.float64)
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    mg = torch.Generator().manual_seed(ev.seed + 2)
    sm = sample_metrics(
        x,
        ref,
        law=data.density,
        modes=data.modes,
        generator=mg,
        fresh=data.sample_fresh,
        kde_bandwidth_rule=ev.kde_bandwidth,
        n_eval=ev.kde_n_eval,
    )
    out = {k: float(v) for k, v in sm.items() if with_floor or not k.endswith("_floor")}
    if ev.kde_h_raw is not None and data.density is not None:
        h = (ev.kde_h_raw / data.scale).to(torch.float64)
        g = torch.Generator().manual_seed(ev.seed + 3)
        pts = data.density.sample(ev.kde_n_eval, generator=g)
        out["kde_kl_h"] = kde_kl(x, data.density, bandwidth=h, eval_points=pts).value
        out["kde_h"] = float(h.log().mean().exp())
        if with_floor:
            fresh = data.sample_fresh(x.shape[0], torch.Generator().manual_seed(ev.seed + 4))
            out["kde_kl_h_floor"] = kde_kl(fresh, data.density, bandwidth=h, eval_points=pts).value
    if ev.mode_fractions and data.modes is not None:
        cov = mode_coverage(x, data.modes, data.mode_weights)
        for k, frac in enumerate(cov.fractions.tolist()):
            out[f"mode_frac_{k}"] = float(frac)
    return out


def likelihood_metrics(
    parts: RunParts, den: Any, pointwise: dict[str, np.ndarray] | None = None
) -> dict[str, float]:
    """NELBO (Monte Carlo over t, stratified) and the exact NLL by the PF-ODE, in nats/dim; KL(q || p_theta)
    in nats per point where the law q is known. If ``pointwise`` is given, the per-point values behind
    ``nelbo``, ``nll`` and ``kl`` are stored in it under those names (module docstring)."""
    points: dict[str, np.ndarray] = {} if pointwise is None else pointwise
    from difflab.likelihood.elbo import continuous_nelbo
    from difflab.likelihood.pf_ode import pf_ode_log_likelihood

    ev = parts.config.eval
    data = parts.data
    x_test = data.test.to(torch.float64)
    dim = x_test.shape[1]
    metrics: dict[str, float] = {}
    g = torch.Generator().manual_seed(ev.seed)
    x_nelbo = x_test[: ev.n_nelbo]
    with torch.no_grad():
        elbo = continuous_nelbo(den, parts.process, x_nelbo, n_t=ev.nelbo_t_draws, generator=g)
    total = elbo.total / dim
    metrics["nelbo"] = float(total.mean())
    metrics["nelbo_se"] = float(total.std() / math.sqrt(total.numel()))
    metrics["n_nelbo"] = int(total.numel())
    points["nelbo"] = total.numpy().astype(np.float64)
    _, metrics["nelbo_se_mc"], metrics["nelbo_se_points"] = elbo.mean_se_parts()  # issue 9, item 7
    if data.density is not None:  # E_q[log q] + NELBO >= KL of the reverse-SDE model (not of the PF-ODE's)
        metrics["kl_elbo"] = float(data.density.log_prob(x_nelbo).mean() + elbo.total.mean())
    if not ev.nll:
        return metrics
    x_nll = x_test[: ev.n_nll]
    try:  # bounded work: a run whose field is stiff (a blown-up model) gets a record, not minutes of solver
        res = pf_ode_log_likelihood(
            den,
            parts.process,
            x_nll,
            divergence="exact",
            solver="dopri5",
            rtol=ev.nll_rtol,
            atol=ev.nll_rtol,
            max_steps=NLL_MAX_STEPS,
        )
    except RuntimeError as err:
        if "did not reach" not in str(err):
            raise
        metrics.update(nll=float("nan"), nll_status=f"did not converge: {err}")
        return metrics
    logp = res.log_prob.detach()
    metrics["nll"] = float(-logp.mean() / dim)
    metrics["nll_se"] = float(logp.std() / math.sqrt(logp.numel()) / dim)
    metrics["nll_nfe"] = int(res.nfe)
    metrics["n_nll"] = int(logp.numel())
    points["nll"] = (-logp / dim).numpy().astype(np.float64)
    if data.density is not None:
        log_q = data.density.log_prob(x_nll)
        diff = log_q - logp
        metrics["kl"] = float(diff.mean())
        metrics["kl_se"] = float(diff.std() / math.sqrt(diff.numel()))
        metrics["nll_true"] = float(-log_q.mean() / dim)
        points["kl"] = diff.numpy().astype(np.float64)
    return metrics


def sample_metrics(parts: RunParts, den: Any) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Samples of every sampler the run draws with (:meth:`EvalConfig.sampler_names`) and their metrics:
    the first unprefixed with floors, the others prefixed by the sampler name. Returns (metrics, samples)."""
    ev = parts.config.eval
    metrics: dict[str, float] = {}
    samples: dict[str, np.ndarray] = {}
    for i, name in enumerate(ev.sampler_names(parts.config.objective.target)):
        x, nfe = draw_samples(parts, den, name, ev.n_samples, ev.seed + 1)
        samples[name] = x
        prefix = "" if i == 0 else f"{name}_"
        for key, value in sample_quality(parts, x, with_floor=(i == 0)).items():
            metrics[prefix + key] = float(value)
        metrics[prefix + "nfe"] = int(nfe)
        if i == 0:
            metrics["sampler"] = name  # type: ignore[assignment]
    metrics["n_samples"] = int(ev.n_samples)
    return metrics, samples


def evaluate_run(parts: RunParts, denoiser: Any) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """All metrics of one run. Returns (metrics, arrays): samples by sampler name, then the per-point arrays
    ``pointwise_<metric>`` (module docstring); the recorded metrics are the same with or without them."""
    den = NoGradDenoiser(denoiser)
    pointwise: dict[str, np.ndarray] = {}
    metrics = likelihood_metrics(parts, den, pointwise)
    sampled, samples = sample_metrics(parts, den)
    arrays = {**samples, **{f"{POINTWISE_PREFIX}{k}": v for k, v in pointwise.items()}}
    return {**metrics, **sampled}, arrays
