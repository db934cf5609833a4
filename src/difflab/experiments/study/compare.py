"""Comparison groups of a results table and the paired comparisons within them.

A *group* holds the rows of equal :attr:`ReportSpec.compare_within` values; an *arm* the rows of a group
that differ only in their seed axes (as in the report's table). Per metric, the group's arms are paired by
seed when every candidate arm has at least 2 seeds (intervals then cover seed variance too), else by test
point through :attr:`ReportSpec.pointwise` (one seed: evaluation noise only), else not compared; see
:mod:`difflab.experiments.study.stats` for the intervals and Holm's correction.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from difflab.experiments.study.plan import is_seed_key
from difflab.experiments.study.reportspec import ReportSpec
from difflab.experiments.study.stats import GroupComparison, compare_arms

MARK_BEST, MARK_TIE = "best", "tie"


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def table_keys(rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str]) -> list[str]:
    """The keys that tell arms apart: ``label`` (when there are extras), then every non-seed axis."""
    keys = [k for k in axes_keys if not is_seed_key(k)]
    return ["label", *keys] if any(r.get("label") for r in rows) else keys


def identity(row: Mapping[str, Any], keys: Sequence[str]) -> tuple:
    """An arm's identity: its values of :func:`table_keys` (the report table's grouping)."""
    return tuple((k, hashable(row.get(k))) for k in keys)


@dataclass
class Arm:
    """The runs of one arm in one group: display ``name``, ``reference`` (an extra row such as the oracle,
    not a candidate for best unless the spec says so), identity and rows (one per seed)."""

    name: str
    ident: tuple
    reference: bool
    rows: list[Mapping[str, Any]] = field(default_factory=list)

    def seed_values(self, metric: str, seed_keys: Sequence[str]) -> dict[Hashable, float]:
        """Finite values of ``metric`` by seed (the tuple of the row's seed-axis values)."""
        out = {}
        for row in self.rows:
            if finite(row.get(metric)):
                out[tuple(hashable(row.get(k)) for k in seed_keys)] = float(row[metric])
        return out

    def value(self, metric: str) -> float | None:
        vals = [float(r[metric]) for r in self.rows if finite(r.get(metric))]
        return sum(vals) / len(vals) if vals else None

    def text(self, key: str) -> str | None:
        """A string result (e.g. ``verdict``): the one value, or counts such as ``"2/3 converged"``."""
        vals = [str(r[key]) for r in self.rows if isinstance(r.get(key), str) and r.get(key)]
        if not vals:
            return None
        if len(set(vals)) == 1:
            return vals[0]
        return ", ".join(f"{vals.count(v)}/{len(vals)} {v}" for v in sorted(set(vals)))


@dataclass
class Group:
    """One comparison group: its ``compare_within`` values and arms (table order)."""

    values: dict[str, Any]
    arms: list[Arm]

    @property
    def title(self) -> str:
        return " × ".join(f"{v}" for v in self.values.values()) or "all runs"


def comparison_groups(
    rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], spec: ReportSpec
) -> list[Group]:
    """Rows split by their ``spec.compare_within`` values (keys that are study axes), each split into arms;
    extra rows are references by :meth:`ReportSpec.is_reference`."""
    keys = table_keys(rows, axes_keys)
    within = [k for k in spec.compare_within if k in axes_keys]
    arm_keys = [k for k in keys if k not in within and k != "label"]
    groups: dict[tuple, Group] = {}
    # an extra with axes of its own (e.g. label "vp" over two weightings) has several arms: name them
    # label / axis values; an extra with one arm keeps its label alone
    idents_of: dict[tuple, set] = {}  # (group, label) -> the arms' identities
    for row in rows:
        gkey = tuple(hashable(row.get(k)) for k in within)
        idents_of.setdefault((gkey, row.get("label") or ""), set()).add(identity(row, keys))
    for row in rows:
        gkey = tuple(hashable(row.get(k)) for k in within)
        group = groups.setdefault(gkey, Group({k: row.get(k) for k in within}, []))
        ident = identity(row, keys)
        arm = next((a for a in group.arms if a.ident == ident), None)
        if arm is None:
            label = row.get("label") or ""
            parts = [str(row[k]) for k in arm_keys if row.get(k) is not None]
            own = parts if not label or len(idents_of[gkey, label]) > 1 else []
            name = " / ".join(([label] if label else []) + own) or str(row["run_id"])
            arm = Arm(name, ident, spec.is_reference(label))
            group.arms.append(arm)
        arm.rows.append(row)
    return list(groups.values())


