"""What a finished image study hands back: sample grids of every arm, loss-by-time and validation curves,
FID bars with the floor, and the report spec (columns, directions, notes); the report itself is written
once by :func:`difflab.experiments.study.report.finish_study`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from difflab.experiments.common import figures as plots
from difflab.experiments.common.rundir import read_json
from difflab.experiments.study.report import ReportSpec

REPORT_METRICS = [
    "fid",
    "fid_same_n",
    "fid_floor",
    "kid",
    "kid_same_n",
    "kid_floor",
    "is",
    "is_floor",
    "bpd",
    "bpd_se",
    "bpd_pf_ode",
    "bpd_pf_ode_se",
    "best_val_loss",
    "final_loss",
    "stopped_early_at",
    "nfe",
    "n_samples",
    "n_floor",
    "classifier_test_acc",
    "sample_seconds_per_image",
    "train_seconds",
]
TERMINAL_METRICS = [
    "fid",
    "fid_same_n",
    "fid_floor",
    "kid",
    "is",
    "is_floor",
    "bpd",
    "bpd_pf_ode",
    "best_val_loss",
]
METRIC_SPECS = {m: "min" for m in REPORT_METRICS} | {
    "is": "max",
    "is_floor": "max",
    "classifier_test_acc": "max",
}

NOTES = [
    "FID / KID / IS are computed on the penultimate features (and logits) of a small CNN classifier "
    "trained by difflab on the data set itself (seed 001's local FID; its test accuracy is the "
    "classifier_test_acc column) unless eval.features = 'inception'. They are NOT comparable with "
    "published Inception FIDs.",
    "Reference set: all training images. fid/kid/is: eval.n_samples model samples. *_floor: the held-out "
    "images against the same reference -- what a perfect model would score; fid_same_n/kid_same_n: the "
    "model's first n_floor samples, the same n as the floor (FID is biased upward at small n; compare like "
    "with like).",
    "bpd: discrete NELBO (Ho et al. 2020 eq. 5; step KLs 1/2 (SNR_{i-1}-SNR_i)|x0-x0_hat|^2) with the "
    "discretized Gaussian decoder over the data's grey levels (256; digits have 17), a discrete NLL bound "
    "(no dequantization). bpd_pf_ode: probability-flow ODE likelihood with Hutchinson's estimator on "
    "uniformly dequantized data plus log2(1/bin width), an upper bound in expectation. *_se: standard "
    "errors. Both start at sigma = eval.bpd_sigma_min half-bins of the grid (default 1.5). A PF-ODE "
    "figure above log2(levels) (worse than uniform on the grid) is an estimator failure and is left out "
    "(NaN; bpd_pf_ode_raw keeps it).",
    "Every arm sees the same data order, flips, t and eps draws (common random numbers) and the same "
    "sampler seeds; best_val_loss is the EMA model's held-out objective (comparable within an objective "
    "only).",
]


def plot_sample_grids(runs: dict[str, Path], rows: dict[str, dict], path: Path) -> Path | None:
    """One panel per run with its final ``samples.png`` and FID (floor) in the title."""
    titles = {}
    for rid in runs:
        row = rows.get(rid, {})
        fid, floor = row.get("fid"), row.get("fid_floor")
        both = isinstance(fid, float) and isinstance(floor, float)
        titles[rid] = rid + (f"\nFID {fid:.3g} (floor {floor:.3g})" if both else "")
    return plots.plot_image_panels({rid: d / "samples.png" for rid, d in runs.items()}, titles, path)


def make_image_plots(rows: Sequence[Mapping[str, Any]], out: str) -> list[str]:
    """Sample grids, loss by time, validation loss by step, FID bars with the mean floor as a line."""
    root = Path(out) / "runs"
    fig_dir = Path(out) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    runs = {r["run_id"]: root / r["run_id"] for r in rows if (root / r["run_id"]).is_dir()}
    by_id = {r["run_id"]: r for r in rows}
    figures: list[str] = []
    grid = plot_sample_grids(runs, by_id, fig_dir / "samples.png")
    if grid is not None:
        figures.append(str(grid))
    loss_time, val_curves = {}, {}
    for rid, d in runs.items():
        hist = read_json(d / "history.json")
        if not hist:
            continue
        loss_time[rid] = (hist["time_bins"], hist["loss_by_time"])
        evals = hist.get("evals") or []
        if evals:
            val_curves[rid] = ([e["step"] for e in evals], [e["val_loss"] for e in evals])
    if loss_time:
        figures.append(str(plots.plot_loss_by_time(loss_time, fig_dir / "loss_by_time.png")))
    if val_curves:
        figures.append(
            str(
                plots.plot_curve(
                    {k: v[0] for k, v in val_curves.items()},
                    {k: v[1] for k, v in val_curves.items()},
                    fig_dir / "val_loss.png",
                    "step",
                    "validation loss (EMA)",
                    logy=True,
                )
            )
        )
    finished = [r for r in rows if r.get("status") == "finished" and isinstance(r.get("fid"), float)]
    if finished:
        floors = [r["fid_floor"] for r in finished if isinstance(r.get("fid_floor"), float)]
        ref = {"floor (held-out vs train)": sum(floors) / len(floors)} if floors else None
        figures.append(
            str(
                plots.plot_metric_comparison(
                    finished,
                    "fid_same_n" if floors else "fid",
                    "run_id",
                    fig_dir / "fid.png",
                    reference_lines=ref,
                    logy=True,
                )
            )
        )
    return figures


# The headline (issue 10): FID and KID at the floor's n beside their floor, bits/dim, the verdict column
# (added by the report). Ties by paired intervals over seeds where a study has several; one seed: untested.
HEADLINE = ("fid_same_n|fid", "kid_same_n|kid", "bpd", "bpd_pf_ode")
FLOORS = {"fid_same_n": "fid_floor", "kid_same_n": "kid_floor"}
UNRANKED = (
    "best_val_loss",  # each arm's own objective: comparable within an objective only
    "final_loss",
    "stopped_early_at",
    "nfe",
    "classifier_test_acc",
    "sample_seconds_per_image",
    "train_seconds",
)

REPORT = ReportSpec(
    tuple(REPORT_METRICS),
    tuple(TERMINAL_METRICS),
    METRIC_SPECS,
    tuple(NOTES),
    True,
    compare_within=("data.name",),
    headline=HEADLINE,
    se_of={"bpd": "bpd_se", "bpd_pf_ode": "bpd_pf_ode_se"},
    units={"bpd": "bits/dim", "bpd_pf_ode": "bits/dim"},
    unranked=UNRANKED,
    floors=FLOORS,
)


def report_spec(rows: Sequence[Mapping[str, Any]], out: str) -> ReportSpec:
    """The image report (the same for every image study)."""
    return REPORT
