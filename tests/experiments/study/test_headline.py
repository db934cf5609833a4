"""The report answers the question first (issue 10 item 4): headline tables and conclusions per comparison
group from paired comparisons; floors, oracle rows and constant columns are never bold."""

from __future__ import annotations

import re

import numpy as np
import pytest

from difflab.experiments.study.compare import compare_group, comparison_groups, is_ranked
from difflab.experiments.study.headline import answer_section
from difflab.experiments.study.report import ReportSpec, write_report

AXES = ["data.name", "objective.target", "train.seed"]
HEADLINE = ("kl", "nll", "kde_kl")


def _seed_rows() -> list[dict]:
    """3 seeds: eps kl 0.10/0.12/0.11, x0 kl +0.5 on each seed; the floor column is lower for eps on every
    seed (it would be a significant "best" if it were ranked); nll_true is constant; the oracle is best."""
    rows = []
    for target, shift, floor in (("eps", 0.0, 0.70), ("x0", 0.5, 0.75)):
        for seed, kl in enumerate((0.10, 0.12, 0.11)):
            rows.append(
                {
                    "run_id": f"m__{target}__s{seed}",
                    "label": "",
                    "data.name": "m",
                    "objective.target": target,
                    "train.seed": seed,
                    "status": "finished",
                    "kl": kl + shift,
                    "nll": 1.0 + (kl + shift) / 2,
                    "nll_true": 0.95,
                    "kde_kl": 0.9 + shift / 10 + 0.001 * seed,
                    "kde_kl_floor": floor + 0.001 * seed,
                }
            )
    rows.append(
        {
            "run_id": "oracle__m",
            "label": "oracle",
            "data.name": "m",
            "objective.target": "eps",
            "train.seed": None,
            "status": "finished",
            "kl": 0.001,
            "nll": 0.95,
            "nll_true": 0.95,
            "kde_kl": 0.8,
            "kde_kl_floor": 0.7,
        }
    )
    return rows


def _bold_cells(table_line: str) -> list[int]:
    cells = [c.strip() for c in table_line.strip("|").split("|")]
    return [i for i, c in enumerate(cells) if c.startswith("**")]


def test_report_never_bolds_floor_oracle_or_constant(tmp_path):
    rows = _seed_rows()
    spec = ReportSpec(headline=HEADLINE, compare_within=("data.name",))
    path = write_report(rows, AXES, tmp_path, metrics=["kl", "nll", "nll_true", "kde_kl_floor"], spec=spec)
    text = path.read_text()
    appendix = text[text.index("## Appendix") :]
    lines = [ln for ln in appendix.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    col = {name.split(" ")[0]: i for i, name in enumerate(header)}
    cells = {ln: [c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]}
    body = {c[col["objective.target"]] + c[col["label"]]: ln for ln, c in cells.items()}
    # eps is significantly best in kl and nll (x0 worse by 0.5 on every seed): bold there, nowhere else
    assert _bold_cells(body["eps"]) == [col["kl"], col["nll"]]
    assert _bold_cells(body["x0"]) == [] and _bold_cells(body["epsoracle"]) == []  # the oracle's kl 0.001
    assert "0.95 ≈" not in text and "**0.95" not in text  # nll_true: constant
    # test of the test: the floor column *would* be a significant best under another name
    renamed = [{**r, "kde_klx": r["kde_kl_floor"]} for r in rows]
    group = comparison_groups(renamed, AXES, spec)[0]
    comp = compare_group(group, "kde_klx", spec, ["train.seed"])
    assert comp is not None and comp.significant and comp.best == "eps"
    assert compare_group(group, "kde_kl_floor", spec, ["train.seed"]) is None
    assert not is_ranked("nll_true", spec, rows) and is_ranked("kl", spec, rows)
    # the headline: eps bold in kl, the oracle and the floor as reference rows, never bold
    answer = text[text.index("## Answer") : text.index("## Appendix")]
    oracle_line = next(ln for ln in answer.splitlines() if ln.startswith("| oracle (reference)"))
    floor_line = next(ln for ln in answer.splitlines() if ln.startswith("| floor"))
    assert "**" not in oracle_line and "**" not in floor_line
    assert "| `eps` | **0.11 ± 0.025**" in answer  # t_{2,0.975} 4.303 x 0.01 / sqrt(3)
    assert "paired by training seed over 3 seeds, so the intervals cover seed variance" in answer
    assert (
        "**kl**: `eps` (0.11) is best, significantly better than every other arm; worse: `x0` by 0.5"
        in answer
    )


def _point_rows(tmp_path) -> tuple[list[dict], dict]:
    """One seed; per-point KL values on 500 shared points: eps, v and score equal in truth (their values
    differ by evaluation noise 0.05 per point only), x0 worse by 0.74; point spread 1, shared by every arm."""
    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 1.0, size=500) + 0.02
    shifts = {"eps": 0.0, "v": 0.0, "score": 0.0, "x0": 0.74}
    rows, pointwise = [], {}
    for target, shift in shifts.items():
        kl = base + shift + 0.05 * rng.normal(size=500)
        verdict = "still improving" if target == "x0" else "converged"
        rows.append(_one_seed_row(target, kl, verdict, pointwise))
    return rows, pointwise


