"""Factorial studies: a TOML study file -> a list of runs -> run directories -> results table and report.

The engine is generic over the run configuration: it builds nested config dicts from dotted keys and hands
each to two caller-supplied functions, ``validate_fn(config)`` (raises on a bad config) and
``run_fn(config, run_dir) -> dict`` (trains and evaluates one run; returns metrics and a ``"status"``).

A study file::

    [study]                 # name (default: the file stem) and description
    name = "loss-comparison-2d"
    [fixed]                 # dotted keys (or nested tables) shared by every run
    "train.steps" = 2000
    [axes]                  # factorial product, in the order given (last axis varies fastest)
    "objective.target" = ["x0", "eps", "v", "score"]
    "train.seed" = [0, 1, 2]
    [[extra]]               # additional runs: fixed ∪ these keys ∪ the product of their own axes
    label = "oracle"
    "model.name" = "oracle"
    axes = { "data.name" = ["mixture8"] }

Extras inherit [fixed] but not the main [axes]. Output layout::

    out_dir/runs/<run_id>/config.json   written by the engine before the run
    out_dir/runs/<run_id>/result.json   written after it: status, metrics, seconds, steps (or the error)
    out_dir/results.csv, results.json, report.md

A rerun skips runs whose result.json says "finished" or "diverged" (resume after Ctrl-C) and refuses to
mix in results made from a different config under the same run id.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import csv
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RunFn = Callable[[dict, str], Mapping[str, Any]]
ValidateFn = Callable[[dict], Any]

TOP_LEVEL_TABLES = ("study", "fixed", "axes", "extra")
STUDY_KEYS = ("name", "description", "kind")
STUDY_KINDS = ("toy2d", "images")
DONE_STATUSES = frozenset({"finished", "diverged"})


class StudyError(ValueError):
    """A bad study file, override or output directory; the message says what is valid."""


@dataclass(frozen=True)
class Extra:
    """Additional runs: ``values`` (dotted keys) on top of [fixed], times the product of ``axes``."""

    label: str
    values: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    """A parsed study: dotted-key ``fixed`` values, factorial ``axes`` and ``extras``."""

    name: str
    description: str = ""
    fixed: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    extras: tuple[Extra, ...] = ()
    path: str | None = None
    kind: str = "toy2d"  # which run pipeline: "toy2d" (2D data) or "images"

    @property
    def axes_keys(self) -> list[str]:
        """Main-grid axis keys in order, then any axis keys that only extras have."""
        keys = list(self.axes)
        for extra in self.extras:
            keys += [k for k in extra.axes if k not in keys]
        return keys


@dataclass(frozen=True)
class RunSpec:
    """One run: a filesystem-safe ``run_id``, its nested ``config`` and its ``axes`` values (dotted keys)."""

    run_id: str
    config: dict[str, Any]
    axes: dict[str, Any]
    label: str = ""

    @property
    def config_hash(self) -> str:
        """Short SHA-256 of the canonical JSON of ``config``."""
        text = json.dumps(self.config, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StudyResult:
    """Rows of the results table (one per run, in expansion order) and where they were written."""

    rows: list[dict[str, Any]]
    out_dir: str
    axes_keys: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    report_path: str | None = None


# ----------------------------------------------------------------------------------------- loading


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables -> dotted keys: ``{"train": {"steps": 1}} -> {"train.steps": 1}``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def unflatten(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys -> nested dict; a key that is both a value and a table raises StudyError."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise StudyError(f"key {key!r} conflicts with the value of {'.'.join(parts[: i + 1])!r}")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise StudyError(f"key {key!r} conflicts with keys below it (e.g. {key}.…)")
        node[parts[-1]] = copy.deepcopy(value)
    return out


def _parse_axes(table: Any, where: str) -> dict[str, list[Any]]:
    if not isinstance(table, Mapping):
        raise StudyError(f"{where} must be a table of arrays, got {table!r}")
    axes = flatten(table)
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise StudyError(f"axis {key!r} in {where} must be a non-empty array, got {values!r}")
    return axes


def parse_study(data: Mapping[str, Any], default_name: str = "study", path: str | None = None) -> Study:
    """Validate a loaded TOML document and return a :class:`Study`."""
    where = path or "study"
    unknown = sorted(set(data) - set(TOP_LEVEL_TABLES))
    if unknown:
        raise StudyError(
            f"{where}: unknown table [{unknown[0]}]; valid tables: {', '.join(TOP_LEVEL_TABLES)}"
        )
    head = data.get("study", {})
    if not isinstance(head, Mapping):
        raise StudyError(f"{where}: [study] must be a table")
    bad = sorted(set(head) - set(STUDY_KEYS))
    if bad:
        raise StudyError(f"{where}: unknown key {bad[0]!r} in [study]; valid keys: {', '.join(STUDY_KEYS)}")
    fixed_table = data.get("fixed", {})
    if not isinstance(fixed_table, Mapping):
        raise StudyError(f"{where}: [fixed] must be a table")
    fixed = flatten(fixed_table)
    axes = _parse_axes(data.get("axes", {}), "[axes]")
    both = sorted(set(fixed) & set(axes))
    if both:
        raise StudyError(f"{where}: {both[0]!r} is in both [fixed] and [axes]; keep one")
    raw_extras = data.get("extra", [])
    if not isinstance(raw_extras, list) or not all(isinstance(e, Mapping) for e in raw_extras):
        raise StudyError(f"{where}: extras must be written as [[extra]] tables")
    extras = []
    for i, raw in enumerate(raw_extras):
        label = raw.get("label", f"extra{i}")
        if not isinstance(label, str) or not label:
            raise StudyError(f"{where}: [[extra]] #{i + 1}: label must be a non-empty string")
        extra_axes = _parse_axes(raw.get("axes", {}), f"[[extra]] {label!r} axes")
        values = flatten({k: v for k, v in raw.items() if k not in ("label", "axes")})
        both = sorted(set(values) & set(extra_axes))
        if both:
            raise StudyError(f"{where}: [[extra]] {label!r}: {both[0]!r} is both a value and an axis")
        extras.append(Extra(label=label, values=values, axes=extra_axes))
    name = head.get("name", default_name)
    description = head.get("description", "")
    if not isinstance(name, str) or not name or not isinstance(description, str):
        raise StudyError(f"{where}: [study] name and description must be strings (name non-empty)")
    kind = head.get("kind", "toy2d")
    if kind not in STUDY_KINDS:
        raise StudyError(f"{where}: [study] kind {kind!r} is unknown; valid kinds: {', '.join(STUDY_KINDS)}")
    return Study(name, description, fixed, axes, tuple(extras), path, kind)


def list_builtin_studies(builtin_dir: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(name, description) of every ``<builtin_dir>/<name>.toml``, sorted by name."""
    out = []
    for path in sorted(Path(builtin_dir).glob("*.toml")):
        try:
            with open(path, "rb") as f:
                description = str(tomllib.load(f).get("study", {}).get("description", ""))
        except (OSError, tomllib.TOMLDecodeError, AttributeError) as err:
            description = f"(unreadable: {err})"
        out.append((path.stem, description))
    return out


