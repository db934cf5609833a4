"""Export a study's learning curves and hyperparameters as TensorBoard event files (optional extra).

``difflab tensorboard STUDY_DIR`` reads what a study already wrote (``results.json`` and, per run,
``curves.json`` and ``history.json``) and writes one TensorBoard run per study run under
``STUDY_DIR/tensorboard/<run_id>/``:

- ``curve/<metric>`` at every curve point (x axis: training step; the wall time of each event is the run's
  training seconds at that point, so TensorBoard's "relative" axis plots the curve against training time);
- ``train/loss`` at every logged step (``history.json``);
- one HParams record: the run's axis values (and its extra's label) as hyperparameters, its final
  numeric metrics (``results.json``: KL, NLL, NELBO, sample metrics and floors, ``converged``) as metrics,
  so TensorBoard's HParams view compares the arms in one table.

Nothing is recomputed: exporting a finished (or partly finished) study takes seconds and can be repeated;
the output directory is rebuilt each time. Needs the ``tensorboard`` package
(``pip install 'difflab[tensorboard]'``); the writer is ``torch.utils.tensorboard.SummaryWriter``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from difflab.experiments.common.configs import ConfigError
from difflab.experiments.common.rundir import read_json

#: hyperparameter value types TensorBoard's HParams plugin accepts (anything else is shown as a string)
_HPARAM_TYPES = (bool, int, float, str)


def _writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch raises ImportError when the tensorboard package is missing
        raise ConfigError(
            "the TensorBoard export needs the tensorboard package: pip install 'difflab[tensorboard]'"
        ) from err
    return SummaryWriter


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def run_hparams(row: Mapping[str, Any], axes: list[str]) -> dict[str, bool | int | float | str]:
    """The run's hyperparameters: its axis values and its extra's label (non-scalars as strings)."""
    hparams: dict[str, bool | int | float | str] = {"run_id": str(row["run_id"])}
    if row.get("label"):
        hparams["label"] = str(row["label"])
    for key in axes:
        if key in row and row[key] is not None:
            value = row[key]
            hparams[key] = value if isinstance(value, _HPARAM_TYPES) else str(value)
    return hparams


def run_metrics(row: Mapping[str, Any], axes: list[str]) -> dict[str, float]:
    """The run's final numeric metrics (axis values and bookkeeping excluded), under ``final/``."""
    skip = {*axes, "run_id", "label"}
    return {f"final/{k}": float(v) for k, v in row.items() if k not in skip and _is_number(v)}


def _write_run(
    writer_cls: Any, log_dir: Path, run_dir: Path, row: Mapping[str, Any], axes: list[str]
) -> None:
    """Write one run's events (a run without curves or history gets only its HParams record)."""
    curves = read_json(run_dir / "curves.json") or {}  # None when missing or unreadable
    history = read_json(run_dir / "history.json") or {}
    writer = writer_cls(log_dir=str(log_dir))
    try:
        for point in curves.get("points", []):
            for name, value in point.get("metrics", {}).items():
                if _is_number(value):
                    writer.add_scalar(
                        f"curve/{name}", value, int(point["step"]), walltime=float(point["train_seconds"])
                    )
        for step, loss in zip(history.get("steps", []), history.get("loss", []), strict=False):
            if _is_number(loss):
                writer.add_scalar("train/loss", loss, int(step))
        metrics = run_metrics(row, axes)
        if metrics:
            writer.add_hparams(run_hparams(row, axes), metrics, run_name=".")
    finally:
        writer.close()


def export_tensorboard(study_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write ``out`` (default ``study_dir/tensorboard``) with one TensorBoard run per study run; returns it.

    Raises ConfigError when ``study_dir`` holds no ``results.json`` (not a study, or none of it has run) or
    the tensorboard package is missing. The directory is written beside its final place and moved there
    whole, so a failed export leaves the previous one (or nothing) behind.
    """
    study_dir = Path(study_dir)
    results_path = study_dir / "results.json"
    if not results_path.is_file():
        raise ConfigError(f"{study_dir} is not a study directory: no results.json (run `difflab study`)")
    writer_cls = _writer_class()
    results = read_json(results_path)
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise ConfigError(f"{results_path} is unreadable or not a study's results (no rows)")
    axes = list(results.get("axes", []))
    out = Path(out) if out is not None else study_dir / "tensorboard"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tensorboard-", dir=out.parent))
    try:
        for row in results["rows"]:
            run_id = str(row["run_id"])
            _write_run(writer_cls, tmp / run_id, study_dir / "runs" / run_id, row, axes)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
