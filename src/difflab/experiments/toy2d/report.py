"""What a finished 2D study hands back: the report spec (columns, directions, notes), the figures and the
score-SDE report sections. The report itself is written once, by
:func:`difflab.experiments.study.report.finish_study`."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from difflab.experiments.common import figures as plots
from difflab.experiments.common.rundir import read_json, run_dirs
from difflab.experiments.study.plan import is_seed_key
from difflab.experiments.study.report import ReportSpec, metric_names
from difflab.experiments.toy2d.config import ConfigError, config_to_dict, parse_config
from difflab.experiments.toy2d.evaluate import POINTWISE_PREFIX

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
    "converged",
    "verdict_change",
    "verdict_se",
    "budget_doublings",
    "curve_overhead_pct",
]
TERMINAL_METRICS = [
    "kl",
    "kl_elbo",
    "nll",
    "nelbo",
    "kde_kl",
    "kde_kl_floor",
    "kde_kl_h",
    "mmd2",
    "sw2",
    "mode_tv",
    "converged",  # fraction of the seeds whose verdict is "converged" (experiments.study.convergence)
    "verdict_change",  # the verdict metric's change over the last doubling of training (mean over seeds)
]
_MAXIMISED = {"cat_purity": "max", "cat_nmi": "max", "converged": "max"}
METRIC_SPECS = {m: "min" for m in REPORT_METRICS} | _MAXIMISED
# The headline per data set (issue 10): exact KL where the density is known, NLL, NELBO and one sample
# metric (beside its floor and the oracle's value); the verdict column is added by the report.
HEADLINE = ("kl", "nll", "nelbo", "kde_kl|mmd2")
SE_OF = {"kl": "kl_se", "nll": "nll_se", "nelbo": "nelbo_se"}
UNITS = {"kl": "nats", "nll": "nats/dim", "nelbo": "nats/dim", "kl_elbo": "nats"}
# Extra rows that are references (never best); other extras (score-SDE's "vp" arms, the VAEs) compete.
REFERENCES = ("oracle", "truth")
# Never "best": the data law's own NLL, solver/sampler costs, losses of different objectives, settings,
# and the run's bookkeeping (convergence, curve cost).
UNRANKED = (
    "nll_true", "final_loss", "train_seconds", "kde_h", "diverged_at",
    "converged", "verdict_change", "verdict_se", "budget_doublings", "curve_overhead_pct",
)  # fmt: skip

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


def report_spec(rows: Sequence[Mapping[str, Any]], out: str) -> ReportSpec:
    """The 2D report: listed columns first (others follow), the score-SDE notes when those runs are there,
    comparisons per data set (``data.name``) with the per-point values of every run that has them."""
    notes = NOTES + (SCORE_SDE_NOTES if is_score_sde(out) else [])
    counts = [m for m in metric_names(rows, ()) if m.endswith("nfe") or m.startswith("mode_frac_")]
    return ReportSpec(
        tuple(REPORT_METRICS),
        tuple(TERMINAL_METRICS),
        METRIC_SPECS,
        tuple(notes),
        compare_within=("data.name",),
        headline=HEADLINE,
        se_of=SE_OF,
        units=UNITS,
        unranked=UNRANKED + tuple(counts),
        pointwise=load_pointwise(rows, out),
        reference_labels=REFERENCES,
    )


def load_pointwise(rows: Sequence[Mapping[str, Any]], out: str) -> dict[str, dict[str, np.ndarray]]:
    """run_id -> metric -> per-point values, from the ``pointwise_<metric>`` arrays of each finished run's
    ``samples.npz`` (see :mod:`difflab.experiments.toy2d.evaluate`; runs without them are left out)."""
    dirs = run_dirs(out)
    found: dict[str, dict[str, np.ndarray]] = {}
    for row in rows:
        path = os.path.join(dirs.get(row["run_id"], ""), "samples.npz")
        if row.get("status") != "finished" or not os.path.exists(path):
            continue
        with np.load(path) as z:
            arrays = {k[len(POINTWISE_PREFIX) :]: z[k] for k in z.files if k.startswith(POINTWISE_PREFIX)}
        if arrays:
            found[row["run_id"]] = arrays
    return found


def is_score_sde(out: str) -> bool:
    """Whether any run asks for the score-SDE diagnostics (by its config flags, not by its metric keys)."""
    for rdir in run_dirs(out).values():
        cfg = read_json(os.path.join(rdir, "config.json")) or {}
        ev, model = cfg.get("eval") or {}, cfg.get("model") or {}
        if ev.get("score_error") or ev.get("mode_fractions") or ev.get("kde_h_raw") is not None:
            return True
        if model.get("name") == "categorical_vae":
            return True
    return False


def _runs_by_dataset(rows: Sequence[Mapping[str, Any]], out: str) -> dict[str, list[dict[str, Any]]]:
    dirs = run_dirs(out)
    by_data: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        cfg = read_json(os.path.join(dirs.get(row["run_id"], ""), "config.json"))
        try:  # a run refused before it ran still has the study's partial config: fill in the defaults
            cfg = config_to_dict(parse_config(cfg)) if isinstance(cfg, dict) else None
        except ConfigError:
            cfg = None
        if cfg is not None:
            by_data[cfg["data"]["name"]].append({"row": row, "cfg": cfg, "dir": dirs[row["run_id"]]})
    return by_data


def _dataset_figures(data_name: str, runs: list[dict[str, Any]], fig_dir: Path) -> list[str]:
    """Samples beside the ground truth, loss by time per target and loss by step, for one data set."""
    from difflab.data.toy2d import make_toy2d

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
                samples[rid] = z[z.files[0]]
            kl = run["row"].get("kl")
            titles[rid] = rid.replace(f"{data_name}__", "") + (
                f"\nKL {kl:.3g}" if isinstance(kl, float) else ""
            )
        hist = read_json(os.path.join(run["dir"], "history.json"))
        if hist:
            label = rid.replace(f"{data_name}__", "")
            loss_time[label] = (hist["time_bins"], hist["loss_by_time"])
            loss_step[label] = (hist["steps"], hist["loss"])
    figures = []
    if samples:
        figures.append(
            str(plots.plot_samples_grid(samples, ref, fig_dir / f"samples_{data_name}.png", titles))
        )
    if loss_time:
        path = fig_dir / f"loss_by_time_{data_name}.png"
        figures.append(str(plots.plot_loss_by_time(loss_time, path, groupby=lambda s: s.split("__")[0])))
        figures.append(str(plots.plot_loss_by_epoch(loss_step, fig_dir / f"loss_by_step_{data_name}.png")))
    return figures + _curve_figures(data_name, runs, fig_dir)


def _curve_figures(data_name: str, runs: list[dict[str, Any]], fig_dir: Path) -> list[str]:
    """Learning curves of one data set (curves.json): the verdict metric with the oracle rows' final value,
    and the curve's sample distance (sw2) with its true-sample floor."""
    by_metric: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(dict)
    levels: dict[str, dict[str, float]] = defaultdict(dict)
    arm_of: dict[str, str] = {}  # run label -> arm (the label without its seed): one colour per arm
    for run in runs:
        row = run["row"]
        curve = read_json(os.path.join(run["dir"], "curves.json"))
        if not curve:
            if run["cfg"]["model"]["name"] == "oracle" and isinstance(row.get("kl"), float):
                levels["kl"][f"oracle ({row['run_id']})"] = row["kl"]
            continue
        label = row["run_id"].replace(f"{data_name}__", "")
        seeds = {f"s{row[k]}" for k in row if is_seed_key(k) and row[k] is not None}
        arm_of[label] = "__".join(part for part in label.split("__") if part not in seeds) or label
        metric = curve.get("verdict_metric", "kl")
        for name in (metric, "sw2"):
            pts = [p for p in curve["points"] if name in p["metrics"]]
            by_metric[name][label] = {
                "step": [p["step"] for p in pts],
                "seconds": [p["train_seconds"] for p in pts],
                "value": [p["metrics"][name] for p in pts],
                "se": [p["metrics"].get(name + "_se", float("nan")) for p in pts],
            }
            if name == "sw2" and pts:
                levels["sw2"]["true-sample floor"] = pts[-1]["metrics"]["sw2_floor"]

    def _arm(label: str) -> str:
        return arm_of.get(label, label)

    figures = []
    for name, curves in by_metric.items():
        path = fig_dir / f"curve_{name}_{data_name}.png"
        title = f"{data_name}: {name} during training (EMA weights, fixed held-out points)"
        figures.append(
            str(plots.plot_learning_curves(curves, path, name, levels.get(name), title=title, groupby=_arm))
        )
    return figures


