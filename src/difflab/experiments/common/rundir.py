"""Files of run and study directories: atomic JSON/CSV writes, tolerant reads, the run's kind.

A run directory holds ``config.json`` (the resolved config; image runs record ``"kind": "images"``, 2D
runs record no kind), ``checkpoint.pt``, ``history.json`` or ``log.csv``, ``metrics.json`` and the samples;
a study's run directory also holds ``result.json``. Writers go through a temporary file and ``os.replace``
so that a reader (or a resumed study) never sees half a file.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_KIND = "toy2d"


class RunDirError(ValueError):
    """Not a run directory, or an output directory that cannot be written."""


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set | tuple):
        return list(obj)
    return repr(obj)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, default: Any = _jsonable) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace`` (readers never see half a file)."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=default)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """A run's own JSON files (metrics, history, config): floats for anything JSON lacks (numpy scalars)."""
    write_json_atomic(path, obj, default=float)


def read_json(path: str | os.PathLike[str]) -> Any | None:
    """The JSON document at ``path``, or None if it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _cell(value: Any) -> Any:
    return repr(value) if isinstance(value, float) else value


def write_csv_atomic(
    path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], columns: list[str]
) -> None:
    """A CSV of ``rows`` with the given columns (floats by ``repr``, missing cells empty), atomically."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else _cell(row.get(c)) for c in columns])
    os.replace(tmp, path)


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``run_dir/config.json``; RunDirError if there is none."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunDirError(f"not a run directory (no config.json): {run_dir}")
    config = read_json(path)
    if not isinstance(config, dict):
        raise RunDirError(f"unreadable config.json in {run_dir}")
    return config


def read_kind(run_dir: str | os.PathLike[str]) -> str:
    """The run kind recorded in ``config.json`` (``"toy2d"`` when none is recorded)."""
    return str(read_config(run_dir).get("kind", DEFAULT_KIND))


def run_dirs(out_dir: str | os.PathLike[str]) -> dict[str, str]:
    """run id -> run directory, for every directory under ``out_dir/runs`` (sorted)."""
    root = Path(out_dir) / "runs"
    return {p.name: str(p) for p in sorted(root.iterdir()) if p.is_dir()} if root.exists() else {}


def check_writable(path: str | os.PathLike[str]) -> None:
    """RunDirError unless ``path`` exists as, or can be created as, a writable directory."""
    probe = Path(path).absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirError(f"output directory cannot be created: {probe} is not a directory")
    if not os.access(probe, os.W_OK):
        raise RunDirError(f"output directory is not writable: {path}")