def load_study(path_or_name: str | os.PathLike[str], builtin_dir: str | os.PathLike[str]) -> Study:
    """Load a study from a TOML file, or by name from ``builtin_dir/<name>.toml``.

    Raises:
        StudyError: unknown name (the message lists the built-in names), missing file, bad TOML or schema.
    """
    text = os.fspath(path_or_name)
    looks_like_path = text.endswith(".toml") or os.sep in text or "/" in text or os.path.isfile(text)
    if looks_like_path:
        path = Path(text)
        if not path.is_file():
            raise StudyError(f"study file not found: {path}")
    else:
        path = Path(builtin_dir) / f"{text}.toml"
        if not path.is_file():
            names = ", ".join(n for n, _ in list_builtin_studies(builtin_dir)) or "(none)"
            raise StudyError(f"unknown study {text!r}; built-in studies: {names} (or give a .toml file)")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise StudyError(f"{path}: invalid TOML: {err}") from None
    except OSError as err:
        raise StudyError(f"cannot read study file {path}: {err}") from None
    return parse_study(data, default_name=path.stem, path=str(path))


# --------------------------------------------------------------------------------------- overrides


def parse_value(text: str) -> Any:
    """A ``--set`` value as a TOML literal (``100``, ``1e-3``, ``true``, ``"eps"``, ``[0, 1]``).

    Text that is not a TOML literal is a bare string (``eps``); ``[a, b]`` is an array of bare strings.
    """
    text = text.strip()
    if not text:
        raise StudyError("empty value in --set; write key=value")
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    if text.startswith("[") and text.endswith("]"):
        items = [item for item in text[1:-1].split(",") if item.strip()]
        return [parse_value(item) for item in items]
    return text


