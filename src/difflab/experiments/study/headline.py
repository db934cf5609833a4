"""The part of a study report that answers the question: per comparison group, a compact headline table
(at most 6 metrics, the floor and the oracle as reference rows, the convergence verdict) and conclusions
written from the paired comparisons of :mod:`difflab.experiments.study.compare`.

Cells: mean ± half-width of a 95% interval of that arm's value: over seeds (t-interval of the mean) when
the arm has several, else ± 1.96 · its recorded standard error (``ReportSpec.se_of``), else the bare value.
Marks: **bold** for a best arm significantly better than every other arm of its group; ``≈`` on the best
and on every arm not significantly different from it (Holm-adjusted paired test at 5%); none where the
metric cannot be tested (one seed and no per-point values) or is never ranked (floors, constants).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from scipy import stats as _st

from difflab.experiments.study.compare import (
    MARK_BEST,
    MARK_TIE,
    Arm,
    Group,
    candidates,
    compare_group,
    comparison_groups,
    group_marks,
)
from difflab.experiments.study.convergence import arm_verdict, verdict_key
from difflab.experiments.study.plan import is_seed_key
from difflab.experiments.study.reportspec import ReportSpec
from difflab.experiments.study.stats import LEVEL, GroupComparison

DASH = "—"
VERDICT_KEY = "verdict"
NOT_CONVERGED = "still improving"
GETTING_WORSE = "getting worse"


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _pm(x: float) -> str:
    """The ± of an interval: two significant digits."""
    return f"{x:.2g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def arm_cell(arm: Arm, metric: str, spec: ReportSpec, seed_keys: Sequence[str]) -> str:
    """``mean ± half-width`` of the arm's value (module docstring), or "—"."""
    vals = list(arm.seed_values(metric, seed_keys).values())
    if not vals:
        return DASH
    mean = sum(vals) / len(vals)
    if len(vals) >= 2:
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        half = float(_st.t.ppf(0.975, len(vals) - 1)) * sd / math.sqrt(len(vals))
        return f"{_fmt(mean)} ± {_pm(half)}"
    se = arm.value(spec.se_of[metric]) if metric in spec.se_of else None
    return f"{_fmt(mean)} ± {_pm(1.96 * se)}" if se is not None else _fmt(mean)


def headline_metrics(group: Group, spec: ReportSpec) -> list[str]:
    """The spec's headline entries that the group has (``a|b``: the first present)."""
    present = {k for a in group.arms for r in a.rows for k in r}
    out = []
    for entry in spec.headline:
        found = next((m for m in entry.split("|") if m in present), None)
        if found is not None:
            out.append(found)
    return out


def _arm_verdict(arm: Arm) -> tuple[str | None, str]:
    """(verdict, cell text) of an arm. One run: its verdict and change over the last doubling. k >= 2 seeds:
    the verdict of the mean change over the seeds (its s.e. keeps the evaluation noise the seeds share,
    :func:`~difflab.experiments.study.convergence.arm_verdict`), with the runs' own verdicts counted."""
    text = arm.text(VERDICT_KEY)
    if text is None:
        return None, DASH
    seeded = [r for r in arm.rows if isinstance(r.get("verdict_change"), int | float)]
    if len(seeded) >= 2:
        v = arm_verdict(seeded)
        counts = text if "/" in text else f"{len(seeded)}/{len(seeded)} {text}"
        change = f"mean Δ {_fmt(v['verdict_change'])}, s.e. {_pm(v['verdict_se'])}{_earlier(v)}"
        return v["verdict"], f"{v['verdict']} ({change}; runs: {counts})"
    change, se = arm.value("verdict_change"), arm.value("verdict_se")
    if change is None:
        return text, text
    earlier = _earlier(arm.rows[0]) if len(arm.rows) == 1 else ""
    return text, f"{text} (Δ {_fmt(change)}" + (f", s.e. {_pm(se)}" if se else "") + f"{earlier})"


def _earlier(verdict: Mapping[str, Any]) -> str:
    """The changes over the doublings before the last (``eval.verdict_doublings`` > 1), if judged."""
    k, parts = 2, []
    while isinstance(verdict.get(verdict_key("verdict_change", k)), int | float):
        parts.append(_fmt(verdict[verdict_key("verdict_change", k)]))
        k += 1
    if not parts:
        return ""
    before = "the doubling before" if len(parts) == 1 else f"the {len(parts)} doublings before"
    return f"; {before}: Δ {', '.join(parts)}"


def _verdict(arm: Arm) -> str:
    return _arm_verdict(arm)[1]


def _mark(text: str, mark: str | None) -> str:
    return f"**{text}**" if mark == MARK_BEST else f"{text} ≈" if mark == MARK_TIE else text


