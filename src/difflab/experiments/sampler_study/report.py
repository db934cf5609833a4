"""What a finished sampler study hands back: the report spec, metric-against-NFE figures and the
"cheapest sampler within 10 % of its 1000-NFE value" table (:func:`cheapest_within`)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from difflab.experiments.common import figures as plots
from difflab.experiments.study.report import ReportSpec

#: headline metrics (lower is better), each with its floor column where it has one
HEADLINE = ("sw2", "mmd2", "kde_kl", "mode_tv", "kl_push", "fid")
REPORT_METRICS = [
    "nfe_actual",
    "sw2",
    "sw2_floor",
    "mmd2",
    "mmd2_floor",
    "kde_kl",
    "kde_kl_floor",
    "mode_tv",
    "mode_tv_floor",
    "kl_push",
    "kl_push_se",
    "w2",
    "w2_floor",
    "model_kl",
    "fid",
    "fid_floor",
    "fid_same_n",
    "kid",
    "kid_floor",
    "is",
    "model_fid",
    "sample_seconds",
]
TERMINAL = ["nfe_actual", "sw2", "mmd2", "kde_kl", "mode_tv", "kl_push", "fid", "fid_floor"]
NOTES = [
    "One row per (denoiser, sampler, grid, nominal NFE); nfe_actual is the NFE spent (grid steps = "
    "round((NFE - 1) / evaluations per step), at least 1; the final denoising counts). oracle rows run the "
    "exact Bayes denoiser of the data law, so their error is the sampler's alone; trained rows run one model "
    "of the recipe (trained once, cached by the recipe's hash), so the gap between the two is model error.",
    "sw2 (sliced W2), mmd2 (unbiased MMD^2, median-heuristic kernel), kde_kl (KL(q || KDE of the samples), "
    "Scott's rule, on fresh points of q) and mode_tv (total variation of mode fractions) are against "
    "held-out "
    "samples; each *_floor is the same metric with as many fresh true samples: the level no sampler can beat "
    "at this sample size. Every arm uses the same x_T and metric seeds (common random numbers).",
    "kl_push = KL(p_hat || q) in nats, exact up to Monte-Carlo error (kl_push_se): for a deterministic "
    "sampler, log p_hat of each draw by the change of variables along its own discretised path (Jacobian "
    "of x_T -> x0 by autograd); stochastic samplers have no such density and leave it empty.",
    "Grids undefined on the process are refused when the study is checked (the 'discrete' grid needs a DDPM "
    "chain), so a preset on a continuous process lists only uniform_t, uniform_logsnr and karras.",
    "Image rows (recipe kind images): FID / KID / IS in the features of the classifier trained on the data "
    "set (cached), against the training images; fid_floor is held-out images against the same reference at "
    "the same n, fid_same_n the model at the floor's n; model_fid is the recipe run's own FID.",
]


def cheapest_within(
    rows: Sequence[Mapping[str, Any]], metric: str, tol: float = 0.10, ref_nfe: int | None = None
) -> dict[str, dict[str, Any]]:
    """Per denoiser, the cheapest (sampler, grid) by NFE whose ``metric`` stays within ``tol`` of its own
    value at the reference NFE (the largest nominal NFE, 1000 in the presets), or within its noise.

    For one (sampler, grid) with reference value r, its cost is the smallest NFE n such that every value at
    nominal NFE >= n satisfies v <= r + max(tol |r|, 2 sqrt(se_v^2 + se_r^2)) (lower is better; staying there
    rules out a lucky dip), se from ``<metric>_se`` where the rows have it (kl_push): a relative band
    around a value near 0 (the oracle's exact KL at 1000 NFE) is narrower than the estimate's own noise.
    The cheapest is the least cost (``nfe_actual``), ties broken by the lower value. Returns
    {denoiser: {sampler, grid, nfe, value, ref}}; a denoiser with no finished reference row is absent."""
    curves: dict[tuple[str, str, str], list[tuple[int, int, float, float]]] = defaultdict(list)
    for r in rows:
        v = r.get(metric)
        if r.get("status") == "finished" and isinstance(v, int | float) and math.isfinite(v):
            key = (str(r["denoiser"]), str(r["sampler"]), str(r["grid"]))
            se = r.get(f"{metric}_se")
            se = float(se) if isinstance(se, int | float) and math.isfinite(se) else 0.0
            nfe = int(r.get("nfe", r.get("nfe_actual", 0)))
            curves[key].append((nfe, int(r.get("nfe_actual", nfe)), float(v), se))
    best: dict[str, dict[str, Any]] = {}
    for (den, sampler, grid), pts in sorted(curves.items()):
        pts.sort()
        top = ref_nfe if ref_nfe is not None else max(p[0] for p in pts)
        ref = [(v, se) for n, _, v, se in pts if n == top]
        if not ref:
            continue
        r, se_r = ref[0]

        def within(v: float, se: float, r: float = r, se_r: float = se_r) -> bool:
            return v <= r + max(tol * abs(r), 2.0 * math.hypot(se, se_r))

        cost = None
        for i, (_, actual, v, _) in enumerate(pts):
            if all(within(w, se) for _, _, w, se in pts[i:]):
                cost = (actual, v)
                break
        if cost is None:  # pragma: no cover - the reference point itself always qualifies
            continue
        entry = {"sampler": sampler, "grid": grid, "nfe": cost[0], "value": cost[1], "ref": r}
        old = best.get(den)
        if old is None or (cost[0], cost[1]) < (old["nfe"], old["value"]):
            best[den] = entry
    return best


def cheapest_section(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown, the report's answer: per metric and denoiser, the cheapest sampler within 10 % (or the
    noise) of its 1000-NFE value."""
    lines = [
        "## Answer: the cheapest sampler within 10 % of its own highest-NFE value",
        "",
        "Per metric and denoiser: the (sampler, grid) whose metric stays within 10 % of its value at the "
        "highest NFE (or within 2 s.e. of it, where the metric has one: kl_push) from the fewest "
        "evaluations on (see `cheapest_within`). Where that value sits at the "
        "floor (the same metric on true samples), the 10 % band can be narrower than the sampling noise "
        "(MMD^2 near 0 above all): read such an entry as noise-limited; kl_push, exact up to its "
        "Monte-Carlo error, is the sampler's own error.",
        "",
        "| metric | denoiser | sampler | grid | NFE | value | its high-NFE value | floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for metric in HEADLINE:
        floors = [r[f"{metric}_floor"] for r in rows if isinstance(r.get(f"{metric}_floor"), int | float)]
        floor = f"{float(np.median(floors)):.4g}" if floors else "0 (exact)" if metric == "kl_push" else "–"
        for den, e in sorted(cheapest_within(rows, metric).items()):
            lines.append(
                f"| {metric} | {den} | {e['sampler']} | {e['grid']} | {e['nfe']} | {e['value']:.4g} "
                f"| {e['ref']:.4g} | {floor} |"
            )
    return "\n".join(lines) + "\n"


def report_spec(rows: Sequence[Mapping[str, Any]], out: str) -> ReportSpec:
    """Columns (listed first), terminal table, directions (``is`` is better high) and notes."""
    directions = {m: "min" for m in REPORT_METRICS} | {"is": "max", "is_floor": "max"}
    return ReportSpec(tuple(REPORT_METRICS), tuple(TERMINAL), directions, tuple(NOTES))


def _panel(ax: Any, rows: list[Mapping[str, Any]], metric: str, title: str) -> None:
    by_sampler: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        v = r.get(metric)
        if isinstance(v, int | float) and math.isfinite(v) and v > 0:
            by_sampler[str(r["sampler"])].append((int(r.get("nfe_actual", r.get("nfe", 0))), float(v)))
    for sampler, pts in sorted(by_sampler.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=sampler)
    floors = [r[f"{metric}_floor"] for r in rows if isinstance(r.get(f"{metric}_floor"), int | float)]
    if floors and float(np.median(floors)) > 0:
        ax.axhline(float(np.median(floors)), color="k", ls="--", lw=1, label="floor (true samples)")
    ax.set_xscale("log")
    if by_sampler:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("NFE")
    ax.set_ylabel(metric)


def make_figures(rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], out: str) -> list[str]:
    """One PNG per headline metric: metric against NFE (log-log) per sampler, a panel per (denoiser, grid),
    the floor as a dashed line; values <= 0 (possible for the unbiased MMD^2) are left off the log axis."""
    finished = [r for r in rows if r.get("status") == "finished"]
    panels = sorted({(str(r["denoiser"]), str(r["grid"])) for r in finished})
    figures: list[str] = []
    if not panels:
        return figures
    dens = sorted({p[0] for p in panels})
    grids = sorted({p[1] for p in panels})
    for metric in HEADLINE:
        if not any(isinstance(r.get(metric), int | float) for r in finished):
            continue
        fig, axes = plots._figure(ncols=len(grids), nrows=len(dens), panel=(4.2, 3.4))
        for i, den in enumerate(dens):
            for j, grid in enumerate(grids):
                sel = [r for r in finished if r["denoiser"] == den and r["grid"] == grid]
                _panel(axes[i][j], sel, metric, f"{den}, grid {grid}")
        axes[0][0].legend(fontsize=6)
        path = plots._save(fig, Path(out) / "figures" / f"{metric}_vs_nfe.png")
        figures.append(str(path))
    return figures


def report_sections(rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], out: str) -> list[str]:
    return [cheapest_section(rows)]
