"""Files of run and study directories: atomic JSON/CSV writes, tolerant reads, the run's kind.

A run directory holds ``config.json`` (the resolved config; image runs record ``"kind": "images"``, 2D
runs record no kind), ``checkpoint.pt``, ``history.json`` or ``log.csv``, ``metrics.json`` and the samples;
a study's run directory also holds ``result.json``. Writers go through a temporary file and ``os.replace``
so that a reader (or a resumed study) never sees half a file; a failed write (disk full, permissions)
removes its temporary file and raises :class:`RunDirError` naming the file.

Config identity: :func:`config_hash` hashes the part of a resolved config that determines the trained
weights (everything but ``label``, ``eval`` and ``train.device``). Every checkpoint carries that part and
its hash; :func:`check_reuse` refuses (before anything is written) to train into a directory that holds a
run of another config, and :func:`check_checkpoint_config` refuses to load a checkpoint under a config that
differs from the one that made it. Both messages list what differs (``train.steps: 40 -> 80``).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
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


def save_atomic(path: str | os.PathLike[str], write: Callable[[str], None]) -> None:
    """``write(tmp)`` then ``os.replace(tmp, path)``: readers never see half a file. If the write fails
    the temporary file is removed; an OSError (disk full, permissions) becomes a RunDirError naming
    ``path`` (torch.save reports a full disk as a RuntimeError: that too)."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) or (isinstance(err, RuntimeError) and "write" in str(err)):
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise RunDirError(
                f"cannot write {path}: {reason}; free space (or fix permissions) and rerun the same "
                "command: it resumes from the last checkpoint"
            ) from None
        raise


def write_json_atomic(path: str | os.PathLike[str], obj: Any, default: Any = _jsonable) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace`` (readers never see half a file)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=default)

    save_atomic(path, write)


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

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in rows:
                writer.writerow(["" if row.get(c) is None else _cell(row.get(c)) for c in columns])

    save_atomic(path, write)


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``run_dir/config.json``; RunDirError if there is none or it is not a JSON table (empty, truncated,
    garbage, unreadable), naming the file and what to do."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunDirError(f"not a run directory (no config.json): {run_dir}")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) else f"not valid JSON ({err})"
        raise RunDirError(
            f"{path}: {reason}; restore it (it is the resolved config the run was trained with) or "
            "retrain into a new directory"
        ) from None
    if not isinstance(config, dict):
        kind = type(config).__name__
        raise RunDirError(f"{path}: expected a JSON table, got {kind}; restore it or retrain")
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


# --------------------------------------------------------------------------------- config identity


#: a kind's ``config dict -> resolved config dict`` (parse, then ``to_dict``); raises ValueError if invalid
Resolve = Callable[[dict[str, Any]], dict[str, Any]]

#: config keys that do not change the trained weights: a run may be re-evaluated, relabelled or moved
#: to another device under the same checkpoint
IDENTITY_IGNORED = ("label", "eval", "train.device")

#: what ``difflab train --overwrite`` removes from a run directory of another config (then retrains)
RUN_OUTPUTS = (
    "config.json",
    "result.json",
    "checkpoint.pt",
    "metrics.json",
    "history.json",
    "log.csv",
    "evaluation.json",
    "samples.npz",
    "samples.png",
    "mode_fractions.json",
    "score_error.json",
    "grids",
)


