"""Score-SDE diagnostics: forward-SDE simulation and the score error against t from the exact mixture score.

Forward SDE (Song et al. 2021, "Score-based generative modeling through SDEs", eq. 5) of a process with
x_t = alpha_t x0 + sigma_t eps:

    dx = f(t) x dt + g(t) dw,     f = d log alpha_t / dt,     g(t)^2 = -sigma_t^2 d lambda_t / dt,

whose marginals are exactly N(alpha_t x0, sigma_t^2 I) given x0 (:mod:`difflab.processes.base`).
:func:`simulate_forward_sde` integrates it by Euler-Maruyama (Kloeden & Platen 1992, sec. 9.1), so the tests
can compare simulated moments with the closed form.

Score error (seed 003 could only plot the learned score field; with an exact law we can measure it):

    e(t) = E_{x_t ~ p_t} |s_theta(x_t, t) - grad log p_t(x_t)|^2,
    s_theta = (alpha_t x0_hat - x_t) / sigma_t^2

(the model score by Tweedie's formula from the denoiser; the exact score of the Gaussian mixture p_t is
:meth:`difflab.data.gaussian.GaussianMixture.score`). Points x_t are drawn from p_t itself (x0 ~ q, then the
forward marginal), so e(t) weights errors by where the reverse process actually goes at time t. e(t) grows
like 1/sigma_t^2 as t -> 0 for any fixed eps-space error, so we also report sigma_t^2 e(t) (the eps-space
error, dimensionless, comparable across processes) and its mean over a grid uniform in log-SNR,
``score_err_eps`` ~ (1 / (lambda_max - lambda_min)) int sigma^2 e dlambda.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from difflab.experiments.common import figures as plots
from difflab.experiments.study.plan import format_axis_value, is_seed_key
from difflab.experiments.toy2d.evaluate import NoGradDenoiser
from difflab.processes.base import DTYPE, Process


def simulate_forward_sde(
    process: Process,
    x0: Tensor,
    t_end: float,
    steps: int,
    generator: torch.Generator | None = None,
    t_start: float = 0.0,
) -> Tensor:
    """Euler-Maruyama for dx = f(t) x dt + g(t) dw from t_start to t_end in ``steps`` equal steps h:

        x_{k+1} = x_k + f(t_k^*) x_k h + g(t_k^*) sqrt(h) z_k,    t_k^* = t_start + (k + 1/2) h,

    with coefficients at the step midpoints (g(0) is 0/0 for VP processes in closed form). The weak error of
    the moments is O(h). Returns x at t_end (float64)."""
    if steps < 1 or not t_end > t_start:
        raise ValueError("need steps >= 1 and t_end > t_start")
    h = (t_end - t_start) / steps
    t_mid = t_start + (torch.arange(steps, dtype=DTYPE) + 0.5) * h
    c = process.coefficients(t_mid)
    f, g = c.drift.tolist(), c.g2.sqrt().tolist()
    x = x0.to(DTYPE).clone()
    for k in range(steps):
        z = torch.randn(x.shape, dtype=DTYPE, generator=generator)
        x = x + f[k] * x * h + g[k] * math.sqrt(h) * z
    return x


def model_score(denoiser: Any, process: Process, x_t: Tensor, t: float) -> Tensor:
    """s_theta(x_t, t) = (alpha_t x0_hat(x_t, t) - x_t) / sigma_t^2 (Tweedie), float64."""
    c = process.coefficients(torch.tensor(t, dtype=DTYPE))
    tt = torch.full((x_t.shape[0],), float(t), dtype=DTYPE)
    with torch.no_grad():
        x0_hat = denoiser(x_t, tt).to(DTYPE)
    return (float(c.alpha) * x0_hat - x_t) / float(c.sigma) ** 2


def score_error_curve(
    denoiser: Any,
    process: Process,
    law: Any,
    *,
    n: int = 2000,
    bins: int = 40,
    seed: int = 0,
) -> dict[str, list[float]]:
    """e(t) = E_{p_t} |s_theta - grad log p_t|^2 on ``bins`` times uniform in log-SNR over [t_min, t_max].

    ``n`` points x_t ~ p_t per time (common random numbers: the same x0 and eps at every t). Returns lists
    ``t``, ``logsnr``, ``sigma2``, ``err`` (e(t)), ``err_se`` (its Monte-Carlo standard error), ``err_eps``
    (sigma_t^2 e(t)) and ``ref`` (E|grad log p_t|^2, the error of the zero score, for scale)."""
    from difflab.samplers import time_grid

    g = torch.Generator().manual_seed(seed)
    x0 = law.sample(n, generator=g)
    eps = torch.randn(x0.shape, dtype=DTYPE, generator=g)
    times = time_grid(process, bins - 1, "uniform_logsnr").flip(0).tolist()
    out: dict[str, list[float]] = {
        k: [] for k in ("t", "logsnr", "sigma2", "err", "err_se", "err_eps", "ref")
    }
    for t in times:
        c = process.coefficients(torch.tensor(t, dtype=DTYPE))
        x_t = float(c.alpha) * x0 + float(c.sigma) * eps
        exact = law.score(x_t, torch.full((n,), t, dtype=DTYPE), process)
        sq = (model_score(denoiser, process, x_t, t) - exact).square().sum(1)
        s2 = float(c.sigma) ** 2
        out["t"].append(t)
        out["logsnr"].append(float(c.logsnr))
        out["sigma2"].append(s2)
        out["err"].append(float(sq.mean()))
        out["err_se"].append(float(sq.std() / math.sqrt(n)))
        out["err_eps"].append(s2 * float(sq.mean()))
        out["ref"].append(float(exact.square().sum(1).mean()))
    return out


def write_score_error(parts: Any, denoiser: Any, run_dir: str) -> dict[str, float]:
    """Compute :func:`score_error_curve` for a run (``eval.score_error_n`` points, ``eval.score_error_bins``
    times), write ``score_error.json`` into ``run_dir`` and return the summary metric ``score_err_eps``."""
    ev = parts.config.eval
    curve = score_error_curve(
        NoGradDenoiser(denoiser),
        parts.process,
        parts.data.diffused,
        n=ev.score_error_n,
        bins=ev.score_error_bins,
        seed=ev.seed + 5,
    )
    with open(os.path.join(run_dir, "score_error.json"), "w") as f:
        json.dump(curve, f)
    return {"score_err_eps": float(np.mean(curve["err_eps"]))}


# --- study outputs (used by difflab.experiments.toy2d.report when these diagnostics are present) -----------
def _load(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def arm_of(row: Mapping[str, Any], axes_keys: Sequence[str]) -> str:
    """The arm of a results row: its label and its non-seed axis values as run-id tokens
    (``ou__uniform_score`` for ``ou__uniform_score__s0``). Seeds of one arm share it; different arms never
    do, whatever their values look like (an axis value ``score`` or ``sub_vp`` is not a seed)."""
    parts = [str(row["label"])] if row.get("label") else []
    parts += [
        format_axis_value(k, row[k]) for k in axes_keys if not is_seed_key(k) and row.get(k) is not None
    ]
    return "__".join(parts) or str(row["run_id"])


def score_sde_figures(
    rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], run_dirs: Mapping[str, str], fig_dir: Path
) -> list[str]:
    """Figures of the score-SDE study: the final sample density (2D histogram) of one run per arm (its
    first seed) beside the ground truth (fresh true samples, same binning), and the score error e(t) of
    every run with ``score_error.json``. Returns the written paths (empty when nothing applies)."""
    from difflab.data.toy2d import make_toy2d

    figures: list[str] = []
    samples: dict[str, np.ndarray] = {}
    titles: dict[str, str] = {}
    data_cfg = None
    for row in rows:
        rid = row["run_id"]
        rdir = run_dirs.get(rid)
        if rdir is None or row.get("status") != "finished" or "kde_kl_h" not in row:
            continue
        cfg = _load(os.path.join(rdir, "config.json"))
        data_cfg = data_cfg or (cfg or {}).get("data")
        grp = arm_of(row, axes_keys)
        path = os.path.join(rdir, "samples.npz")
        if grp in samples or not os.path.exists(path):
            continue
        with np.load(path) as z:
            samples[grp] = z[z.files[0]]
        kl = row.get("kl")
        titles[grp] = (
            grp + (f"\nKL {kl:.3g}" if isinstance(kl, float) else "") + f", KDE-KL(h) {row['kde_kl_h']:.3g}"
        )
    if samples and data_cfg is not None:
        ref = make_toy2d(data_cfg["name"], 0, 0, data_cfg["seed"]).sample_fresh(
            len(next(iter(samples.values()))), torch.Generator().manual_seed(0)
        )
        figures.append(
            str(
                plots.plot_samples_grid(
                    samples,
                    ref.numpy(),
                    fig_dir / f"density_{data_cfg['name']}.png",
                    titles,
                    mode="hist",
                    bins=100,
                    ncols=4,
                    reference_title="ground truth (fresh samples)",
                )
            )
        )
    curves, arms = {}, {}
    for row in rows:
        rdir = run_dirs.get(row["run_id"])
        cv = _load(os.path.join(rdir, "score_error.json")) if rdir else None
        if cv:
            curves[row["run_id"]] = cv
            arms[row["run_id"]] = arm_of(row, axes_keys)
    if curves:
        path = fig_dir / "score_error.png"
        figures.append(str(plots.plot_score_error(curves, path, "score error vs t (x_t ~ p_t)", arms)))
    return figures


def score_sde_report_sections(
    rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], run_dirs: Mapping[str, str]
) -> list[str]:
    """Markdown sections: per-mode sample fractions (mean over seeds) against the true weights, and the
    categorical VAE's mode x category contingency table with its summary (seed 003's question)."""
    lines: list[str] = []
    fr_rows = [r for r in rows if "mode_frac_0" in r and r.get("status") == "finished"]
    if fr_rows:
        K = 1 + max(int(k.rsplit("_", 1)[1]) for r in fr_rows for k in r if k.startswith("mode_frac_"))
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for r in fr_rows:
            groups.setdefault(arm_of(r, axes_keys), []).append(r)
        lines += [
            "## Mode coverage",
            "",
            "Fraction of the samples (first sampler) whose nearest mode is k, mean over seeds; the true "
            f"weights are 1/{K} = {1 / K:.4f} each. mode_tv = 1/2 sum_k |fraction_k - weight_k|.",
            "",
            "| arm | " + " | ".join(f"mode {k}" for k in range(K)) + " | mode_tv |",
            "|---|" + "---|" * (K + 1),
        ]
        for grp, rs in groups.items():
            fr = [float(np.mean([r[f"mode_frac_{k}"] for r in rs])) for k in range(K)]
            tv = float(np.mean([r.get("mode_tv", float("nan")) for r in rs]))
            lines.append(f"| {grp} | " + " | ".join(f"{v:.3f}" for v in fr) + f" | {tv:.3f} |")
        lines.append("")
    for r in rows:
        rdir = run_dirs.get(r["run_id"])
        ct = _load(os.path.join(rdir, "contingency.json")) if rdir else None
        if not ct:
            continue
        table = ct["table"]
        summ = ct["summary"]
        C = len(table[0])
        lines += [
            f"## Mode x category contingency table: `{r['run_id']}`",
            "",
            f"{ct['n']} fresh labelled samples of the true law; rows: true mode, columns: argmax_c q(c|x) "
            "(the encoder). Seed 003 asked whether all samples of one mode map to one category.",
            "",
            "| mode | " + " | ".join(f"c{c}" for c in range(C)) + " |",
            "|---|" + "---|" * C,
        ]
        lines += [f"| {m} | " + " | ".join(str(v) for v in row_) + " |" for m, row_ in enumerate(table)]
        verdict = "yes" if summ["one_to_one"] else "no"
        lines += [
            "",
            f"Purity {summ['purity']:.3f}, NMI {summ['nmi']:.3f}, {summ['num_distinct_majorities']} distinct "
            f"majority categories for {len(table)} modes: one mode -> one category: **{verdict}** "
            f"(model posterior argmax p(c|x): purity {ct['summary_posterior']['purity']:.3f}, "
            f"one-to-one {ct['summary_posterior']['one_to_one']}).",
            "",
        ]
    return lines


__all__ = [
    "arm_of",
    "model_score",
    "score_error_curve",
    "score_sde_figures",
    "score_sde_report_sections",
    "simulate_forward_sde",
    "write_score_error",
]