def _one_seed_row(target: str, kl: np.ndarray, verdict: str, pointwise: dict) -> dict:
    """The result row of a one-seed run of ``target`` on set "m" with per-point KL values ``kl`` (recorded in
    ``pointwise`` under its run id)."""
    rid = f"m__{target}__s0"
    pointwise[rid] = {"kl": kl}
    return {
        "run_id": rid,
        "data.name": "m",
        "objective.target": target,
        "train.seed": 0,
        "status": "finished",
        "kl": float(kl.mean()),
        "kl_se": float(kl.std(ddof=1) / np.sqrt(kl.size)),
        "verdict": verdict,
    }


def test_conclusions_state_ties_and_differences(tmp_path):
    rows, pointwise = _point_rows(tmp_path)
    spec = ReportSpec(headline=("kl",), se_of={"kl": "kl_se"}, units={"kl": "nats"}, pointwise=pointwise)
    text = "\n".join(answer_section(rows, AXES, spec))
    assert (
        "on 500 shared held-out points" in text
        and "evaluation noise only, not training-seed variance" in text
    )
    line = next(ln for ln in text.splitlines() if ln.startswith("- **kl**"))
    best = re.search(r"the best, `(\w+)`", line).group(1)
    means = {r["objective.target"]: r["kl"] for r in rows}
    assert best == min(means, key=means.get) and best != "x0"
    tied = line.split("; worse")[0]
    assert all(f"`{t}`" in tied for t in ("eps", "v", "score")) and "`x0`" not in tied
    # x0 - best = 0.74 on average; paired s.e. sqrt(2) 0.05 / sqrt(500) = 0.0032, so ± 1.96 x 0.0032
    worse = re.search(r"worse: `x0` by ([0-9.]+) ± ([0-9.]+) nats", line)
    assert worse is not None
    assert float(worse.group(1)) == pytest.approx(0.74, abs=0.01)
    assert float(worse.group(2)) == pytest.approx(1.96 * np.sqrt(2) * 0.05 / np.sqrt(500), rel=0.15)
    assert re.search(r"Not converged \([^)]*\): `x0`;", text)
    # the headline cells: tied arms marked ≈, x0 not, nothing bold; ± is 1.96 kl_se (the arm's own s.e.)
    assert "**" not in text.split("### m")[1].split("Conclusions")[0]
    eps_line = next(ln for ln in text.splitlines() if ln.startswith("| `eps`"))
    assert eps_line.count("≈") == 1 and "≈" not in next(
        ln for ln in text.splitlines() if ln.startswith("| `x0`")
    )
    # without the per-point values one seed cannot be tested: no marks, and the report says so
    bare = "\n".join(answer_section(rows, AXES, ReportSpec(headline=("kl",))))
    assert "≈" not in bare.split("### m")[1].split("Conclusions")[0] and "No metric could be tested" in bare


def test_multi_seed_arm_verdict_is_the_mean_change_and_getting_worse_is_not_converged():
    """An arm with 3 seeds: the verdict of the mean change over the seeds (se = sd / sqrt(3)), with the runs'
    own verdicts counted; an arm that is getting worse is listed as not converged."""
    rows = _seed_rows()
    changes = {"eps": (-0.02, 0.01, 0.0), "x0": (0.3, 0.25, 0.35)}
    for r in rows:
        if r["label"] == "":
            d = changes[r["objective.target"]][r["train.seed"]]
            r.update(
                verdict="getting worse" if d > 0.1 else "still improving" if d < -0.015 else "converged",
                verdict_change=d,
                verdict_se=0.01,
                verdict_metric="kl",
                verdict_rtol=0.1,
            )
    spec = ReportSpec(headline=("kl",), compare_within=("data.name",))
    text = "\n".join(answer_section(rows, AXES, spec))
    eps_line = next(ln for ln in text.splitlines() if ln.startswith("| `eps`"))
    # mean -0.00333, se sqrt(0.00882^2 + 0.01^2) = 0.013: converged, though one run was still improving
    assert "converged (mean Δ -0.00333, s.e. 0.013; runs: 2/3 converged, 1/3 still improving)" in eps_line
    x0_line = next(ln for ln in text.splitlines() if ln.startswith("| `x0`"))
    assert "getting worse (mean Δ 0.3, s.e. 0.031; runs: 3/3 getting worse)" in x0_line
    assert (
        re.search(r"Not converged \([^)]*\): `x0`;", text) and "`eps`;" not in text.split("Not converged")[1]
    )