def headline_table(
    group: Group,
    metrics: Sequence[str],
    comps: Mapping[str, GroupComparison | None],
    spec: ReportSpec,
    seed_keys: Sequence[str],
) -> list[str]:
    """Markdown rows: candidate arms, then reference rows (extras, and ``floor`` from ``<m>_floor``)."""
    header = ["arm", *metrics, "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    marks = {m: group_marks(comps.get(m)) for m in metrics}
    for arm in candidates(group, spec):
        cells = [f"`{arm.name}`"]
        cells += [_mark(arm_cell(arm, m, spec, seed_keys), marks[m].get(arm.name)) for m in metrics]
        lines.append("| " + " | ".join([*cells, _verdict(arm)]) + " |")
    for arm in group.arms:
        if arm in candidates(group, spec):
            continue
        cells = [f"{arm.name} (reference)"] + [arm_cell(arm, m, spec, seed_keys) for m in metrics]
        lines.append("| " + " | ".join([*cells, DASH]) + " |")
    floors = {m: _mean([a.value(spec.floor_of(m)) for a in group.arms]) for m in metrics}
    if any(v is not None for v in floors.values()):
        cells = ["floor (the metric on true data)"] + [
            DASH if floors[m] is None else _fmt(floors[m]) for m in metrics
        ]
        lines.append("| " + " | ".join([*cells, DASH]) + " |")
    return lines


def _mean(vals: Sequence[float | None]) -> float | None:
    got = [v for v in vals if v is not None]
    return sum(got) / len(got) if got else None


def _unit(metric: str, spec: ReportSpec) -> str:
    return f" {spec.units[metric]}" if metric in spec.units else ""


def coverage_sentence(comps: Mapping[str, GroupComparison | None]) -> str:
    """Which noise the intervals cover: evaluation noise only (per-point, one seed) or seed variance too."""
    done = {m: c for m, c in comps.items() if c is not None}
    if not done:
        return (
            "No metric could be tested (one seed per arm and no per-point values): the values below are "
            "single runs and no difference between them is claimed."
        )
    alpha = next(iter(done.values())).alpha
    parts = []
    for unit in ("points", "seeds"):
        names = [m for m, c in done.items() if c.unit == unit]
        if not names:
            continue
        n = min(done[m].n for m in names)
        if unit == "points":
            parts.append(
                f"{', '.join(names)}: paired per-point differences on {n} shared held-out points "
                "(same points and t/ε draws, one seed per arm), so the intervals cover evaluation "
                "noise only, not training-seed variance"
            )
        else:
            parts.append(
                f"{', '.join(names)}: paired by training seed over {n} seeds, so the intervals cover "
                "seed variance and evaluation noise"
            )
    untested = [m for m, c in comps.items() if c is None]
    tail = f"; not ranked: {', '.join(untested)}" if untested else ""
    return (
        "Each arm is tested against the best (paired; a tie when the Holm-adjusted p over the group's "
        f"comparisons is at least {alpha:g}; ± is the unadjusted {1 - alpha:.0%} interval of the "
        "difference): " + "; ".join(parts) + tail + "."
    )


def metric_sentence(metric: str, comp: GroupComparison, spec: ReportSpec, group: Group) -> str:
    """E.g. "KL: eps, v and score are tied (...); x0 is worse by 0.74 ± 0.05 nats"."""
    unit = _unit(metric, spec)
    best = f"`{comp.best}` ({_fmt(comp.means[comp.best])}{unit})"
    worse = [
        f"`{a}` by {_fmt(abs(comp.intervals[a].diff))} ± {_pm(comp.intervals[a].half_width)}{unit}"
        for a in comp.worse
    ]
    if comp.significant:
        head = f"**{metric}**: {best} is best, significantly better than every other arm"
    else:
        tied = ", ".join(
            f"`{a}` (Δ {_signed(comp.intervals[a].diff)} ± {_pm(comp.intervals[a].half_width)})"
            for a in comp.tied
        )
        head = (
            f"**{metric}**: the best, {best}, is tied with {tied} (Holm-adjusted p ≥ {comp.alpha:g} for "
            f"each; ± is the unadjusted {1 - comp.alpha:.0%} interval of the difference)"
        )
    head += f"; worse: {', '.join(worse)}" if worse else ""
    left_out = [
        a.name for a in candidates(group, spec) if a.name not in comp.intervals and a.name != comp.best
    ]
    return head + (
        f"; not compared (too few seeds or values): {', '.join(f'`{a}`' for a in left_out)}."
        if left_out
        else "."
    )


def _signed(x: float) -> str:
    return ("+" if x >= 0 else "−") + _fmt(abs(x))


def sampler_sentence(group: Group, metric: str, spec: ReportSpec, comp: GroupComparison | None) -> str | None:
    """The sample metric beside its floor and the oracle through the same sampler: how much is the model's."""
    floor = _mean([a.value(spec.floor_of(metric)) for a in group.arms])
    oracle_arm = next((a for a in group.arms if a.reference and a.name.startswith(spec.oracle_label)), None)
    oracle = oracle_arm.value(metric) if oracle_arm is not None else None
    vals = {a.name: a.value(metric) for a in candidates(group, spec) if a.value(metric) is not None}
    if floor is None or not vals:
        return None
    sign = -1.0 if spec.directions.get(metric, "min") == "max" else 1.0
    best_name = str(comp.best) if comp is not None else min(vals, key=lambda a: sign * vals[a])
    best = vals[best_name]
    unranked = comp is None and sign * (best - floor) < 0
    text = f"**{metric}** beside its floor: {_fmt(floor)} (`{spec.floor_of(metric)}`: on true data)"
    samplers = {a.name: a.text("sampler") for a in group.arms}
    if oracle is not None:
        text += f", oracle {_fmt(oracle)}" + (
            f" (sampler {samplers[oracle_arm.name]})" if samplers[oracle_arm.name] else ""
        )
    text += f", best arm `{best_name}` {_fmt(best)}" + (
        f" (sampler {samplers[best_name]})" if samplers.get(best_name) else ""
    )
    same = samplers.get(best_name) == (samplers[oracle_arm.name] if oracle_arm is not None else None)
    if oracle is not None and sign * (oracle - floor) <= 0:
        text += "; the oracle reaches the floor, so the sampler's own error is not measurable here"
    elif oracle is not None and same and sign * (best - floor) > 0:
        share = (oracle - floor) / (best - floor)
        text += (
            f": the sampler alone accounts for {100 * share:.0f}% of the best arm's distance from the floor"
        )
    past = [a for a, v in vals.items() if sign * (v - floor) < 0]
    if 2 * len(past) > len(vals):
        text += (
            f"; {len(past)} of {len(vals)} arms are past the floor: at this sample size the measure does not "
            "separate them from true samples"
        )
    elif past:
        names = ", ".join(f"`{a}` ({_fmt(vals[a])})" for a in past)
        why = (
            "evaluation noise or a bias of the measure (a KDE measure rewards samples more concentrated "
            "than the data)"
            if "kde" in metric
            else "evaluation noise or a bias of the measure"
        )
        text += f"; past the floor: {names}, better than true samples, which no model can be: {why}"
        text += ", not a better fit"
    if unranked:
        text += f"; so **{metric}** ranks no arm here (no best is marked)"
    return text + "."


def verdict_sentence(group: Group, spec: ReportSpec) -> str:
    arms = candidates(group, spec)
    verdicts = {a.name: _arm_verdict(a)[0] for a in arms}
    if all(v is None for v in verdicts.values()):
        return (
            "No convergence verdicts recorded (no learning curves): every ranking above holds at the "
            "trained budget only."
        )
    open_ = [n for n, v in verdicts.items() if v in (NOT_CONVERGED, GETTING_WORSE)]
    missing = [n for n, v in verdicts.items() if v is None or v == "no curve"]
    text = []
    if open_:
        text.append(
            f"Not converged ({NOT_CONVERGED!r} or {GETTING_WORSE!r}; for several seeds, the verdict of the "
            f"mean change): {', '.join(f'`{n}`' for n in open_)}; a ranking that "
            "involves them is a statement about this training budget, not about the objective."
        )
    elif len(missing) < len(verdicts):
        text.append("Every arm with a learning curve converged.")
    if missing:
        text.append(f"No verdict: {', '.join(f'`{n}`' for n in missing)}.")
    return " ".join(text)


def group_section(group: Group, spec: ReportSpec, seed_keys: Sequence[str], level: int) -> list[str]:
    metrics = headline_metrics(group, spec)
    comps = {m: compare_group(group, m, spec, seed_keys) for m in metrics}
    lines = [f"{'#' * level} {group.title}", "", *headline_table(group, metrics, comps, spec, seed_keys), ""]
    lines += ["Conclusions:", "", f"- {coverage_sentence(comps)}"]
    for m in metrics:
        if comps[m] is not None:
            lines.append(f"- {metric_sentence(m, comps[m], spec, group)}")
        sentence = sampler_sentence(group, m, spec, comps[m])
        if sentence:
            lines.append(f"- {sentence}")
    return [*lines, f"- {verdict_sentence(group, spec)}", ""]


def answer_section(
    rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], spec: ReportSpec
) -> list[str]:
    """``## Answer``: one headline table and its conclusions per comparison group (empty without headline)."""
    if not spec.headline or not rows:
        return []
    seed_keys = [k for k in axes_keys if is_seed_key(k)]
    within = [k for k in spec.compare_within if k in axes_keys]
    lines = [
        "## Answer",
        "",
        f"One table per comparison group ({' × '.join(f'`{k}`' for k in within) or 'the whole study'}). "
        "± is a 95% interval of the arm's own value; **bold**: the best arm, significantly better than "
        "every other arm of its group; ≈: the best and every arm not significantly different from it "
        f"(paired test of the difference, Holm-adjusted p ≥ {1 - LEVEL:g} over the group); no mark: "
        "not testable. Floors, reference rows and constant columns are never best, nor is any arm on a "
        "sample metric whose best value is past its floor (better than true samples).",
        "",
    ]
    for group in comparison_groups(rows, axes_keys, spec):
        lines += group_section(group, spec, seed_keys, 3)
    return lines
