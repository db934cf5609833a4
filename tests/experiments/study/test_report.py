"""Reports (grouping over seeds, mean ± std, significant best in bold, ties, statuses) and plots."""

from __future__ import annotations

import math

import numpy as np
import pytest

from difflab.experiments.common.figures import (
    plot_curve,
    plot_loss_by_epoch,
    plot_loss_by_time,
    plot_metric_comparison,
    plot_samples_grid,
)
from difflab.experiments.study.report import format_table, summarise, write_report

AXES = ["objective.target", "train.seed"]


def _rows() -> list[dict]:
    """eps: kl 1, 2, 3 (mean 2, std 1); v: kl 4, 6 and one divergence (mean 5, std √2, n=2); oracle: 0.5."""
    rows = []
    for seed, kl, acc in [(0, 1.0, 0.9), (1, 2.0, 0.8), (2, 3.0, 0.7)]:
        rows.append(dict(run_id=f"eps__s{seed}", label="", status="finished", kl=kl, acc=acc, seconds=2.0))
        rows[-1].update({"objective.target": "eps", "train.seed": seed})
    for seed, kl, acc in [(0, 4.0, 0.95), (1, 6.0, 0.85)]:
        rows.append(dict(run_id=f"v__s{seed}", label="", status="finished", kl=kl, acc=acc, seconds=4.0))
        rows[-1].update({"objective.target": "v", "train.seed": seed})
    rows.append(dict(run_id="v__s2", label="", status="diverged", kl=math.nan, seconds=1.0, diverged_at=17))
    rows[-1].update({"objective.target": "v", "train.seed": 2})
    rows.append(dict(run_id="oracle__eps", label="oracle", status="finished", kl=0.5, acc=1.0, seconds=0.1))
    rows[-1].update({"objective.target": "eps", "train.seed": None})
    return rows


def test_summarise_mean_std_and_best():
    summary = summarise(_rows(), AXES, {"acc": "max"})
    assert summary.group_keys == ["label", "objective.target"] and summary.seed_keys == ["train.seed"]
    assert summary.metrics == ["acc", "diverged_at", "kl"]
    eps, v, oracle = summary.groups
    assert (eps.n, v.n, oracle.n) == (3, 3, 1)
    assert eps.stats("kl") == (2.0, 1.0, 3)
    mean, std, count = v.stats("kl")
    assert mean == 5.0 and std == pytest.approx(math.sqrt(2.0)) and count == 2
    assert v.stats("acc")[0] == pytest.approx(0.9) and eps.stats("acc")[0] == pytest.approx(0.8)
    assert v.status_summary() == "2/3 finished, 1/3 diverged"
    # kl: eps (2) has the lowest mean among non-extra groups (the oracle's 0.5 is a reference), but paired by
    # seed with v (d = 3, 4: t-interval 3.5 ± 6.4 on 1 df) it is not significantly better: both are ties.
    # acc (max): v beats eps by exactly 0.05 on both common seeds (s = 0), a significant best.
    # diverged_at has one value: nothing to compare.
    assert summary.best == {"acc": {1}} and summary.ties == {"kl": {0, 1}}
    # the oracle as a candidate has one seed: it cannot be paired by seed, so it is left out (never marked)
    # although its kl (0.5) is the lowest; eps and v are compared as before
    assert summarise(_rows(), AXES, {"acc": "max"}, best_among_extras=True).ties == {"kl": {0, 1}}
    with pytest.raises(ValueError, match="direction"):
        summarise(_rows(), AXES, {"kl": "lowest"})


def test_format_table_markdown_and_plain():
    table = format_table(_rows(), AXES, {"acc": "max"}, metrics=["kl", "acc"])
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "label",
        "objective.target",
        "n",
        "status",
        "kl ↓",
        "acc ↑",
        "seconds",
    ]
    eps = [c.strip() for c in lines[2].strip("|").split("|")]
    v = [c.strip() for c in lines[3].strip("|").split("|")]
    oracle = [c.strip() for c in lines[4].strip("|").split("|")]
    assert eps == ["", "eps", "3", "3/3 finished", "2 ± 1 ≈", "0.8 ± 0.1", "2.0"]
    v_cells = ["5 ± 1.4 ≈ (n=2)", "**0.9 ± 0.071** (n=2)"]
    assert v == ["", "v", "3", "2/3 finished, 1/3 diverged", *v_cells, "3.0"]
    assert oracle == ["oracle", "eps", "1", "1/1 finished", "0.5", "1", "0.1"]
    plain = format_table(_rows(), AXES, {"acc": "max"}, metrics=["acc"], style="plain")
    assert "0.9 ± 0.071 * (n=2)" in plain and "**" not in plain and "|" not in plain


def test_write_report(tmp_path):
    path = write_report(
        _rows(),
        AXES,
        tmp_path,
        {"acc": "max"},
        title="toy",
        description="a toy study",
        settings={"train.steps": 100, "data.name": "ring", "model.time_embed": True},
        notes=["oracle: exact score of the data law (a floor, not a contender)"],
        figures=[tmp_path / "fig.png"],
    )
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert text.startswith("# Study: toy\n\na toy study\n")
    assert "- Runs: 7 (1 diverged, 6 finished)" in text
    assert '- `data.name` = "ring"' in text and "- `model.time_embed` = true" in text
    assert "- oracle: exact score of the data law" in text
    assert "over `train.seed`" in text and "2 ± 1 ≈" in text
    assert "![fig](fig.png)" in text
    assert not list(tmp_path.glob("*.tmp"))


def _is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png(tmp_path):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2000, 2))
    runs = {"eps": ref + 0.1 * rng.normal(size=ref.shape), "v": np.vstack([ref[:500], [[np.nan, 0.0]]])}
    paths = [
        plot_samples_grid(runs, ref, tmp_path / "samples.png", titles={"eps": "ε target"}),
        plot_samples_grid(runs, ref, tmp_path / "density.png", mode="hist"),
    ]
    t = np.linspace(0.01, 0.99, 20)
    curves = {f"{tg}/nelbo": (t, np.exp(-3 * t) * (k + 1)) for k, tg in enumerate(["eps", "v"])}
    curves["eps/weighted"] = (t, np.exp(-2 * t))
    paths.append(plot_loss_by_time(curves, tmp_path / "by_time.png", groupby=lambda s: s.split("/")[0]))
    steps = np.arange(1, 201)
    paths.append(plot_loss_by_epoch({"eps": (steps, 1 / steps), "v": (steps, 2 / steps)}, tmp_path / "e.png"))
    paths.append(
        plot_metric_comparison(
            _rows(),
            "kl",
            "objective.target",
            tmp_path / "bars.png",
            hue_key="label",
            reference_lines={"floor": 0.2},
        )
    )
    paths.append(plot_curve({"a": t}, {"a": t**2}, tmp_path / "sub" / "curve.png", "t", "error", logy=True))
    assert all(_is_png(p) for p in paths)
    assert len({p.name for p in paths}) == 6
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plot_samples_grid({"bad": np.zeros((5, 3))}, ref, tmp_path / "bad.png")