def test_verdict_over_two_doublings_shows_the_doubling_before():
    """With eval.verdict_doublings = 2 the cell gives the earlier doubling's change, and an arm flat over the
    last doubling but falling over the one before is listed as not converged."""
    rows = _seed_rows()
    for r in rows:
        if r["label"] == "":
            falling = r["objective.target"] == "x0"
            r.update(
                verdict="still improving" if falling else "converged",
                verdict_change=0.001 * r["train.seed"],
                verdict_se=0.01,
                verdict_change_2=-0.3 if falling else 0.002,
                verdict_se_2=0.01,
                verdict_doublings=2,
                verdict_metric="kl",
                verdict_rtol=0.1,
            )
    spec = ReportSpec(headline=("kl",), compare_within=("data.name",))
    text = "\n".join(answer_section(rows, AXES, spec))
    x0_line = next(ln for ln in text.splitlines() if ln.startswith("| `x0`"))
    assert "still improving (mean Δ 0.001, s.e. 0.01; the doubling before: Δ -0.3;" in x0_line
    assert re.search(r"Not converged \([^)]*\): `x0`;", text)
    eps_line = next(ln for ln in text.splitlines() if ln.startswith("| `eps`"))
    assert eps_line.count("converged (") == 1 and "before: Δ 0.002" in eps_line


def test_an_extra_with_axes_of_its_own_names_each_arm():
    """score-sde-gmm's "vp" extra spans two weightings: two arms, "vp / uniform_score" and "vp /
    inverse_variance" (both were called "vp" before, and their comparisons could not be told apart); an
    extra with a single arm keeps its bare label."""
    rows = []
    for label, w in (
        ("", "uniform"),
        ("", "inverse"),
        ("vp", "uniform"),
        ("vp", "inverse"),
        ("lv", "uniform"),
    ):
        for seed in (0, 1):
            rows.append(
                {
                    "run_id": f"{label}{w}{seed}",
                    "label": label,
                    "objective.weighting": w,
                    "train.seed": seed,
                    "status": "finished",
                    "kl": 0.1 + seed * 0.01 + (w == "inverse") * 0.05,
                }
            )
    spec = ReportSpec(headline=("kl",), best_among_extras=True)
    (group,) = comparison_groups(rows, ["objective.weighting", "train.seed"], spec)
    names = [a.name for a in group.arms]
    assert names == ["uniform", "inverse", "vp / uniform", "vp / inverse", "lv"]
    # within comparison groups: an extra with one arm per group keeps its bare label
    for r in rows:
        r["data.name"] = "a" if r["train.seed"] == 0 else "b"
        r["train.seed"] = 0
    spec = ReportSpec(headline=("kl",), best_among_extras=True, compare_within=("data.name",))
    groups = comparison_groups(rows, ["data.name", "objective.weighting", "train.seed"], spec)
    assert [a.name for a in groups[0].arms] == names


def test_a_holm_tie_is_not_called_an_interval_containing_zero():
    """Two arms 2.05 and 2.1 paired s.e. above the best: each unadjusted 95% interval excludes 0 (p 0.04),
    Holm over the 2 comparisons makes both ties (2 p_(1) > 0.05). The sentence must say that the tie is
    Holm's and that ± is unadjusted, not that the interval contains 0 (it does not)."""
    rng = np.random.default_rng(1)
    n = 400
    eps = rng.normal(0.0, 1.0, size=n)
    rows, pointwise = [], {}
    for target, t_stat in (("eps", 0.0), ("v", 2.05), ("score", 2.1)):
        # the per-point difference from eps: sd 0.1, mean t_stat paired s.e. (0.1 / sqrt(n))
        z = rng.normal(size=n)
        d = 0.1 * (z - z.mean()) / z.std(ddof=1) + t_stat * 0.1 / np.sqrt(n)
        kl = eps + d if target != "eps" else eps
        rows.append(_one_seed_row(target, kl, "converged", pointwise))
    spec = ReportSpec(headline=("kl",), se_of={"kl": "kl_se"}, units={"kl": "nats"}, pointwise=pointwise)
    group = comparison_groups(rows, AXES, spec)[0]
    comp = compare_group(group, "kl", spec, ["train.seed"])
    assert comp.best == "eps" and sorted(comp.tied) == ["score", "v"] and not comp.worse
    assert all(not comp.intervals[a].contains_zero() for a in ("v", "score"))  # unadjusted: both exclude 0
    assert all(0.025 < comp.intervals[a].p < 0.05 for a in ("v", "score"))
    text = "\n".join(answer_section(rows, AXES, spec))
    line = next(ln for ln in text.splitlines() if ln.startswith("- **kl**"))
    assert "contains 0" not in text
    assert "Holm-adjusted p ≥ 0.05 for each; ± is the unadjusted 95% interval of the difference" in line