def config_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config (``to_dict`` form) without the :data:`IDENTITY_IGNORED` keys."""
    out = json.loads(json.dumps(config, default=_jsonable))
    for key in IDENTITY_IGNORED:
        node, *rest = key.split(".")
        if not rest:
            out.pop(node, None)
        elif isinstance(out.get(node), dict):
            out[node].pop(rest[0], None)
    return out


def config_hash(config: dict[str, Any]) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of :func:`config_identity`."""
    text = json.dumps(config_identity(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_diff(old: Any, new: Any, where: str = "") -> list[str]:
    """``key.path: old -> new`` for every leaf that differs (missing keys shown as ``(none)``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{where}.{key}" if where else str(key)
            lines += config_diff(old.get(key, "(none)"), new.get(key, "(none)"), sub)
        return lines
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    lines = config_diff(config_identity(old), config_identity(new))
    return "; ".join(lines[:8]) + (f"; and {len(lines) - 8} more" if len(lines) > 8 else "")


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint loaded with ``torch.load(weights_only=True)`` (tensors, dicts, lists, numbers and
    strings only: unpickling a shared file never runs code). RunDirError naming the file if it is
    missing, empty, truncated or not a checkpoint."""
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RunDirError(f"no checkpoint at {path}: train the run first")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on a bad file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunDirError(
            f"{path} is corrupt, truncated or not a difflab checkpoint ({first[:200]}); delete it to "
            "retrain the run from scratch, or restore it from a copy"
        ) from None
    if not isinstance(state, dict) or "step" not in state:
        raise RunDirError(f"{path} is not a difflab checkpoint; delete it to retrain the run from scratch")
    return state


def check_checkpoint_config(state: dict[str, Any], config: dict[str, Any], path: str) -> None:
    """RunDirError if the checkpoint ``state`` (loaded from ``path``) was made by a config whose identity
    differs from ``config``'s; the message lists the differences. Checkpoints without a recorded config
    (older files) pass."""
    if "config_hash" not in state or state["config_hash"] == config_hash(config):
        return
    raise RunDirError(
        f"{path} was trained under another config ({_differences(state.get('config', {}), config)}); "
        "restore the run's config.json, or retrain"
    )


def _reuse_problem(run_dir: str, config: dict[str, Any], resolve: Resolve | None) -> str | None:
    """Why ``run_dir`` cannot be resumed under ``config`` (None if it can, or holds no run)."""
    config_path = os.path.join(run_dir, "config.json")
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    try:
        if os.path.isfile(config_path):
            old = read_config(run_dir)
            # a study writes its raw (partial) run config: compare it with every default filled in; one
            # that is no longer a valid config is compared as written
            with contextlib.suppress(ValueError):
                old = resolve(old) if resolve is not None else old
            if config_hash(old) != config_hash(config):
                return f"{run_dir} holds a run of another config ({_differences(old, config)})"
        if os.path.isfile(ckpt_path):
            check_checkpoint_config(load_checkpoint(ckpt_path), config, ckpt_path)
    except RunDirError as err:
        return str(err)
    return None


def check_reuse(
    run_dir: str | os.PathLike[str],
    config: dict[str, Any],
    overwrite: bool = False,
    resolve: Resolve | None = None,
) -> None:
    """Before a run writes anything into ``run_dir``: RunDirError if the directory holds a run of another
    config (its ``config.json`` or ``checkpoint.pt`` differs in identity from the resolved ``config``, or
    either is corrupt), listing what differs: resuming it would report or continue the old run. ``resolve``
    turns a ``config.json`` into the resolved form (defaults filled in). With ``overwrite`` the old run's
    outputs (:data:`RUN_OUTPUTS`) are removed instead, so the run trains from scratch."""
    run_dir = os.fspath(run_dir)
    problem = _reuse_problem(run_dir, config, resolve)
    if problem is None:
        return
    if not overwrite:
        raise RunDirError(
            f"{problem}. Nothing was changed: use another --out, or pass --overwrite to retrain it from "
            "scratch under the new config"
        )
    for name in RUN_OUTPUTS:  # tolerant: under torchrun every rank removes them
        target = os.path.join(run_dir, name)
        if os.path.isdir(target):
            shutil.rmtree(target, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(target)


#: training statuses of a checkpoint that are complete runs (early stopping is a finished run)
FINISHED = ("finished", "early_stopped")


def check_trained(state: dict[str, Any], path: str, finished: bool = False) -> str:
    """RunDirError if the checkpoint ``state`` (from ``path``) diverged: its weights are garbage (finite or
    not) and samples or metrics of them mean nothing. With ``finished``, also if training has not ended.
    Returns a note for an unfinished run (``""`` for a finished one)."""
    history = state.get("history", {})
    status = history.get("status", "finished")
    if status == "diverged":
        reason = history.get("divergence_reason") or "non-finite loss"
        raise RunDirError(
            f"{path}: the run diverged at step {history.get('diverged_at')} ({reason}); there is nothing to "
            "sample or evaluate: retrain it (e.g. with a smaller train.lr) into a new directory"
        )
    if status in FINISHED:
        return ""
    total = state.get("total_steps")
    progress = f"step {state.get('step')}" + (f" of {total}" if total is not None else "")
    if finished:
        raise RunDirError(
            f"{path}: the run is unfinished ({progress}); rerun `difflab train` with the same config and "
            "--out to finish it, then evaluate"
        )
    return f" (an unfinished run: {progress})"