def is_ranked(metric: str, spec: ReportSpec, rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``metric`` can have a best row: not a floor, an s.e., a count, a verdict, listed in
    ``spec.unranked``, or constant over ``rows`` (e.g. ``nll_true``, the same data law for every arm)."""
    if metric in spec.unranked or metric.endswith(("_floor", "_se")) or metric.startswith(("n_", "verdict")):
        return False
    vals = {float(r[metric]) for r in rows if finite(r.get(metric))}
    return len(vals) > 1


def candidates(group: Group, spec: ReportSpec) -> list[Arm]:
    """The arms that may be "best": every arm but the references."""
    return [a for a in group.arms if not a.reference]


def floor_value(group: Group, metric: str, spec: ReportSpec) -> float | None:
    """The group's mean of ``metric``'s floor column (the metric on fresh true samples), or None."""
    vals = [v for v in (a.value(spec.floor_of(metric)) for a in group.arms) if v is not None]
    return sum(vals) / len(vals) if vals else None


def past_floor(value: float, floor: float, direction: str) -> bool:
    """Whether ``value`` is better than the floor: better than true samples, which no model can be."""
    return (floor - value if direction == "max" else value - floor) < 0


def compare_group(
    group: Group, metric: str, spec: ReportSpec, seed_keys: Sequence[str]
) -> GroupComparison | None:
    """Best candidate arm and ties for one metric (module docstring), or None if it cannot be tested. With
    seeds, only the arms with at least 2 seeds take part (the others are left out of the comparison).

    None also for a metric with a floor whose best arm is past it (:func:`past_floor`): there the ranking
    measures evaluation noise or a bias of the measure (a KDE measure rewards samples more concentrated
    than the data), so no arm is called best."""
    comparison = _compare_group(group, metric, spec, seed_keys)
    floor = floor_value(group, metric, spec)
    if comparison is None or floor is None:
        return comparison
    best = comparison.means[comparison.best]
    return None if past_floor(best, floor, spec.directions.get(metric, "min")) else comparison


def _compare_group(
    group: Group, metric: str, spec: ReportSpec, seed_keys: Sequence[str]
) -> GroupComparison | None:
    arms = candidates(group, spec)
    rows = [r for a in arms for r in a.rows]
    if len(arms) < 2 or not is_ranked(metric, spec, rows):
        return None
    direction = spec.directions.get(metric, "min")
    by_seed = {a.name: a.seed_values(metric, seed_keys) for a in arms}
    if any(len(v) >= 2 for v in by_seed.values()):  # arms with fewer seeds stay untested
        return compare_arms({a: v for a, v in by_seed.items() if len(v) >= 2}, metric, direction, "seeds")
    points = {}
    for arm in arms:
        arrays = [spec.pointwise.get(r["run_id"], {}).get(metric) for r in arm.rows]
        if len(arm.rows) != 1 or arrays[0] is None:
            return None
        points[arm.name] = dict(enumerate(float(x) for x in arrays[0]))
    if len({len(v) for v in points.values()}) != 1:  # not the same points: no pairing
        return None
    return compare_arms(points, metric, direction, "points")


def group_marks(comparison: GroupComparison | None) -> dict[str, str]:
    """Arm name -> "best" (significant best: bold) or "tie" (the best and the arms tied with it)."""
    if comparison is None:
        return {}
    if comparison.significant:
        return {str(comparison.best): MARK_BEST}
    return {str(a): MARK_TIE for a in [comparison.best, *comparison.tied]}


def table_marks(
    rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str], metrics: Sequence[str], spec: ReportSpec
) -> dict[str, dict[tuple, str]]:
    """metric -> arm identity -> mark, over every comparison group, for the full table."""
    seed_keys = [k for k in axes_keys if is_seed_key(k)]
    out: dict[str, dict[tuple, str]] = {}
    for group in comparison_groups(rows, axes_keys, spec):
        by_name = {a.name: a.ident for a in group.arms}
        for metric in metrics:
            for name, mark in group_marks(compare_group(group, metric, spec, seed_keys)).items():
                out.setdefault(metric, {})[by_name[name]] = mark
    return out