def test_a_sample_metric_past_its_floor_is_flagged_not_praised():
    """loss-comparison-2d on mixture8: the arm worst on KL (x0 / weighted) scored kde_kl 0.72 against the
    true-sample floor 0.809. An arm past the floor is named as such (noise or the measure's bias); arms on the
    right side of the floor are not."""
    spec = ReportSpec(headline=HEADLINE, compare_within=("data.name",))
    plain = "\n".join(answer_section(_seed_rows(), AXES, spec))
    line = next(ln for ln in plain.splitlines() if "**kde_kl** beside its floor" in ln)
    assert "past the floor" not in line
    rows = [
        {**r, "kde_kl": r["kde_kl"] - 0.3} if r["objective.target"] == "x0" and r["label"] == "" else r
        for r in _seed_rows()
    ]  # x0: 0.65-0.652 against floors 0.70-0.752
    text = "\n".join(answer_section(rows, AXES, spec))
    line = next(ln for ln in text.splitlines() if "**kde_kl** beside its floor" in ln)
    assert "past the floor: `x0` (0.651)" in line and "`eps` (" not in line.split("past the floor")[1]
    assert "not a better fit" in line
    # most arms past the floor (swiss_roll's mmd2, every arm within noise of it): said once, not listed
    rows = [{**r, "kde_kl": r["kde_kl"] - 0.3} if r["label"] == "" else r for r in _seed_rows()]
    text = "\n".join(answer_section(rows, AXES, spec))
    line = next(ln for ln in text.splitlines() if "**kde_kl** beside its floor" in ln)
    assert "2 of 2 arms are past the floor" in line and "past the floor: `" not in line


def test_a_sample_metric_whose_best_is_past_the_floor_ranks_no_arm():
    """mixture8 again: x0 / weighted's kde_kl 0.72 below the floor 0.809 was the "best" of its metric
    sentence and marked in the table. With the best past the floor nothing is marked or called best; on the
    right side of the floor the ranking stands."""
    spec = ReportSpec(headline=HEADLINE, compare_within=("data.name",))
    (group,) = comparison_groups(_seed_rows(), AXES, spec)
    ranked = compare_group(group, "kde_kl", spec, ["train.seed"])
    assert ranked is not None and ranked.best == "eps"  # 0.901 against floors 0.70 / 0.75
    rows = [
        {**r, "kde_kl": r["kde_kl"] - 0.3} if r["objective.target"] == "x0" and r["label"] == "" else r
        for r in _seed_rows()
    ]  # x0 0.651 < floor 0.726: a "best" that is better than true samples
    (group,) = comparison_groups(rows, AXES, spec)
    assert compare_group(group, "kde_kl", spec, ["train.seed"]) is None
    assert compare_group(group, "kl", spec, ["train.seed"]) is not None  # other metrics still ranked
    text = "\n".join(answer_section(rows, AXES, spec))
    assert "**kde_kl**: the best" not in text and "**kde_kl**: " not in text.replace("**kde_kl** beside", "")
    assert "so **kde_kl** ranks no arm here (no best is marked)" in text
    assert "not ranked: kde_kl" in text
    table = [ln for ln in text.splitlines() if ln.startswith("| `")]
    kde_cells = [ln.strip("|").split("|")[3] for ln in table]
    assert kde_cells and not any("≈" in c or "**" in c for c in kde_cells)
    # a "max" metric: past the floor is above it, so the same values read as "higher is better" rank
    # when every arm is below the floor and do not when the best is above it
    up = ReportSpec(headline=HEADLINE, compare_within=("data.name",), directions={"kde_kl": "max"})
    below = [{**r, "kde_kl": r["kde_kl"] - 0.3} if r["label"] == "" else r for r in _seed_rows()]
    (low,) = comparison_groups(below, AXES, up)
    assert compare_group(low, "kde_kl", up, ["train.seed"]).best == "x0"  # 0.651 < floor 0.726
    (high,) = comparison_groups(_seed_rows(), AXES, up)
    assert compare_group(high, "kde_kl", up, ["train.seed"]) is None  # 0.951 > floor
