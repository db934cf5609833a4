"""Non-diffusion rows of a 2D study (seed 003's baselines) and the "truth" floor row, in the run pipeline.

``model.name`` (dispatched here by :func:`difflab.experiments.toy2d.run.run_experiment`):

* ``truth``: the floor. Its "samples" are fresh samples of the true law and its log-density is exact, so
  kl = 0 and nll = nll_true; its sample metrics are what a perfect sampler scores with the same estimators,
  sample sizes and seeds (the ``*_floor`` columns of every row are the same idea computed inside each run).
* ``categorical_vae``: :class:`~difflab.baselines.CategoricalVAE`, a K-way categorical latent (default
  K = 8), Gumbel-softmax relaxation with the temperature annealed exponentially from ``tau_start`` to
  ``tau_end`` (Jang et al. 2017), table decoder N(mu_c, diag sigma_c^2). The model is a Gaussian mixture:
  nll and kl are exact, nelbo is the exact-enumeration ELBO. Also writes the mode x category contingency
  table (``contingency.json``) of fresh labelled samples against argmax_c q(c|x): seed 003's question
  "does one mode map to one category?".
* ``gaussian_vae``: :class:`~difflab.baselines.GaussianVAE` (Kingma & Welling 2014): nelbo = -ELBO (Monte
  Carlo, ``n_elbo_samples`` draws), nll_iwae = -IWAE bound with ``n_importance`` samples (Burda et al.
  2016), an upper bound on the NLL; kl_elbo = E_q[log q] - ELBO >= KL.
* ``hierarchical_vae``: :class:`~difflab.baselines.HierarchicalVAE`, two stochastic layers; as gaussian_vae.
* ``lv_ddpm``: :class:`~difflab.baselines.learned_variance.LearnedVarianceDDPM` (Nichol & Dhariwal 2021)
  on the run's ``ddpm`` chain, hybrid loss; nelbo = its discrete VLB summed over all T steps,
  kl_elbo = E_q[log q] + VLB >= KL; sampled ancestrally with its learned variance.

Every row reports nelbo / nll in nats per dimension and the same sample metrics as the diffusion rows
(:func:`difflab.experiments.toy2d.evaluate.sample_quality`: same reference set, evaluation points and seeds).
Model options go in ``model.options``; training uses ``train.steps``, ``train.batch_size``, ``train.lr`` and
``train.seed``; evaluation sizes come from ``eval`` (n_samples, n_nelbo, n_nll, seed).

References: Jang, Gu & Poole 2017 (Gumbel-softmax); Kingma & Welling 2014 (VAE); Burda, Grosse &
Salakhutdinov 2016 (IWAE); Sønderby et al. 2016 (ladder VAE); Nichol & Dhariwal 2021 (learned variances).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from difflab.experiments.common.rundir import write_json
from difflab.experiments.toy2d.config import ConfigError, RunConfig, config_to_dict
from difflab.experiments.toy2d.evaluate import sample_quality

#: What keeps the Gaussian-decoder VAEs from collapsing to the unit Gaussian (issue 9, item 6): the KL
#: weight rises linearly 0 -> 1 over the first ``kl_warmup`` fraction of the steps, ``free_bits`` nats per
#: latent dimension are not penalised, and the decoder variance starts at ``decoder_var_init`` (a unit
#: decoder variance on z-scored data explains everything as noise at KL = 0, the collapsed optimum) with
#: the floor ``decoder_var_min``. kl_warmup = free_bits = 0, decoder_var_init = 1 is the plain VAE.
#: Measured on score-sde-gmm's setting (mixture8, 2000 steps, batch 512, lr 3e-3, 128 x 3 MLPs, latent 2,
#: IWAE with 1000 samples on 400 test points; true NLL 0.48): plain VAE IWAE NLL 1.431 (KL 0, collapsed
#: onto the unit Gaussian, 1/2 log 2 pi e = 1.419); warm-up over 500 steps with decoder variance e^-4: 0.701
#: (NELBO 0.929, KL 3.3 nats); the same with free bits 0.25 and warm-up 1000: 0.715.
VAE_FIT: dict[str, float] = {
    "kl_warmup": 0.25,
    "free_bits": 0.0,
    "decoder_var_init": 0.0183,  # e^-4
    "decoder_var_min": 1e-4,
}

#: model name -> (allowed model.options with defaults)
BASELINE_MODELS: dict[str, dict[str, Any]] = {
    "truth": {},
    "categorical_vae": {
        "num_categories": 8,
        "tau_start": 1.0,
        "tau_end": 0.1,
        "init_from_data": True,
        "learn_prior": False,
    },
    "gaussian_vae": {"latent_dim": 2, "n_importance": 1000, "n_elbo_samples": 16, **VAE_FIT},
    "hierarchical_vae": {
        "latent_dims": [4, 4],
        "inference": "bottom_up",
        "n_importance": 1000,
        "n_elbo_samples": 16,
        **VAE_FIT,
    },
    "lv_ddpm": {"vlb_weight": 0.001},
}


def check_baseline_config(config: RunConfig, process: Any) -> None:
    """Raise ConfigError for unknown model.options of a baseline or a process it cannot use."""
    from difflab.processes.discrete import DiscreteChain

    name = config.model.name
    valid = BASELINE_MODELS[name]
    unknown = sorted(set(config.model.options) - set(valid))
    if unknown:
        raise ConfigError(
            f"model.options: unknown option {unknown[0]!r} for model {name!r}; "
            f"valid: {', '.join(valid) or '(none)'}"
        )
    if name == "lv_ddpm" and not isinstance(process, DiscreteChain):
        raise ConfigError(f"model 'lv_ddpm' needs process.name = 'ddpm' (a discrete chain), got {process!r}")
    from difflab.data.toy2d import TOY2D

    if name == "truth" and not TOY2D[config.data.name].has_density:
        raise ConfigError(
            f"model 'truth' needs a data set with a known density; {config.data.name!r} has none"
        )


@dataclass
class _Parts:
    """What :func:`~difflab.experiments.toy2d.evaluate.sample_quality` needs: the config and the data."""

    config: RunConfig
    data: Any


def _options(config: RunConfig) -> dict[str, Any]:
    return {**BASELINE_MODELS[config.model.name], **config.model.options}


def build_baseline(config: RunConfig, dim: int = 2) -> torch.nn.Module | None:
    """The untrained baseline model of ``config`` (None for ``truth``); parameters seeded by train.seed."""
    from difflab.baselines import CategoricalVAE, GaussianVAE, HierarchicalVAE
    from difflab.baselines.learned_variance import LearnedVarianceDDPM
    from difflab.processes import build_process

    m, opt = config.model, _options(config)
    torch.manual_seed(config.train.seed)
    if m.name == "truth":
        return None
    if m.name == "categorical_vae":
        return CategoricalVAE(
            dim,
            int(opt["num_categories"]),
            m.hidden,
            m.layers,
            float(opt["tau_start"]),
            learn_prior=bool(opt["learn_prior"]),
        )
    decoder_var = {k: float(opt[k]) for k in ("decoder_var_init", "decoder_var_min") if k in opt}
    if m.name == "gaussian_vae":
        return GaussianVAE(dim, int(opt["latent_dim"]), m.hidden, m.layers, **decoder_var)
    if m.name == "hierarchical_vae":
        dims = tuple(int(d) for d in opt["latent_dims"])
        return HierarchicalVAE(dim, dims, m.hidden, m.layers, inference=opt["inference"], **decoder_var)
    if m.name == "lv_ddpm":
        chain = build_process(config.process.name, **config.process.options)
        return LearnedVarianceDDPM(
            chain, dim, m.hidden, m.layers, m.embed_dim, m.activation, vlb_weight=float(opt["vlb_weight"])
        )
    raise ConfigError(f"unknown baseline {m.name!r}; valid: {', '.join(BASELINE_MODELS)}")


def train_lv_ddpm(model: Any, x_train: torch.Tensor, config: RunConfig) -> dict[str, Any]:
    """Adam with cosine decay on the mean hybrid loss (N&D eq. 16), minibatches with replacement, gradient
    clipping at ``train.grad_clip``; returns the loss by step and L_simple by t = i/T bin."""
    tr = config.train
    g = torch.Generator().manual_seed(tr.seed)
    opt = torch.optim.Adam(model.parameters(), lr=tr.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, tr.steps), eta_min=tr.lr * 0.01)
    bins = tr.time_bins
    sums, counts = np.zeros(bins), np.zeros(bins)
    hist: dict[str, Any] = {"steps": [], "loss": [], "status": "finished"}
    n = x_train.shape[0]
    for step in range(1, tr.steps + 1):
        xb = x_train[torch.randint(n, (tr.batch_size,), generator=g)]
        out = model.hybrid_loss(xb, g)
        loss = out.loss.mean()
        if not torch.isfinite(loss):
            hist.update(status="diverged", diverged_at=step)
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
        opt.step()
        sched.step()
        b = np.minimum((out.i.numpy() - 1) * bins // model.T, bins - 1)
        np.add.at(sums, b, out.l_simple.detach().numpy())
        np.add.at(counts, b, 1)
        if step % tr.log_every == 0 or step == tr.steps:
            hist["steps"].append(step)
            hist["loss"].append(float(loss.detach()))
    hist["time_bins"] = ((np.arange(bins) + 0.5) / bins).tolist()
    hist["loss_by_time"] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).tolist()
    return hist


def _contingency(model: Any, data: Any, n: int, seed: int, run_dir: str) -> dict[str, float]:
    """Mode x category table of n fresh labelled samples (modes: the true component) against
    argmax_c q(c|x) (the encoder) and argmax_c p(c|x) (the model posterior); writes contingency.json."""
    from difflab.baselines import contingency_table, mode_category_purity

    # the modes of cluster / mixture8 are the components of their law
    x, modes = data.law.sample(n, generator=torch.Generator().manual_seed(seed), return_labels=True)
    K, C = data.law.num_components, model.num_categories
    with torch.no_grad():
        enc = contingency_table(modes, model.assign(x.to(torch.float64)), K, C)
        post = contingency_table(modes, model.assign(x.to(torch.float64), use_posterior=True), K, C)
    summary = mode_category_purity(enc)
    write_json(
        os.path.join(run_dir, "contingency.json"),
        {
            "rows": "true mode",
            "columns": "argmax_c q(c|x)",
            "n": n,
            "table": enc.tolist(),
            "posterior_table": post.tolist(),
            "summary": summary,
            "summary_posterior": mode_category_purity(post),
        },
    )
    return {
        "cat_purity": summary["purity"],
        "cat_nmi": summary["nmi"],
        "cat_distinct": float(summary["num_distinct_majorities"]),
        "cat_one_to_one": float(summary["one_to_one"]),
    }


def _train(model: Any, config: RunConfig, x_train: torch.Tensor, run_dir: str) -> dict[str, Any]:
    """Train the baseline (nothing for ``truth``); writes its history. Returns status / final_loss."""
    from difflab.baselines import train_vae

    name, tr, opt = config.model.name, config.train, _options(config)
    out: dict[str, Any] = {"status": "finished"}
    if name == "lv_ddpm":
        hist = train_lv_ddpm(model, x_train, config)
        write_json(os.path.join(run_dir, "history.json"), hist)
        if hist["status"] == "diverged":
            out.update(status="diverged", diverged_at=hist["diverged_at"])
        out["final_loss"] = hist["loss"][-1] if hist["loss"] else float("nan")
    elif model is not None:
        g = torch.Generator().manual_seed(tr.seed)
        if name == "categorical_vae" and opt["init_from_data"]:
            model.init_means_from_data(x_train, g)
        tau = (float(opt["tau_start"]), float(opt["tau_end"])) if name == "categorical_vae" else None
        vh = train_vae(
            model,
            x_train,
            steps=tr.steps,
            batch_size=tr.batch_size,
            lr=tr.lr,
            generator=g,
            tau_schedule=tau,
            grad_clip=tr.grad_clip,
            kl_warmup=round(float(opt.get("kl_warmup", 0.0)) * tr.steps),
            free_bits=float(opt.get("free_bits", 0.0)),
        )
        write_json(os.path.join(run_dir, "vae_history.json"), vh)
        out["final_loss"] = vh["loss"][-1] if vh["loss"] else float("nan")
        if not all(math.isfinite(v) for v in vh["loss"][-10:]):
            out["status"] = "diverged"
    return out


def _log_densities(
    model: Any, config: RunConfig, data: Any
) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """(ELBO per point on n_nelbo test points, log p or its IWAE bound on n_nll points or None, exact?)."""
    name, ev, opt = config.model.name, config.eval, _options(config)
    x_test = data.test.to(torch.float64)
    ge = torch.Generator().manual_seed(ev.seed)
    x_b, x_l = x_test[: ev.n_nelbo], x_test[: ev.n_nll]
    with torch.no_grad():
        if name == "truth":
            return data.density.log_prob(x_b), data.density.log_prob(x_l), True
        if name == "categorical_vae":
            return model.elbo_exact(x_b), model.log_likelihood(x_l), True
        if name in ("gaussian_vae", "hierarchical_vae"):
            elbo = model.elbo(x_b, ge, n_samples=int(opt["n_elbo_samples"]))
            return elbo, model.log_likelihood_is(x_l, ge, n_importance=int(opt["n_importance"])), False
        return -model.nelbo(x_b, ge), None, False  # lv_ddpm: its VLB is the only likelihood figure


def _likelihood(model: Any, config: RunConfig, data: Any) -> dict[str, Any]:
    """nelbo, nll (exact) or nll_iwae (a bound), kl or kl_iwae_bound, kl_elbo; nats per dim / per point."""
    ev, law = config.eval, data.density
    dim = data.train.shape[1]
    x_test = data.test.to(torch.float64)
    x_b, x_l = x_test[: ev.n_nelbo], x_test[: ev.n_nll]
    elbo, logp, exact = _log_densities(model, config, data)
    result: dict[str, Any] = {}
    result["nelbo"] = float(-elbo.mean() / dim)
    result["nelbo_se"] = float(elbo.std() / math.sqrt(elbo.numel()) / dim)
    result["n_nelbo"] = int(elbo.numel())
    if law is not None:
        result["kl_elbo"] = float(law.log_prob(x_b).mean() - elbo.mean())
        result["nll_true"] = float(-law.log_prob(x_l).mean() / dim)
    if logp is None:
        return result
    key = "nll" if exact else "nll_iwae"
    result[key] = float(-logp.mean() / dim)
    result[key + "_se"] = float(logp.std() / math.sqrt(logp.numel()) / dim)
    result["n_nll"] = int(logp.numel())
    if law is not None:
        diff = law.log_prob(x_l) - logp
        if exact:
            result["kl"], result["kl_se"] = float(diff.mean()), float(diff.std() / math.sqrt(diff.numel()))
        else:  # the IWAE bound is below log p, so this is an upper bound on the KL
            result["kl_iwae_bound"] = float(diff.mean())
    return result


def _samples(model: Any, config: RunConfig, data: Any) -> tuple[torch.Tensor, str]:
    """eval.n_samples samples (fresh true ones for ``truth``) and the sampler's name."""
    ev, name = config.eval, config.model.name
    gs = torch.Generator().manual_seed(ev.seed + 1)
    if name == "truth":
        return data.sample_fresh(ev.n_samples, gs).detach().to(torch.float64), "fresh true samples"
    x = model.sample(ev.n_samples, gs)
    x = x[0] if isinstance(x, tuple) else x
    sampler = "ancestral (learned variance)" if name == "lv_ddpm" else "ancestral"
    return x.detach().to(torch.float64), sampler


