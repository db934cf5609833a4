"""What a run kind shows in a study's report (:class:`ReportSpec`), kept apart from the writer so that the
comparison and headline modules can read it without an import cycle."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

NON_METRIC_KEYS = frozenset({"run_id", "label", "status", "seconds", "steps", "error"})


def metric_names(rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str]) -> list[str]:
    """Sorted keys that hold a number in at least one row and are neither axes nor bookkeeping."""
    skip = NON_METRIC_KEYS | set(axes_keys)
    names = {k for r in rows for k, v in r.items() if k not in skip and isinstance(v, int | float)}
    return sorted(k for k in names if not all(isinstance(r.get(k), bool) for r in rows if k in r))


@dataclass(frozen=True)
class ReportSpec:
    """What a run kind shows in a study's report.

    Full table (the appendix): listed ``metrics`` first (in order), then any other numeric metric the rows
    hold (sorted), so that no metric silently vanishes from ``report.md``; ``terminal``: the columns of the
    plain table printed at the end; ``directions``: metric -> "min" (default) | "max".

    Comparisons (issue 10): arms are compared within groups of equal ``compare_within`` axis values (e.g.
    ``("data.name",)``: per data set; keys that are not axes of the study are ignored, so a study with one
    data set is one group). ``headline``: the headline table's metrics, at most 6; an entry ``"a|b"`` takes
    the first of a, b that the group has. ``se_of``: metric -> column of its standard error (for the ± of a
    single run). ``units``: metric -> unit written in the conclusions. ``unranked``: metrics that are never
    "best" besides the automatic ones (``*_floor``, ``*_se``, ``n_*``, ``verdict*`` and columns constant
    across the candidate rows). ``pointwise``: run_id -> metric -> per-point values whose mean is the metric
    (same points and draws across arms), for paired per-point intervals when there is one seed.
    ``oracle_label``: the extra row (the first whose label starts with it) shown beside the sample metric.
    ``reference_labels``: label prefixes of the extra rows that are references (floors, oracles), never
    "best"; None (default): every extra row is a reference unless ``best_among_extras``. ``floors``: metric ->
    its floor column where that is not ``<metric>_floor`` (e.g. ``fid_same_n`` -> ``fid_floor``).
    """

    metrics: tuple[str, ...] = ()
    terminal: tuple[str, ...] = ()
    directions: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    best_among_extras: bool = False
    compare_within: tuple[str, ...] = ("data.name",)
    headline: tuple[str, ...] = ()
    se_of: Mapping[str, str] = field(default_factory=dict)
    units: Mapping[str, str] = field(default_factory=dict)
    unranked: tuple[str, ...] = ()
    pointwise: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    oracle_label: str = "oracle"
    floors: Mapping[str, str] = field(default_factory=dict)
    reference_labels: tuple[str, ...] | None = None

    def is_reference(self, label: str | None) -> bool:
        """Whether rows with this ``label`` are references, not candidates for "best"."""
        if not label:
            return False
        if self.reference_labels is None:
            return not self.best_among_extras
        return label.startswith(self.reference_labels)

    def floor_of(self, metric: str) -> str:
        return self.floors.get(metric, f"{metric}_floor")

    def __post_init__(self) -> None:
        if len(self.headline) > 6:
            raise ValueError(f"a headline table shows at most 6 metrics, got {len(self.headline)}")

    def columns(self, rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str]) -> list[str]:
        """Listed metrics present in ``rows``, then every other numeric metric of ``rows``."""
        listed = [m for m in self.metrics if any(m in r for r in rows)]
        return listed + [m for m in metric_names(rows, axes_keys) if m not in listed]
