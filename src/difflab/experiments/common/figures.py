"""Study figures (matplotlib, Agg canvas): each function saves one PNG atomically and returns its path.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot, so nothing is
shown, no global backend is switched and no figure is left open.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PathLike = str | os.PathLike[str]


def _figure(ncols: int = 1, nrows: int = 1, panel: tuple[float, float] = (4.0, 3.2), **kw: Any):
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig: Figure, path: PathLike, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=dpi)
    os.replace(tmp, path)
    return path


def _limits(reference: np.ndarray, margin: float = 0.15) -> list[tuple[float, float]]:
    """Per-axis limits: the reference's 0.5–99.5 % range padded by ``margin`` of its width."""
    lo, hi = np.percentile(reference, [0.5, 99.5], axis=0)
    pad = margin * np.maximum(hi - lo, 1e-6)
    return [(float(a), float(b)) for a, b in zip(lo - pad, hi + pad)]


def plot_samples_grid(
    samples_by_run: Mapping[str, Any],
    reference: Any,
    path: PathLike,
    titles: Mapping[str, str] | None = None,
    *,
    mode: str = "scatter",
    max_points: int = 4000,
    bins: int = 120,
    ncols: int | None = None,
    reference_title: str = "ground truth",
) -> Path:
    """One panel per run plus a ground-truth panel, with shared limits taken from the reference.

    Args:
        samples_by_run: run label -> samples of shape (N, 2) (numpy or torch).
        reference: true samples (M, 2).
        path: output PNG.
        titles: optional panel titles per run label (default: the label).
        mode: "scatter" (small translucent points, at most ``max_points`` per panel) or "hist" (2D
            histogram density on a shared grid, ``bins`` per axis).
        ncols: panels per row (default ≈ √panels).
    """
    if mode not in ("scatter", "hist"):
        raise ValueError(f"mode must be 'scatter' or 'hist', got {mode!r}")
    ref = _as_2d(reference)
    panels = [(reference_title, ref)] + [
        ((titles or {}).get(k, k), _as_2d(v)) for k, v in samples_by_run.items()
    ]
    ncols = ncols or math.ceil(math.sqrt(len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(ncols, nrows, panel=(3.0, 3.0))
    (x0, x1), (y0, y1) = _limits(ref)
    for ax, (title, pts) in zip(axes.flat, panels):
        finite = pts[np.isfinite(pts).all(axis=1)]
        if mode == "scatter":
            shown = finite[:max_points]
            ax.scatter(shown[:, 0], shown[:, 1], s=1.5, alpha=0.35, linewidths=0, rasterized=True)
        else:
            ax.hist2d(finite[:, 0], finite[:, 1], bins=bins, range=[[x0, x1], [y0, y1]], cmap="viridis")
        dropped = len(pts) - len(finite)
        ax.set_title(title + (f" ({dropped} non-finite)" if dropped else ""), fontsize=9)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    return _save(fig, path)


def _as_2d(x: Any) -> np.ndarray:
    arr = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"expected samples of shape (N, 2), got {arr.shape}")
    return arr


def _lines(ax: Any, curves: Mapping[str, tuple[Any, Any]], logy: bool) -> None:
    for label, (x, y) in curves.items():
        ax.plot(np.asarray(x, dtype=float), np.asarray(y, dtype=float), label=label, lw=1.3)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_loss_by_time(
    curves: Mapping[str, tuple[Any, Any]],
    path: PathLike,
    groupby: Callable[[str], str] | None = None,
    *,
    logy: bool = True,
    ylabel: str = "training loss",
) -> Path:
    """Loss against diffusion time t (t = 0 is data), one panel per group (e.g. per target).

    Args:
        curves: label -> (t bin centres, mean loss per bin).
        groupby: label -> panel name (e.g. ``lambda s: s.split("/")[0]`` for one panel per target);
            None puts every curve in one panel.
    """
    panels: dict[str, dict[str, tuple[Any, Any]]] = {}
    for label, curve in curves.items():
        panels.setdefault(groupby(label) if groupby else "", {})[label] = curve
    fig, axes = _figure(len(panels), 1, sharex=True)
    for ax, (name, group) in zip(axes.flat, panels.items()):
        _lines(ax, group, logy)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("t")
    axes.flat[0].set_ylabel(ylabel)
    return _save(fig, path)


def plot_loss_by_epoch(
    curves: Mapping[str, tuple[Any, Any]], path: PathLike, *, xlabel: str = "step", smooth: int = 1
) -> Path:
    """Training loss against step (or epoch) on a log y-axis; ``smooth`` > 1 applies a moving average."""
    smoothed = {}
    for label, (x, y) in curves.items():
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if smooth > 1 and len(y) >= smooth:
            y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
            x = x[smooth - 1 :]
        smoothed[label] = (x, y)
    fig, axes = _figure(panel=(6.0, 3.8))
    ax = axes[0, 0]
    _lines(ax, smoothed, logy=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    return _save(fig, path)


def plot_metric_comparison(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    group_key: str,
    path: PathLike,
    *,
    hue_key: str | None = None,
    reference_lines: Mapping[str, float] | None = None,
    logy: bool = False,
    title: str | None = None,
) -> Path:
    """Bar chart of ``metric`` per value of ``group_key`` (mean over the remaining runs, error bar = std).

    Args:
        rows: results rows; rows whose metric is missing or non-finite are left out.
        metric: the metric column.
        group_key: x-axis grouping (e.g. "objective.target").
        hue_key: optional second grouping drawn as side-by-side bars (e.g. "objective.weighting").
        reference_lines: label -> value drawn as dashed horizontal lines (floors, oracle).
    """
    cells: dict[tuple[Any, Any], list[float]] = {}
    groups: list[Any] = []
    hues: list[Any] = []
    for row in rows:
        value = row.get(metric)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            continue
        g, h = row.get(group_key), row.get(hue_key) if hue_key else None
        groups += [g] if g not in groups else []
        hues += [h] if h not in hues else []
        cells.setdefault((g, h), []).append(float(value))
    fig, axes = _figure(panel=(max(4.0, 0.9 * len(groups) * max(1, len(hues)) + 2.0), 3.6))
    ax = axes[0, 0]
    width = 0.8 / max(1, len(hues))
    for j, h in enumerate(hues):
        xs, means, stds = [], [], []
        for i, g in enumerate(groups):
            vals = cells.get((g, h))
            if vals:
                xs.append(i - 0.4 + width * (j + 0.5))
                means.append(statistics.fmean(vals))
                stds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
        ax.bar(xs, means, width=width, yerr=stds, capsize=3, label=None if h is None else str(h) or "(main)")
    for k, (label, value) in enumerate((reference_lines or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{(len(hues) + k) % 10}", label=label)
    ax.set_xticks(range(len(groups)), [str(g) for g in groups])
    ax.set_xlabel(group_key)
    ax.set_ylabel(metric)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    if hue_key or reference_lines:
        ax.legend(fontsize=7, title=hue_key, title_fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_curve(
    x_by_label: Mapping[str, Any],
    y_by_label: Mapping[str, Any],
    path: PathLike,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
    *,
    title: str | None = None,
) -> Path:
    """Generic line plot, one line per label (e.g. score error against t)."""
    missing = sorted(set(y_by_label) - set(x_by_label))
    if missing:
        raise ValueError(f"no x values for labels {missing}")
    fig, axes = _figure(panel=(5.5, 3.8))
    ax = axes[0, 0]
    _lines(ax, {k: (x_by_label[k], y) for k, y in y_by_label.items()}, logy)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _spread_scale(ax: Any, values: Sequence[float]) -> None:
    """A symmetric-log y axis when the values span more than two decades (an x0 arm's KL of 60 nats beside
    arms at 0.05 flattens them all on a linear axis); linear within 1 % of the largest |value| of 1, so values
    near 0 or slightly below it (a Monte-Carlo KL) stay visible."""
    finite = [abs(v) for v in values if math.isfinite(v) and v != 0]
    if len(finite) >= 2 and max(finite) / min(finite) > 100:
        linthresh = max(min(finite), 1e-2 * min(1.0, max(finite)))
        ax.set_yscale("symlog", linthresh=linthresh)
        if min(v for v in values if math.isfinite(v)) > -linthresh:  # no room below 0 for s.e. bands
            ax.set_ylim(bottom=-linthresh)


def plot_learning_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    path: PathLike,
    metric: str,
    levels: Mapping[str, float] | None = None,
    *,
    title: str | None = None,
    groupby: Callable[[str], str] | None = None,
) -> Path:
    """A metric against training step (log scale) and against training seconds, one line per run with its
    +-1 s.e. band, and horizontal reference lines (e.g. the oracle's value and the true-sample floor).

    ``curves[label]`` holds equal-length ``step``, ``seconds``, ``value`` and optionally ``se``. With
    ``groupby`` (run label -> arm name, e.g. dropping the seed) the runs of one arm share a colour and one
    legend entry, so a study of 12 arms x 3 seeds shows 12 entries, not 36."""
    group_of = {label: groupby(label) if groupby else label for label in curves}
    groups = list(dict.fromkeys(group_of.values()))
    cmap = matplotlib.colormaps["tab20" if len(groups) > 10 else "tab10"]
    colour = {g: cmap(i % cmap.N) for i, g in enumerate(groups)}
    fig, axes = _figure(ncols=2, panel=(5.0, 3.6))
    for ax, xkey, xlabel in ((axes[0, 0], "step", "training step"), (axes[0, 1], "seconds", "train seconds")):
        seen: set[str] = set()
        for label, c in curves.items():
            group = group_of[label]
            x, y = np.asarray(c[xkey], dtype=float), np.asarray(c["value"], dtype=float)
            ax.plot(
                x, y, marker="o", ms=2.5, lw=1.2, color=colour[group], label=None if group in seen else group
            )
            seen.add(group)
            if c.get("se") is not None:
                se = np.asarray(c["se"], dtype=float)
                band = 0.08 if groupby else 0.15
                ax.fill_between(x, y - se, y + se, color=colour[group], alpha=band, lw=0)
        for i, (name, value) in enumerate((levels or {}).items()):
            if math.isfinite(value):
                ax.axhline(value, color="k", ls=("--", ":", "-.")[i % 3], lw=1.0, label=name)
        ax.set_xscale("log")
        _spread_scale(ax, [v for c in curves.values() for v in c["value"]])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0, 1].legend(fontsize=6, ncol=2)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------- image grids and score error


def save_image_grid(x: Any, path: PathLike, ncol: int | None = None) -> str:
    """Write images (N, C, H, W) in [-1, 1] (a tensor or array) as one PNG grid with 1-pixel gaps, by
    ``matplotlib.image.imsave`` (no pyplot, no backend switch); returns the path."""
    import matplotlib.image

    x = np.clip(np.asarray(x.detach().float().cpu() if hasattr(x, "detach") else x, dtype=np.float32), -1, 1)
    n, c, h, w = x.shape
    ncol = ncol or max(1, math.ceil(math.sqrt(n)))
    nrow = math.ceil(n / ncol)
    canvas = np.ones((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), dtype=np.float32)
    imgs = ((x + 1) / 2).transpose(0, 2, 3, 1)
    for i in range(n):
        r, q = divmod(i, ncol)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = imgs[i]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if c == 1:
        matplotlib.image.imsave(path, canvas[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        matplotlib.image.imsave(path, canvas)
    return str(path)


def plot_image_panels(
    images: Mapping[str, PathLike], titles: Mapping[str, str], path: PathLike
) -> Path | None:
    """One panel per PNG in ``images`` (label -> file) titled ``titles[label]``; None when there are none."""
    import matplotlib.image

    items = [(label, Path(png)) for label, png in images.items() if Path(png).is_file()]
    if not items:
        return None
    ncol = min(4, len(items))
    nrow = math.ceil(len(items) / ncol)
    fig = Figure(figsize=(3.0 * ncol, 3.3 * nrow))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, png) in zip(axes.flat, items, strict=False):
        ax.imshow(matplotlib.image.imread(png))
        ax.set_title(titles.get(label, label), fontsize=7)
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def plot_score_error(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    path: PathLike,
    title: str = "",
    groups: Mapping[str, str] | None = None,
) -> Path:
    """Two panels: e(t) = E|s_theta - grad log p_t|^2 against t (log-log), and sigma_t^2 e(t) against the
    log-SNR, one line per curve; curves with the same ``groups[label]`` (the seeds of one arm) share a colour
    and one legend entry; dashed: E|grad log p_t|^2 (the zero score)."""
    from matplotlib import colormaps

    groups = dict(groups or {label: label for label in curves})
    fig, axes = _figure(2, 1, panel=(5.5, 4.0))
    ax0, ax1 = axes[0]
    names = list(dict.fromkeys(groups[label] for label in curves))
    colours = {grp: colormaps["tab10"](i % 10) for i, grp in enumerate(names)}
    seen: set[str] = set()
    for label, cv in curves.items():
        grp = groups[label]
        kw = {"color": colours[grp], "lw": 1.2, "label": grp if grp not in seen else None}
        seen.add(grp)
        ax0.plot(cv["t"], cv["err"], **kw)
        ax1.plot(cv["logsnr"], cv["err_eps"], **kw)
    for cv in list(curves.values())[:1]:
        ax0.plot(cv["t"], cv["ref"], "k--", lw=0.8, label="E|grad log p_t|^2")
    ax0.set(xscale="log", yscale="log", xlabel="t", ylabel="E|s_theta - grad log p_t|^2 (x_t ~ p_t)")
    ax1.set(yscale="log", xlabel="log-SNR lambda_t", ylabel="sigma_t^2 E|s_theta - grad log p_t|^2")
    ax0.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi=110)