def run_baseline(config: RunConfig, run_dir: str) -> dict[str, Any]:
    """Train and evaluate one baseline or the truth row; writes metrics.json and samples.npz (as a diffusion
    run does) plus the model's extras. Returns the metrics with a status."""
    from difflab.data.toy2d import make_toy2d

    start = time.perf_counter()
    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, "config.json"), config_to_dict(config))
    d, ev, name = config.data, config.eval, config.model.name
    data = make_toy2d(d.name, d.n_train, d.n_test, d.seed)
    result: dict[str, Any] = {"status": "finished", "steps": 0, "model": name}
    model = build_baseline(config, data.train.shape[1])
    t0 = time.perf_counter()
    result.update(_train(model, config, data.train.to(torch.float32), run_dir))
    result["train_seconds"] = round(time.perf_counter() - t0, 3)
    result["steps"] = config.train.steps if model is not None else 0
    if result["status"] == "diverged":
        result["seconds"] = round(time.perf_counter() - start, 3)
        write_json(os.path.join(run_dir, "metrics.json"), result)
        return result
    if model is not None:
        model = model.double().eval()
    result.update(_likelihood(model, config, data))
    x, sampler = _samples(model, config, data)
    result.update(sample_quality(_Parts(config, data), x))
    result["sampler"] = sampler
    result["nfe"] = int(model.T) if name == "lv_ddpm" else 1
    result["n_samples"] = int(ev.n_samples)
    if name == "categorical_vae" and data.modes is not None:
        result.update(_contingency(model, data, ev.n_samples, ev.seed + 6, run_dir))
    np.savez_compressed(os.path.join(run_dir, "samples.npz"), model=x.numpy())
    result["seconds"] = round(time.perf_counter() - start, 3)
    write_json(os.path.join(run_dir, "metrics.json"), result)
    return result


__all__ = ["BASELINE_MODELS", "build_baseline", "check_baseline_config", "run_baseline", "train_lv_ddpm"]
