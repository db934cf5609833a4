"""The study engine: a parsed study -> run directories -> ``results.csv`` / ``results.json``.

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
    out_dir/results.csv, results.json   written by :func:`run_study`
    out_dir/report.md                   written once, by :func:`difflab.experiments.study.report.finish_study`

A rerun skips runs whose result.json says "finished" or "diverged" (resume after Ctrl-C) and refuses to
mix in results made from a different config under the same run id.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from difflab.experiments.common.rundir import write_csv_atomic, write_json_atomic
from difflab.experiments.study.plan import StudyError
from difflab.experiments.study.results import (
    DONE_STATUSES,
    StudyResult,
    gather_rows,
    read_record,
    result_columns,
)
from difflab.experiments.study.spec import RunSpec, Study, expand

RunFn = Callable[[dict, str], Mapping[str, Any]]
ValidateFn = Callable[[dict], Any]


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


def run_study(
    study: Study,
    *,
    run_fn: RunFn,
    validate_fn: ValidateFn,
    out_dir: str | os.PathLike[str],
    workers: int | None = None,
    dry_run: bool = False,
    progress: bool = True,
    label_key: str | None = "label",
) -> StudyResult:
    """Validate every run, then run the ones not yet done, in parallel, and write the results tables.

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
    pending, skipped = plan_pending(specs, runs_dir)
    _check_output_dir(out, create=True)
    ran = execute(pending, run_fn, runs_dir, workers, progress and (study.name, len(specs), len(skipped)))
    rows = write_tables(study, specs, out)
    return StudyResult(rows, os.fspath(out), study.axes_keys, ran, skipped)


def plan_pending(specs: Sequence[RunSpec], runs_dir: Path) -> tuple[list[RunSpec], list[str]]:
    """(runs still to do, ids of runs already done); a done run made from another config is a StudyError."""
    pending, skipped = [], []
    for spec in specs:
        record = read_record(runs_dir / spec.run_id)
        if record is not None and record.get("status") in DONE_STATUSES:
            if record.get("config_hash") not in (None, spec.config_hash):
                raise StudyError(
                    f"{runs_dir / spec.run_id} holds a result made with a different config; "
                    "use another output directory or delete that run directory"
                )
            skipped.append(spec.run_id)
        else:
            pending.append(spec)
    return pending, skipped


def execute(
    pending: Sequence[RunSpec],
    run_fn: RunFn,
    runs_dir: Path,
    workers: int | None,
    progress: tuple[str, int, int] | bool = False,
) -> list[str]:
    """Run ``pending`` (serially for one worker, else in "spawn" processes); returns the ids that ran.

    ``progress`` is ``(study name, total runs, runs already done)`` for a tqdm bar, or False."""
    cores = available_cores()
    n_workers = max(1, min(workers or cores, len(pending) or 1))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        name, total, done = progress
        bar = tqdm(total=total, initial=done, desc=name, unit="run", dynamic_ncols=True)
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
    return ran


def write_tables(study: Study, specs: Sequence[RunSpec], out: Path) -> list[dict[str, Any]]:
    """Gather the rows of every run and write ``results.csv`` and ``results.json``; returns the rows."""
    rows = gather_rows(study, specs, out / "runs")
    axes_keys = study.axes_keys
    write_csv_atomic(out / "results.csv", rows, result_columns(rows, axes_keys))
    summary = {"study": study.name, "description": study.description, "axes": axes_keys, "rows": rows}
    write_json_atomic(out / "results.json", summary)
    return rows
