"""What a finished 2D study hands back: the report with its figures, the plots, and the terminal table."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from difflab.experiments import plots
from difflab.experiments.report import format_table, write_report
from difflab.experiments.study import Study, StudyResult

# Columns of the report (in order) and of the terminal table, with their directions.
REPORT_METRICS = [
    "kl",
    "kl_se",
    "nll",
    "nll_true",
    "nelbo",
    "nelbo_se",
    "kde_kl",
    "kde_kl_floor",
    "mmd2",
    "mmd2_floor",
    "sw2",
    "sw2_floor",
    "w2",
    "mean_dist",
    "cov_dist",
    "mode_tv",
    "mode_tv_floor",
    "ancestral_kde_kl",
    "ancestral_mmd2",
    "nfe",
    "ancestral_nfe",
    "final_loss",
    # score-SDE study (issue 4): bounds, seed 003's fixed-h KDE measure, extra samplers, diagnostics
    "kl_elbo",
    "nll_iwae",
    "kde_kl_h",
    "kde_kl_h_floor",
    "w2_floor",
    "score_err_eps",
    "pc_kde_kl",
    "pc_mmd2",
    "pc_mode_tv",
    "ode_heun_kde_kl",
    "ode_heun_mmd2",
    "ode_heun_mode_tv",
    "cat_purity",
    "cat_nmi",
]
TERMINAL_METRICS = ["kl", "kl_elbo", "nll", "nelbo", "kde_kl", "kde_kl_h", "mmd2", "sw2", "mode_tv"]
METRIC_SPECS = {m: "min" for m in REPORT_METRICS} | {"cat_purity": "max", "cat_nmi": "max"}

NOTES = [
    "Units: kl = KL(q || p_theta) in nats per 2D point, exact: E_q[log q - log p_theta] on held-out data "
    "with log p_theta from the probability-flow ODE (exact divergence, adaptive Dormand-Prince); nll, "
    "nll_true and nelbo in nats per dimension (nll_true is the exact NLL of the data law, the floor of nll).",
    "kde_kl: seed 003's KDE measure made a mean (not a sum): KL(q || KDE of the model samples) on fresh "
    "true points, Scott's bandwidth; kde_kl_floor is the same measure with fresh true samples in place of "
    "the model's (same n). mmd2 (Gaussian kernel, median-heuristic length of the reference), sw2 (sliced "
    "W2) and w2 (exact W2 on <= 1000 points) are against held-out samples; *_floor columns give the same "
    "metric for fresh true samples. mean_dist and cov_dist are seed 000's distances.",
    "Samples come from each target's natural sampler (x0, eps: ancestral; v: DDIM eta=0; score: reverse-SDE "
    "Euler-Maruyama), and ancestral_* columns from the ancestral sampler for every arm; nfe is stated.",
    "The oracle row runs the exact Bayes denoiser of the known law through the same samplers and "
    "estimators: its kl shows what the estimators report for a perfect model.",
]
SCORE_SDE_NOTES = [
    "kl_elbo = E_q[log q] + NELBO, in nats per 2D point: an upper bound on the KL of the model whose ELBO "
    "it is (the reverse-SDE / ancestral model for diffusion rows; the learned-variance DDPM through its "
    "discrete VLB over all T steps; the VAEs through their ELBO). The kl column measures the PF-ODE density, "
    "a different model when the score is imperfect, so kl may exceed kl_elbo. nll_iwae is the IWAE bound of "
    "the Gaussian / hierarchical VAEs, whose kl has no closed form; the categorical VAE is a Gaussian "
    "mixture, so its kl and nll are exact.",
    "kde_kl_h: seed 003's KDE measure with its fixed bandwidth h = 0.1 in raw data units (divided by the "
    "z-scoring scale, see kde_h in results.csv), normalised (a mean over fresh true points, not a sum), "
    "with kde_kl_h_floor the same measure on fresh true samples; kde_kl uses Scott's rule of thumb.",
    "The truth row is the floor as its own row: its samples are fresh true samples and its log-density is "
    "exact (kl = 0). pc_* and ode_heun_* columns: predictor-corrector (Langevin, snr from "
    "eval.sampler_options) and PF-ODE (Heun) samples on the same grid. score_err_eps = mean over a "
    "log-SNR grid of sigma_t^2 E_{p_t}|s_theta - grad log p_t|^2 (exact mixture score); "
    "see figures/score_error.png.",
]


def _run_dirs(out: str) -> dict[str, str]:
    root = Path(out) / "runs"
    return {p.name: str(p) for p in sorted(root.iterdir()) if p.is_dir()} if root.exists() else {}


def _load_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def make_plots(rows: list[dict[str, Any]], out: str) -> list[str]:
    """Samples beside the ground truth per data set, loss by time per target, loss by step, metric bars."""
    from difflab.data.toy2d import make_toy2d

    figures: list[str] = []
    fig_dir = Path(out) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    dirs = _run_dirs(out)
    by_data: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        cfg = _load_json(os.path.join(dirs.get(row["run_id"], ""), "config.json"))
        if cfg is not None:
            by_data[cfg["data"]["name"]].append({"row": row, "cfg": cfg, "dir": dirs[row["run_id"]]})
    for data_name, runs in by_data.items():
        cfg0 = runs[0]["cfg"]["data"]
        ref = make_toy2d(data_name, 1000, cfg0["n_test"], cfg0["seed"]).test.numpy()
        samples, titles = {}, {}
        loss_time: dict[str, tuple[list[float], list[float]]] = {}
        loss_step: dict[str, tuple[list[float], list[float]]] = {}
        for run in runs:
            rid = run["row"]["run_id"]
            path = os.path.join(run["dir"], "samples.npz")
            if os.path.exists(path):
                with np.load(path) as z:
                    first = z.files[0]
                    samples[rid] = z[first]
                kl = run["row"].get("kl")
                titles[rid] = rid.replace(f"{data_name}__", "") + (
                    f"\nKL {kl:.3g}" if isinstance(kl, float) else ""
                )
            hist = _load_json(os.path.join(run["dir"], "history.json"))
            if hist:
                label = rid.replace(f"{data_name}__", "")
                loss_time[label] = (hist["time_bins"], hist["loss_by_time"])
                loss_step[label] = (hist["steps"], hist["loss"])
        if samples:
            figures.append(
                str(plots.plot_samples_grid(samples, ref, fig_dir / f"samples_{data_name}.png", titles))
            )
        if loss_time:
            figures.append(
                str(
                    plots.plot_loss_by_time(
                        loss_time,
                        fig_dir / f"loss_by_time_{data_name}.png",
                        groupby=lambda s: s.split("__")[0],
                    )
                )
            )
            figures.append(
                str(plots.plot_loss_by_epoch(loss_step, fig_dir / f"loss_by_step_{data_name}.png"))
            )
    finished = [r for r in rows if r.get("status") == "finished"]
    for metric in ("kl", "mmd2"):
        if any(isinstance(r.get(metric), float) for r in finished):
            group_key = "objective.target" if "objective.target" in finished[0] else "run_id"
            hue = "objective.weighting" if "objective.weighting" in finished[0] else None
            figures.append(
                str(
                    plots.plot_metric_comparison(
                        [r for r in finished if isinstance(r.get(metric), float)],
                        metric,
                        group_key,
                        fig_dir / f"metric_{metric}.png",
                        hue_key=hue,
                    )
                )
            )
    return figures


def finish_study(study: Study, result: StudyResult, out: str) -> str:
    """Plots, the report with figures and notes; returns the terminal table."""
    rows = list(result.rows)
    axes_keys = list(result.axes_keys or study.axes_keys)
    figures = make_plots(rows, out)
    score_sde = any(k in r for r in rows for k in ("kde_kl_h", "mode_frac_0", "score_err_eps", "cat_purity"))
    extra_sections: list[str] = []
    if score_sde:
        from difflab.experiments.score_diagnostics import score_sde_figures, score_sde_report_sections

        figures += score_sde_figures(rows, _run_dirs(out), Path(out) / "figures")
        extra_sections = score_sde_report_sections(rows, _run_dirs(out))
    rel = [os.path.relpath(f, out) for f in figures]
    present = [m for m in REPORT_METRICS if any(m in r for r in rows)]
    path = write_report(
        rows,
        axes_keys,
        out,
        METRIC_SPECS,
        title=study.name,
        description=study.description,
        settings=study.fixed,
        notes=NOTES + (SCORE_SDE_NOTES if score_sde else []),
        metrics=present,
        figures=rel,
    )
    if extra_sections:
        path.write_text(path.read_text() + "\n" + "\n".join(extra_sections))
    terminal = [m for m in TERMINAL_METRICS if any(m in r for r in rows)]
    table = format_table(rows, axes_keys, METRIC_SPECS, metrics=terminal, style="plain")
    return (
        f"{table}\n\nresults: {os.path.join(out, 'results.csv')}\nreport:  {os.path.join(out, 'report.md')}"
    )