def _metric_bars(rows: Sequence[Mapping[str, Any]], fig_dir: Path) -> list[str]:
    finished = [r for r in rows if r.get("status") == "finished"]
    figures = []
    for metric in ("kl", "mmd2"):
        if any(isinstance(r.get(metric), float) for r in finished):
            group_key = "objective.target" if "objective.target" in finished[0] else "run_id"
            hue = "objective.weighting" if "objective.weighting" in finished[0] else None
            scored = [r for r in finished if isinstance(r.get(metric), float)]
            path = fig_dir / f"metric_{metric}.png"
            figures.append(str(plots.plot_metric_comparison(scored, metric, group_key, path, hue_key=hue)))
    return figures


def make_figures(rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], out: str) -> list[str]:
    """Samples beside the ground truth per data set, loss by time per target, loss by step, metric bars,
    and the score-SDE figures when those runs are there."""
    fig_dir = Path(out) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures: list[str] = []
    for data_name, runs in _runs_by_dataset(rows, out).items():
        figures += _dataset_figures(data_name, runs, fig_dir)
    figures += _metric_bars(rows, fig_dir)
    if is_score_sde(out):
        from difflab.experiments.toy2d.score import score_sde_figures

        figures += score_sde_figures(rows, axes_keys, run_dirs(out), fig_dir)
    return figures


def report_sections(rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], out: str) -> list[str]:
    """Markdown sections after the table: mode coverage and contingency tables of the score-SDE runs."""
    if not is_score_sde(out):
        return []
    from difflab.experiments.toy2d.score import score_sde_report_sections

    return score_sde_report_sections(rows, axes_keys, run_dirs(out))
