"""Study reports: the answer first (per comparison group, a headline table and conclusions from paired
comparisons, :mod:`difflab.experiments.study.headline`), then figures, notes and settings, then the full
table of every metric as an appendix (mean ± std over seeds, significant bests in bold, ties marked).

A row is a flat dict as written to ``results.csv`` by :mod:`difflab.experiments.study.engine`: ``run_id``,
optionally ``label`` (non-empty for extra runs such as the oracle), one value per axis key, ``status``,
metric values, ``seconds``, ``steps`` and ``error``. Rows are grouped by every axis except seed-like ones
(``seed``, ``*.seed``); each metric cell is the mean ± sample standard deviation (ddof = 1) over the finite
values of the group, with the count stated where it is smaller than the group's size. A cell is bold only
where its arm is significantly the best of its comparison group (:mod:`difflab.experiments.study.compare`),
and marked ``≈`` where it is the best or tied with it; floors, s.e.s, counts and constant columns never are.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from difflab.experiments.study.compare import MARK_BEST, identity, table_keys, table_marks
from difflab.experiments.study.headline import answer_section
from difflab.experiments.study.plan import is_seed_key
from difflab.experiments.study.reportspec import NON_METRIC_KEYS, ReportSpec, metric_names
from difflab.experiments.study.stats import LEVEL

__all__ = ["NON_METRIC_KEYS", "ReportSpec", "finish_study", "format_table", "metric_names", "summarise"]

DIRECTIONS = ("min", "max")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Group:
    """Runs that differ only in their seed: key values, run count, statuses and per-metric statistics."""

    key: dict[str, Any]
    n: int = 0
    statuses: Counter = field(default_factory=Counter)
    values: dict[str, list[float]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)

    def stats(self, metric: str) -> tuple[float, float, int] | None:
        """(mean, sample std or NaN for one value, count) over the finite values, or None."""
        vals = self.values.get(metric, [])
        if not vals:
            return None
        std = statistics.stdev(vals) if len(vals) > 1 else math.nan
        return statistics.fmean(vals), std, len(vals)

    def status_summary(self) -> str:
        """E.g. ``"3/3 finished"`` or ``"2/3 finished, 1/3 diverged"``."""
        order = sorted(self.statuses, key=lambda s: (s != "finished", s))
        return ", ".join(f"{self.statuses[s]}/{self.n} {s}" for s in order)


@dataclass
class Summary:
    """Grouped view of a results table. ``best[metric]``: group indices that are significantly the best of
    their comparison group; ``ties[metric]``: the best and the groups tied with it where none is."""

    group_keys: list[str]
    seed_keys: list[str]
    metrics: list[str]
    directions: dict[str, str]
    groups: list[Group]
    best: dict[str, set[int]]
    ties: dict[str, set[int]] = field(default_factory=dict)


def summarise(
    rows: Sequence[Mapping[str, Any]],
    axes_keys: Sequence[str],
    metric_specs: Mapping[str, str] | None = None,
    *,
    metrics: Sequence[str] | None = None,
    best_among_extras: bool = False,
    spec: ReportSpec | None = None,
) -> Summary:
    """Group rows over seeds and mark, per metric, the significant best and the ties of each comparison
    group (:func:`difflab.experiments.study.compare.table_marks`).

    Args:
        rows: results rows.
        axes_keys: the study's axis keys; seed-like ones are averaged over, the rest group.
        metric_specs: metric -> "min" (lower is better, the default) or "max".
        metrics: metric columns in order (default: every numeric metric, sorted).
        best_among_extras: whether groups with a non-empty ``label`` (extras such as an oracle, which are
            references) may be marked best.
        spec: comparison groups, unranked metrics and per-point values (default: one group, no per-point
            values, ``metric_specs`` and ``best_among_extras`` as given).
    """
    specs = dict(metric_specs or {})
    for name, direction in specs.items():
        if direction not in DIRECTIONS:
            raise ValueError(f"metric {name!r}: direction must be 'min' or 'max', got {direction!r}")
    spec = replace(
        spec or ReportSpec(compare_within=()), directions=specs, best_among_extras=best_among_extras
    )
    seed_keys = [k for k in axes_keys if is_seed_key(k)]
    group_keys = table_keys(rows, axes_keys)
    names = list(metrics) if metrics is not None else metric_names(rows, axes_keys)
    groups: dict[tuple, Group] = {}
    for row in rows:
        group = groups.setdefault(identity(row, group_keys), Group({k: row.get(k) for k in group_keys}))
        group.n += 1
        group.statuses[str(row.get("status", "unknown"))] += 1
        for name in names:
            if _finite(row.get(name)):
                group.values.setdefault(name, []).append(float(row[name]))
        if _finite(row.get("seconds")):
            group.seconds.append(float(row["seconds"]))
    index = {ident: i for i, ident in enumerate(groups)}
    best: dict[str, set[int]] = {}
    ties: dict[str, set[int]] = {}
    for name, marks in table_marks(rows, axes_keys, names, spec).items():
        for ident, mark in marks.items():
            (best if mark == MARK_BEST else ties).setdefault(name, set()).add(index[ident])
    directions = {name: specs.get(name, "min") for name in names}
    return Summary(group_keys, seed_keys, names, directions, list(groups.values()), best, ties)


def format_value(mean: float, std: float, count: int, n: int) -> str:
    """``mean ± std`` (4 and 2 significant digits), ``(n=k)`` when only k of the n runs have a value."""
    text = f"{mean:.4g}" if math.isnan(std) else f"{mean:.4g} ± {std:.2g}"
    return text if count == n else f"{text} (n={count})"


def _cells(summary: Summary, bold: tuple[str, str]) -> tuple[list[str], list[list[str]]]:
    """Header and body of the table; ``bold`` wraps a significant best, `` ≈`` follows a tie."""
    arrows = {"min": "↓", "max": "↑"}
    header = [*summary.group_keys, "n", "status"]
    header += [f"{m} {arrows[summary.directions[m]]}" for m in summary.metrics] + ["seconds"]
    body = []
    for i, group in enumerate(summary.groups):
        cells = ["" if group.key[k] is None else str(group.key[k]) for k in summary.group_keys]
        cells += [str(group.n), group.status_summary()]
        for name in summary.metrics:
            st = group.stats(name)
            if st is None:
                cells.append("–")
                continue
            mean, std, count = st
            text = format_value(mean, std, count, count)
            if i in summary.best.get(name, ()):
                text = f"{bold[0]}{text}{bold[1]}"
            elif i in summary.ties.get(name, ()):
                text = f"{text} ≈"
            cells.append(text if count == group.n else f"{text} (n={count})")
        cells.append(f"{statistics.fmean(group.seconds):.1f}" if group.seconds else "–")
        body.append(cells)
    return header, body


def _render(header: list[str], body: list[list[str]], markdown: bool) -> str:
    widths = [max(len(row[j]) for row in [header, *body]) for j in range(len(header))]
    if markdown:

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|").ljust(w) for c, w in zip(cells, widths)) + " |"

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(header), rule, *(line(r) for r in body)])
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(
    rows: Sequence[Mapping[str, Any]],
    axes_keys: Sequence[str],
    metric_specs: Mapping[str, str] | None = None,
    *,
    metrics: Sequence[str] | None = None,
    style: str = "markdown",
    best_among_extras: bool = False,
    spec: ReportSpec | None = None,
) -> str:
    """The grouped table as text: ``style="markdown"`` (a significant best in ``**bold**``) or ``"plain"``
    (``*``); ties with the best (and the best where it is not significant) end in `` ≈``.

    Columns: non-seed axes (and ``label`` when there are extras), n, status summary, one column per metric
    (↓ lower is better, ↑ higher), mean seconds per run. ``spec``: as in :func:`summarise`.
    """
    if style not in ("markdown", "plain"):
        raise ValueError(f"style must be 'markdown' or 'plain', got {style!r}")
    summary = summarise(
        rows, axes_keys, metric_specs, metrics=metrics, best_among_extras=best_among_extras, spec=spec
    )
    markdown = style == "markdown"
    header, body = _cells(summary, ("**", "**") if markdown else ("", " *"))
    return _render(header, body, markdown)


def _fmt_setting(value: Any) -> str:
    return (
        f'"{value}"'
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def _header(title: str, description: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    statuses = Counter(str(r.get("status")) for r in rows)
    lines = [f"# Study: {title}", ""]
    if description:
        lines += [description, ""]
    return [
        *lines,
        f"- Date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Runs: {len(rows)} ({', '.join(f'{c} {s}' for s, c in sorted(statuses.items()))})",
        "",
    ]


def _settings(settings: Mapping[str, Any] | None) -> list[str]:
    if not settings:
        return []
    return ["## Settings", ""] + [f"- `{k}` = {_fmt_setting(v)}" for k, v in settings.items()] + [""]


def _axes(rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str]) -> list[str]:
    if not axes_keys:
        return []
    lines = ["## Axes", ""]
    for key in axes_keys:
        seen: list[Any] = []
        for r in rows:
            if r.get(key) is not None and r.get(key) not in seen:
                seen.append(r.get(key))
        lines.append(f"- `{key}`: {', '.join(_fmt_setting(v) for v in seen)}")
    return [*lines, ""]


def _notes(notes: Sequence[str]) -> list[str]:
    return ["## Notes", ""] + [f"- {note}" for note in notes] + [""] if notes else []


def _errors(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    errors = [r for r in rows if r.get("error")]
    if not errors:
        return []
    lines = ["## Errors", ""]
    return lines + [f"- `{r['run_id']}`: {str(r['error']).splitlines()[0][:300]}" for r in errors] + [""]


def _figures(figures: Sequence[str | os.PathLike[str]], out: Path) -> list[str]:
    if not figures:
        return []
    lines = ["## Figures", ""]
    for fig in figures:
        rel = os.path.relpath(fig, out) if os.path.isabs(fig) else os.fspath(fig)
        lines += [f"![{Path(rel).stem}]({rel})", ""]
    return lines


def _results_section(
    rows: Sequence[Mapping[str, Any]],
    axes_keys: Sequence[str],
    spec: ReportSpec,
    seed_keys: Sequence[str],
    metrics: Sequence[str] | None,
    best_among_extras: bool,
) -> list[str]:
    """The full table (the appendix when the report has a headline) with its legend."""
    over = ", ".join(f"`{k}`" for k in seed_keys) or "runs"
    table = format_table(
        rows, axes_keys, spec.directions, metrics=metrics, best_among_extras=best_among_extras, spec=spec
    )
    title_line = "## Appendix: every metric" if spec.headline else "## Results"
    results = [
        title_line,
        "",
        f"Mean ± sample standard deviation (ddof = 1) over {over}; n = runs per row, `(n=k)` where only k "
        "have a finite value. ↓ lower is better, ↑ higher is better. **Bold**: significantly the best of its "
        "comparison group; ≈: the best or not significantly different from it (paired test, Holm-adjusted "
        f"p ≥ {1 - LEVEL:g}; as in the answer above); no mark: not testable (one seed and no per-point "
        "values) or never ranked (floors, s.e.s, counts, constant columns"
        + ("" if best_among_extras else ", extra/reference rows")
        + "). Seconds: mean wall time per run.",
        "",
        table,
        "",
    ]
    return results


def write_report(
    rows: Sequence[Mapping[str, Any]],
    axes_keys: Sequence[str],
    out_dir: str | os.PathLike[str],
    metric_specs: Mapping[str, str] | None = None,
    *,
    title: str = "study",
    description: str = "",
    settings: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    metrics: Sequence[str] | None = None,
    figures: Sequence[str | os.PathLike[str]] = (),
    best_among_extras: bool = False,
    filename: str = "report.md",
    sections: Sequence[str] = (),
    spec: ReportSpec | None = None,
) -> Path:
    """Write ``out_dir/report.md``: header (study, date, runs), the answer (headline tables and conclusions
    per comparison group, when ``spec.headline`` is set), figures, notes, settings, axes, the full table as
    an appendix, errors, then any extra ``sections`` (markdown text; a section whose first line is a
    ``## Answer`` heading is the kind's own answer and comes first, right after the header). Written
    atomically; returns its path.

    ``metric_specs`` maps metric -> "min" | "max" (default "min"); ``metrics`` gives the columns in order
    (default: every numeric metric, sorted); ``best_among_extras`` lets extra runs (non-empty label) be
    marked best; ``spec`` gives comparison groups, headline and per-point values (:class:`ReportSpec`).
    """
    out = Path(out_dir)
    spec = replace(spec or ReportSpec(compare_within=()), directions=dict(metric_specs or {}))
    spec = replace(spec, best_among_extras=best_among_extras)
    summary = summarise(
        rows, axes_keys, spec.directions, metrics=metrics, best_among_extras=best_among_extras, spec=spec
    )
    results = _results_section(rows, axes_keys, spec, summary.seed_keys, metrics, best_among_extras)
    lead = [s for s in sections if s.startswith("## Answer")]
    tail = [s for s in sections if not s.startswith("## Answer")]
    lines = _header(title, description, rows) + lead + answer_section(rows, axes_keys, spec)
    lines += _figures(figures, out) + _notes(notes) + _settings(settings) + _axes(rows, axes_keys)
    lines += results + _errors(rows)
    text = "\n".join(lines) + ("\n" + "\n".join(tail) if tail else "")
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    tmp = path.with_name(f"{filename}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def copy_note(rows: Sequence[Mapping[str, Any]], shown: int = 6) -> list[str]:
    """The report's note on runs that hold a copy of another run's result (``copy_of``), if any."""
    pairs = [(str(r["run_id"]), str(r["copy_of"])) for r in rows if r.get("copy_of")]
    if not pairs:
        return []
    listed = ", ".join(f"{a} = {b}" for a, b in pairs[:shown]) + (", …" if len(pairs) > shown else "")
    were = "run was" if len(pairs) == 1 else "runs were"
    return [
        f"{len(pairs)} {were} not trained: each computes exactly what an earlier run computes (the same loss"
        " at every training time, on the same target, data, seeds and settings), so it holds a copy of that"
        f" run's result and ties with it exactly: {listed}."
    ]


def finish_study(
    study: Any,
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    spec: ReportSpec,
    figures: Sequence[str | os.PathLike[str]] = (),
    sections: Sequence[str] = (),
) -> str:
    """Write ``report.md`` (once) and return the terminal table with the paths of results and report."""
    out = os.fspath(out_dir)
    axes_keys = list(study.axes_keys)
    rel = [os.path.relpath(f, out) if os.path.isabs(f) else os.fspath(f) for f in figures]
    write_report(
        rows,
        axes_keys,
        out,
        spec.directions,
        title=study.name,
        description=study.description,
        settings=study.fixed,
        notes=[*spec.notes, *copy_note(rows)],
        metrics=spec.columns(rows, axes_keys),
        figures=rel,
        best_among_extras=spec.best_among_extras,
        sections=sections,
        spec=spec,
    )
    terminal = [m for m in spec.terminal if any(m in r for r in rows)]
    table = format_table(
        rows,
        axes_keys,
        spec.directions,
        metrics=terminal,
        style="plain",
        best_among_extras=spec.best_among_extras,
        spec=spec,
    )
    return (
        f"{table}\n\nresults: {os.path.join(out, 'results.csv')}\nreport:  {os.path.join(out, 'report.md')}"
    )