def _override(study: Study, key: str, value: Any) -> Study:
    """Make ``key`` take ``value`` in every run (see :func:`apply_overrides`)."""
    is_axis = key in study.axes or any(key in e.axes for e in study.extras)
    values = (value if isinstance(value, list) else [value]) if is_axis else [value]
    if is_axis and not values:
        raise StudyError(f"--set {key}=[]: an axis needs at least one value")
    fixed, axes = dict(study.fixed), dict(study.axes)
    if key in axes or (is_axis and len(values) > 1):
        axes[key] = list(values)
        fixed.pop(key, None)
    else:
        fixed[key] = values[0] if is_axis else value
    # Drop fixed keys that are now parents/children of `key` (e.g. `train` vs `train.steps`).
    for other in [k for k in fixed if k != key and (k.startswith(key + ".") or key.startswith(k + "."))]:
        del fixed[other]
    extras = []
    for e in study.extras:
        # An extra's own axes follow the override; a key the extra pins itself (e.g. the oracle's model)
        # stays pinned; extras inherit [fixed] but never the main axes.
        e_axes = dict(e.axes)
        if key in e_axes:
            e_axes[key] = list(values)
        extras.append(replace(e, axes=e_axes))
    return replace(study, fixed=fixed, axes=axes, extras=tuple(extras))


def apply_overrides(study: Study, overrides: Iterable[str] | None) -> Study:
    """Apply ``--set key=value`` overrides; returns a new Study.

    Each override makes ``key`` take its value in every run. If ``key`` is an axis (of the main grid or an
    extra), a TOML array gives the axis new values and a single value replaces the axis with that value;
    otherwise the value is stored as given (arrays included) in [fixed]. Extra runs (e.g. the oracle) keep the
    keys they set themselves; their own axes follow the override; they inherit [fixed], never the main axes.
    """
    for item in overrides or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", key):
            raise StudyError(
                f"bad --set {item!r}; expected key=value with a dotted key, e.g. train.steps=100"
            )
        study = _override(study, key, parse_value(text))
    return study


# ---------------------------------------------------------------------------------------- expansion


def is_seed_key(key: str) -> bool:
    """Seed-like axes (``seed``, ``*.seed``) are averaged over in reports."""
    return key == "seed" or key.endswith(".seed")


