"""Result tables of a study: one flat row per run from its ``result.json``, and the CSV columns."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflab.experiments.common.rundir import read_json
from difflab.experiments.study.plan import get_dotted
from difflab.experiments.study.spec import RunSpec, Study

DONE_STATUSES = frozenset({"finished", "diverged"})


@dataclass(frozen=True)
class StudyResult:
    """Rows of the results table (one per run, in expansion order) and where they were written.

    ``ran``: runs this call attempted; ``skipped``: already done; ``failed``: run id -> result.json of each
    run this call attempted that neither finished nor diverged; ``busy``: run id -> owner of the runs another
    live worker holds; ``missing``: runs with no result yet that this call did not attempt (other shards);
    ``copied``: run id -> the run whose result this call copied to it (the same computation)."""

    rows: list[dict[str, Any]]
    out_dir: str
    axes_keys: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)
    busy: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    copied: dict[str, str] = field(default_factory=dict)


def read_record(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A run's ``result.json`` as a dict, or None if it is missing or unreadable."""
    record = read_json(Path(run_dir) / "result.json")
    return record if isinstance(record, dict) else None


def gather_rows(study: Study, specs: Sequence[RunSpec], runs_dir: str | os.PathLike[str]) -> list[dict]:
    """One flat row per run from its result.json: run_id, [label], axis values, status, metrics, seconds."""
    has_label = bool(study.extras)
    rows = []
    for spec in specs:
        record = read_record(Path(runs_dir) / spec.run_id) or {"status": "pending", "metrics": {}}
        row: dict[str, Any] = {"run_id": spec.run_id}
        if has_label:
            row["label"] = spec.label
        for key in study.axes_keys:
            row[key] = get_dotted(spec.config, key)
        row["status"] = record.get("status", "pending")
        metrics = record.get("metrics") or {}
        for key, value in metrics.items():
            if value is None or isinstance(value, bool | int | float | str):
                row.setdefault(key, value)
        row["seconds"] = record.get("seconds")
        row["steps"] = record.get("steps")
        if record.get("error"):
            row["error"] = record["error"]
        if record.get("copy_of"):
            row["copy_of"] = record["copy_of"]
        rows.append(row)
    return rows


def result_columns(rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str]) -> list[str]:
    """CSV columns: run_id, [label], axes, status, metrics (sorted union), seconds, steps, [copy_of],
    [error]."""
    head = ["run_id"] + (["label"] if any("label" in r for r in rows) else []) + list(axes_keys) + ["status"]
    tail = ["seconds", "steps"]
    extra = [k for k in ("copy_of", "error") if any(k in r for r in rows)]
    metrics = sorted({k for r in rows for k in r if k not in head and k not in tail and k not in extra})
    return head + metrics + tail + extra