def _safe(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.")
    return text or "x"


def format_axis_value(key: str, value: Any) -> str:
    """Filesystem-safe token for one axis value: strings as-is, ``s0`` for seeds, ``steps100`` for numbers."""
    short = key.rsplit(".", 1)[-1]
    if isinstance(value, str):
        return _safe(value)
    if isinstance(value, bool):
        return _safe(f"{short}-{str(value).lower()}")
    if isinstance(value, int | float):
        return _safe(f"s{value}" if is_seed_key(key) else f"{short}{value}")
    if isinstance(value, list | tuple):
        return _safe(f"{short}-" + "-".join(str(v) for v in value))
    return _safe(json.dumps(value, sort_keys=True, default=str))


def _product(axes: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def expand(study: Study, *, label_key: str | None = "label") -> list[RunSpec]:
    """All runs of a study in a deterministic order: the main grid (last axis fastest), then each extra.

    ``run_id`` joins the axis values with ``__`` (``mixture8__eps__nelbo__s0``); extras start with their
    label. If ``label_key`` is given and not set by the study, ``config[label_key] = run_id``.
    """
    plan: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (label, values, axis values)
    for point in _product(study.axes):
        plan.append(("", {**study.fixed, **point}, point))
    for extra in study.extras:
        for point in _product(extra.axes):
            plan.append((extra.label, {**study.fixed, **extra.values, **point}, point))
    specs, seen = [], {}
    for label, values, point in plan:
        parts = ([label] if label else []) + [format_axis_value(k, v) for k, v in point.items()]
        run_id = "__".join(parts) if parts else _safe(study.name)
        if run_id in seen:
            raise StudyError(f"two runs share the id {run_id!r}; give extras distinct labels or axis values")
        seen[run_id] = True
        config = unflatten(values)
        if label_key is not None and label_key not in config:
            config[label_key] = run_id
        specs.append(RunSpec(run_id, config, copy.deepcopy(point), label))
    return specs


def get_dotted(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``config["a"]["b"]`` for ``key = "a.b"``, or ``default`` when absent."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


# ------------------------------------------------------------------------------------------- files


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set | tuple):
        return list(obj)
    return repr(obj)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace`` (readers never see half a file)."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_jsonable)
    os.replace(tmp, path)


def _write_csv_atomic(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else _cell(row.get(c)) for c in columns])
    os.replace(tmp, path)


def _cell(value: Any) -> Any:
    return repr(value) if isinstance(value, float) else value


def _read_record(run_dir: Path) -> dict[str, Any] | None:
    try:
        with open(run_dir / "result.json") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _check_output_dir(out_dir: Path, create: bool) -> None:
    """Raise StudyError unless ``out_dir`` exists (or can be created) as a writable directory."""
    if out_dir.exists() and not out_dir.is_dir():
        raise StudyError(f"output directory {out_dir} exists and is not a directory")
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise StudyError(f"cannot write the output directory {out_dir}: {probe} is not a writable directory")
    if not create:
        return
    try:
        (out_dir / "runs").mkdir(parents=True, exist_ok=True)
        test = out_dir / f".write-test.{os.getpid()}"
        test.write_text("ok")
        test.unlink()
    except OSError as err:
        raise StudyError(f"cannot write the output directory {out_dir}: {err}") from None


# --------------------------------------------------------------------------------------- execution

_STOP_EVENT: Any = None  # set in worker processes by _init_worker


def _init_worker(threads: int, stop_event: Any) -> None:
    """Worker initializer: limit intra-op threads so workers × threads ≈ cores; remember the stop flag."""
    global _STOP_EVENT
    _STOP_EVENT = stop_event
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(threads)


def _make_record(spec: RunSpec, out: Any, seconds: float) -> dict[str, Any]:
    if not isinstance(out, Mapping):
        raise TypeError(f"run_fn returned {type(out).__name__}, expected a dict of metrics with a 'status'")
    metrics = {k: v for k, v in out.items() if k not in ("status", "seconds", "steps")}
    return {
        "run_id": spec.run_id,
        "label": spec.label,
        "axes": spec.axes,
        "config_hash": spec.config_hash,
        "status": str(out.get("status", "finished")),
        "metrics": metrics,
        "seconds": out.get("seconds", round(seconds, 3)),
        "steps": out.get("steps"),
    }


def _execute(run_fn: RunFn, spec: RunSpec, run_dir: str) -> dict[str, Any] | None:
    """Run one spec and write its result.json; exceptions become status "error". None if cancelled."""
    if _STOP_EVENT is not None and _STOP_EVENT.is_set():
        return None
    start = time.perf_counter()
    try:
        out = run_fn(copy.deepcopy(spec.config), run_dir)
        record = _make_record(spec, out, time.perf_counter() - start)
        write_json_atomic(os.path.join(run_dir, "result.json"), record)
    except Exception as err:
        record = _error_record(spec, err, time.perf_counter() - start)
        write_json_atomic(os.path.join(run_dir, "result.json"), record)
    return record


def _error_record(spec: RunSpec, err: BaseException, seconds: float) -> dict[str, Any]:
    return {
        "run_id": spec.run_id,
        "label": spec.label,
        "axes": spec.axes,
        "config_hash": spec.config_hash,
        "status": "error",
        "error": f"{type(err).__name__}: {err}",
        "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
        "metrics": {},
        "seconds": round(seconds, 3),
        "steps": None,
    }


def available_cores() -> int:
    """CPU cores this process may use (scheduler affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _validate_all(specs: Sequence[RunSpec], validate_fn: ValidateFn) -> None:
    for spec in specs:
        try:
            validate_fn(copy.deepcopy(spec.config))
        except Exception as err:
            try:
                wrapped = type(err)(f"run {spec.run_id!r}: {err}")
            except Exception:
                raise err from None
            raise wrapped from err


def _print_plan(study: Study, specs: Sequence[RunSpec]) -> None:
    keys = study.axes_keys
    width = max([len(s.run_id) for s in specs] + [6])
    print(f"study {study.name!r}: {len(specs)} runs")
    for spec in specs:
        values = ", ".join(f"{k}={spec.axes[k]!r}" for k in keys if k in spec.axes)
        print(f"  {spec.run_id:<{width}}  {values}")


OnDone = Callable[[RunSpec, "dict[str, Any] | None"], None]


def _run_serial(pending: Sequence[RunSpec], run_fn: RunFn, runs_dir: Path, on_done: OnDone) -> None:
    for spec in pending:
        run_dir = runs_dir / spec.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "config.json", spec.config)
        on_done(spec, _execute(run_fn, spec, str(run_dir)))


def _run_parallel(
    pending: Sequence[RunSpec], run_fn: RunFn, runs_dir: Path, workers: int, threads: int, on_done: OnDone
) -> None:
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    executor = cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(threads, stop)
    )
    futures: dict[cf.Future, RunSpec] = {}
    try:
        for spec in pending:
            run_dir = runs_dir / spec.run_id
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(run_dir / "config.json", spec.config)
            futures[executor.submit(_execute, run_fn, spec, str(run_dir))] = spec
        for future in cf.as_completed(futures):
            spec = futures[future]
            try:
                record = future.result()
            except KeyboardInterrupt:
                raise
            except BaseException as err:  # the pool broke or the call could not be pickled
                record = _error_record(spec, err, 0.0)
                write_json_atomic(runs_dir / spec.run_id / "result.json", record)
            on_done(spec, record)
    except BaseException:
        # Ctrl-C (or an engine failure): stop queued runs, end the workers; finished runs keep result.json.
        stop.set()
        for future in futures:
            future.cancel()
        processes = list(getattr(executor, "_processes", {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        for proc in processes:
            proc.join(timeout=5)
        raise
    executor.shutdown(wait=True)


def gather_rows(study: Study, specs: Sequence[RunSpec], runs_dir: str | os.PathLike[str]) -> list[dict]:
    """One flat row per run from its result.json: run_id, [label], axis values, status, metrics, seconds."""
    has_label = bool(study.extras)
    rows = []
    for spec in specs:
        record = _read_record(Path(runs_dir) / spec.run_id) or {"status": "pending", "metrics": {}}
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
        rows.append(row)
    return rows


def result_columns(rows: Sequence[Mapping[str, Any]], axes_keys: Sequence[str]) -> list[str]:
    """CSV columns: run_id, [label], axes, status, metrics (sorted union), seconds, steps, [error]."""
    head = ["run_id"] + (["label"] if any("label" in r for r in rows) else []) + list(axes_keys) + ["status"]
    tail = ["seconds", "steps"]
    metrics = sorted({k for r in rows for k in r if k not in head and k not in tail and k != "error"})
    return head + metrics + tail + (["error"] if any("error" in r for r in rows) else [])


def run_study(
    study: Study,
    *,
    run_fn: RunFn,
    validate_fn: ValidateFn,
    out_dir: str | os.PathLike[str],
    workers: int | None = None,
    dry_run: bool = False,
    progress: bool = True,
    metric_specs: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
    report_metrics: Sequence[str] | None = None,
    label_key: str | None = "label",
) -> StudyResult:
    """Validate every run, then run the ones not yet done, in parallel, and write the tables and report.

    Args:
        study: the study (after :func:`apply_overrides`).
        run_fn: ``run_fn(config, run_dir) -> dict`` with a "status" ("finished", "diverged", ...), metrics
            and optionally "seconds" and "steps". Must be a picklable top-level function when workers > 1.
        validate_fn: called on every run's config before anything runs or is written; its exception
            propagates (same type, message prefixed with the run id).
        out_dir: output directory (created; must be writable, else StudyError).
        workers: worker processes ("spawn"); default one per available core; 1 runs in this process.
            Each worker uses ``max(1, cores // workers)`` torch threads.
        dry_run: print the run list and return it (status "planned"); nothing is written.
        progress: show a tqdm bar over runs.
        metric_specs: metric -> "min" | "max" for the report (default "min").
        notes: lines for the report's Notes section.
        report_metrics: metric columns of the report, in order (default: every numeric metric).
        label_key: config key set to the run id (None: leave the config alone).

    Returns:
        StudyResult with one row per run. On Ctrl-C, queued runs are cancelled, the workers stopped and
        KeyboardInterrupt re-raised; finished runs keep their result.json and are skipped on the next call.
    """
    specs = expand(study, label_key=label_key)
    _validate_all(specs, validate_fn)
    out = Path(out_dir)
    if dry_run:
        _print_plan(study, specs)
        rows = [{"run_id": s.run_id, **s.axes, "status": "planned"} for s in specs]
        return StudyResult(rows, os.fspath(out), study.axes_keys, [], [])
    if workers is not None and workers < 1:
        raise StudyError(f"workers must be at least 1, got {workers}")
    _check_output_dir(out, create=False)
    runs_dir = out / "runs"
    pending, skipped = [], []
    for spec in specs:
        record = _read_record(runs_dir / spec.run_id)
        if record is not None and record.get("status") in DONE_STATUSES:
            if record.get("config_hash") not in (None, spec.config_hash):
                raise StudyError(
                    f"{runs_dir / spec.run_id} holds a result made with a different config; "
                    "use another output directory or delete that run directory"
                )
            skipped.append(spec.run_id)
        else:
            pending.append(spec)
    _check_output_dir(out, create=True)

    cores = available_cores()
    n_workers = max(1, min(workers or cores, len(pending) or 1))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(specs), initial=len(skipped), desc=study.name, unit="run", dynamic_ncols=True)

    ran: list[str] = []

    def on_done(spec: RunSpec, record: dict[str, Any] | None) -> None:
        if record is None:
            return
        ran.append(spec.run_id)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{spec.run_id}: {record.get('status')}")

    try:
        if n_workers == 1:
            _run_serial(pending, run_fn, runs_dir, on_done)
        else:
            _run_parallel(pending, run_fn, runs_dir, n_workers, max(1, cores // n_workers), on_done)
    finally:
        if bar is not None:
            bar.close()

    rows = gather_rows(study, specs, runs_dir)
    axes_keys = study.axes_keys
    _write_csv_atomic(out / "results.csv", rows, result_columns(rows, axes_keys))
    summary = {"study": study.name, "description": study.description, "axes": axes_keys, "rows": rows}
    write_json_atomic(out / "results.json", summary)

    from difflab.experiments.report import write_report

    report = write_report(
        rows,
        axes_keys,
        out,
        metric_specs,
        title=study.name,
        description=study.description,
        settings=study.fixed,
        notes=notes,
        metrics=report_metrics,
    )
    return StudyResult(rows, os.fspath(out), axes_keys, ran, skipped, os.fspath(report))
