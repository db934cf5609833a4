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

    out_dir/study.json                  the study's identity: name, kind, run id -> config hash
    out_dir/runs/<run_id>/claim.json    while a worker runs it (see :mod:`.claims`); run.log: attempts

A rerun skips runs whose result.json says "finished" or "diverged" (resume after Ctrl-C) and refuses to
mix in results made from a different config under the same run id, or a different study's directory.

Past one machine (the output directory on a filesystem every worker shares): each run is claimed before it
runs, so any number of ``run_study`` calls on one ``out_dir`` (``--shard I/N`` slices, two commands at once,
Dask or Slurm workers) run every run once; each call writes the tables from every result.json when it ends
(atomically, so the last to finish leaves the complete table), and ``gather=True`` only writes them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from difflab.experiments.common.rundir import read_json, write_csv_atomic, write_json_atomic
from difflab.experiments.study.executors import ExecutorOptions, make_backend, preflight, run_packs
from difflab.experiments.study.plan import StudyError
from difflab.experiments.study.results import (
    DONE_STATUSES,
    StudyResult,
    gather_rows,
    read_record,
    result_columns,
)
from difflab.experiments.study.spec import RunSpec, Study, expand
from difflab.experiments.study.worker import CLAIMED, copy_run, execute_run, set_threads

RunFn = Callable[[dict, str], Mapping[str, Any]]
ValidateFn = Callable[[dict], Any]
SameRunKeyFn = Callable[[dict], "str | None"]


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


def _print_plan(study: Study, specs: Sequence[RunSpec], copies: Mapping[str, RunSpec]) -> None:
    keys = study.axes_keys
    width = max([len(s.run_id) for s in specs] + [6])
    mine = [s for s in specs if s.run_id in copies]
    trained = f" ({len(specs) - len(mine)} trained, {len(mine)} copied from a run that computes the same)"
    print(f"study {study.name!r}: {len(specs)} runs{trained if mine else ''}")
    for spec in specs:
        values = ", ".join(f"{k}={spec.axes[k]!r}" for k in keys if k in spec.axes)
        same = f"  (copy of {copies[spec.run_id].run_id})" if spec.run_id in copies else ""
        print(f"  {spec.run_id:<{width}}  {values}{same}")


def shard_of(specs: Sequence[RunSpec], index: int, count: int) -> list[RunSpec]:
    """The ``index``-th of ``count`` disjoint, covering slices of ``specs`` (in expansion order).

    Runs are ranked by the SHA-256 of their run id and dealt out round-robin, so the assignment depends on
    the run ids alone (not on the order of the study file or on what is already done) and slices differ in
    size by at most one."""
    if count < 1 or not 0 <= index < count:
        raise StudyError(f"--shard I/N needs 0 <= I < N, got {index}/{count}")
    ranked = sorted(specs, key=lambda s: hashlib.sha256(s.run_id.encode()).hexdigest())
    chosen = {s.run_id for s in ranked[index::count]}
    return [s for s in specs if s.run_id in chosen]


def check_identity(study: Study, specs: Sequence[RunSpec], out: Path) -> dict[str, Any]:
    """The ``study.json`` of this study, after refusing an ``out`` that holds a different study.

    Different: another name or kind, a shared run id made with another config, or no run id in common."""
    mine = {"study": study.name, "kind": study.kind, "runs": {s.run_id: s.config_hash for s in specs}}
    theirs = read_json(out / "study.json")
    if not isinstance(theirs, dict):
        legacy = read_json(out / "results.json")  # written before study.json existed
        if not isinstance(legacy, dict) or "study" not in legacy:
            return mine
        theirs = {"study": legacy["study"], "kind": study.kind, "runs": None}
    where = f"{out} holds the results of study {theirs.get('study')!r}"
    fix = "give another --out, or delete that directory"
    if theirs.get("study") != study.name or theirs.get("kind", study.kind) != study.kind:
        raise StudyError(f"{where} (kind {theirs.get('kind')!r}), not of {study.name!r}; {fix}")
    runs = theirs.get("runs")
    if isinstance(runs, dict):
        changed = sorted(r for r in set(runs) & set(mine["runs"]) if runs[r] != mine["runs"][r])
        if changed:
            raise StudyError(f"{where} with run {changed[0]!r} made from a different config; {fix}")
        if runs and not set(runs) & set(mine["runs"]):
            raise StudyError(f"{where}, which has none of this study's runs; {fix}")
        mine["runs"] = {**runs, **mine["runs"]}
    return mine


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
    executor: ExecutorOptions | None = None,
    shard: tuple[int, int] | None = None,
    gather: bool = False,
    same_run_key: SameRunKeyFn | None = None,
) -> StudyResult:
    """Validate every run, then run the ones not yet done (claiming each), and write the results tables.

    Args:
        study: the study (after :func:`apply_overrides`).
        run_fn: ``run_fn(config, run_dir) -> dict`` with a "status" ("finished", "diverged", ...), metrics
            and optionally "seconds" and "steps"; resumes from its checkpoint in ``run_dir`` if there is one.
            Must be a picklable top-level function for any executor but one local worker.
        validate_fn: called on every run's config before anything runs or is written; its exception
            propagates (same type, message prefixed with the run id).
        out_dir: output directory (created; must be writable, else StudyError).
        workers: local worker processes ("spawn", default one per core; 1 runs in this process); the same as
            ``executor.workers``. Each uses ``max(1, cores // workers)`` torch threads.
        dry_run: print the run list and return it (status "planned"); nothing is written.
        progress: show a tqdm bar over runs.
        label_key: config key set to the run id (None: leave the config alone).
        executor: where runs execute (:class:`ExecutorOptions`; default: local processes).
        shard: ``(I, N)``: run only the I-th of N slices (:func:`shard_of`); tables still cover every run.
        gather: run nothing; write the tables from what is finished.
        same_run_key: ``same_run_key(config)``, equal for configs that compute the same run bit for bit (None:
            unknown); of each such group only the first run in study order trains, the others receive a copy
            of its result once it is done (:func:`find_copies`, ``copy_of`` in their result.json), or train
            themselves if it is not (another shard still running it, or it failed).

    Returns:
        StudyResult: one row per run, and which runs ran, were skipped, failed, are held by other workers or
        are still missing. On Ctrl-C or SIGTERM, queued runs are cancelled, the workers stopped and
        KeyboardInterrupt re-raised; finished runs keep their result.json and are skipped on the next call.
    """
    specs = expand(study, label_key=label_key)
    _validate_all(specs, validate_fn)
    out = Path(out_dir)
    copies = find_copies(specs, same_run_key) if same_run_key is not None else {}
    if dry_run:
        return _dry_run(study, shard_of(specs, *shard) if shard else specs, out, copies)
    options = copy.copy(executor) if executor is not None else ExecutorOptions()
    options.workers = workers if workers is not None else options.workers
    if options.workers is not None and options.workers < 1:
        raise StudyError(f"workers must be at least 1, got {options.workers}")
    preflight(options)
    _check_output_dir(out, create=False)
    runs_dir = out / "runs"
    identity = check_identity(study, specs, out)
    mine = shard_of(specs, *shard) if shard else specs
    pending, skipped = plan_pending(mine, runs_dir)
    _check_output_dir(out, create=True)
    write_json_atomic(out / "study.json", identity)
    records: dict[str, dict[str, Any]] = {}
    if not gather:
        trained = [s for s in pending if s.run_id not in copies]
        bar = progress and (study.name, len(mine) - (len(pending) - len(trained)), len(skipped))
        records = execute(trained, run_fn, runs_dir, options, bar)
        waiting = [s for s in pending if s.run_id in copies]
        records.update(execute_copies(waiting, copies, run_fn, runs_dir, options))
    rows = write_tables(study, specs, out)
    result = _summarise(rows, out, study, records, skipped, gather)
    copied = {r: copies[r].run_id for r, rec in records.items() if rec.get("copy_of")}
    return dataclasses.replace(result, copied=copied)


def find_copies(specs: Sequence[RunSpec], same_run_key: SameRunKeyFn) -> dict[str, RunSpec]:
    """Run id -> the first spec in study order with the same ``same_run_key`` (runs with key None are
    never copies). Seed 000's grid trains x0 under "weighted" and "rescaled", one objective twice."""
    first: dict[str, RunSpec] = {}
    copies: dict[str, RunSpec] = {}
    for spec in specs:
        key = same_run_key(copy.deepcopy(spec.config))
        if key is None:
            continue
        if key in first:
            copies[spec.run_id] = first[key]
        else:
            first[key] = spec
    return copies


def execute_copies(
    waiting: Sequence[RunSpec],
    copies: Mapping[str, RunSpec],
    run_fn: RunFn,
    runs_dir: Path,
    options: ExecutorOptions,
) -> dict[str, dict[str, Any]]:
    """Copy to each waiting run the result of its source (:func:`~.worker.copy_run`) when that is done;
    run the others (source failed, or held by another worker that has not finished it)."""
    records: dict[str, dict[str, Any]] = {}
    to_run = []
    for spec in waiting:
        source = read_record(runs_dir / copies[spec.run_id].run_id)
        if source is not None and source.get("status") in DONE_STATUSES:
            record = copy_run(spec, copies[spec.run_id], str(runs_dir))
            if record is not None:
                records[spec.run_id] = record
        else:
            to_run.append(spec)
    records.update(execute(to_run, run_fn, runs_dir, options))
    return records


def _dry_run(
    study: Study, chosen: Sequence[RunSpec], out: Path, copies: Mapping[str, RunSpec]
) -> StudyResult:
    _print_plan(study, chosen, copies)
    rows = [{"run_id": s.run_id, **s.axes, "status": "planned"} for s in chosen]
    return StudyResult(rows, os.fspath(out), study.axes_keys, [], [])


def _summarise(rows, out: Path, study: Study, records: Mapping[str, dict], skipped, gather) -> StudyResult:
    """Which runs ran, failed (attempted now, or any when gathering), are held elsewhere, or are missing."""
    ran = [r for r, rec in records.items() if rec.get("status") != CLAIMED]
    busy = {r: str(rec.get("owner")) for r, rec in records.items() if rec.get("status") == CLAIMED}
    failed = {
        row["run_id"]: read_record(out / "runs" / row["run_id"]) or {}
        for row in rows
        if (gather or row["run_id"] in records)
        and row["status"] not in DONE_STATUSES | {"pending"}
        and row["run_id"] not in busy
    }
    missing = [row["run_id"] for row in rows if row["status"] == "pending" and row["run_id"] not in busy]
    return StudyResult(rows, os.fspath(out), study.axes_keys, ran, list(skipped), failed, busy, missing)


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


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM (``kill PID``) raises KeyboardInterrupt, so the study stops cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def execute(
    pending: Sequence[RunSpec],
    run_fn: RunFn,
    runs_dir: Path,
    options: ExecutorOptions | int | None = None,
    progress: tuple[str, int, int] | bool = False,
) -> dict[str, dict[str, Any]]:
    """Run ``pending`` (one local worker: in this process) and return run id -> record of each run attempted
    (status CLAIMED for runs another worker holds). ``options`` may be a local worker count.

    ``progress`` is ``(study name, total runs, runs already done)`` for a tqdm bar, or False."""
    if not isinstance(options, ExecutorOptions):
        options = ExecutorOptions(workers=options)
    records: dict[str, dict[str, Any]] = {}
    if not pending:
        return records
    bar = None
    if progress:
        from tqdm.auto import tqdm

        name, total, done = progress
        bar = tqdm(total=total, initial=done, desc=name, unit="run", dynamic_ncols=True)

    def on_done(spec: RunSpec, record: dict[str, Any] | None) -> None:
        if record is None:
            return
        records[spec.run_id] = record
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{spec.run_id}: {record.get('status')}")

    cores = available_cores()
    try:
        with _sigterm_interrupts():
            if options.executor == "local" and min(options.workers or cores, len(pending)) == 1:
                set_threads(options.threads)
                for spec in pending:
                    on_done(spec, execute_run(run_fn, spec, str(runs_dir)))
            else:
                run_packs(make_backend(options, len(pending), cores), pending, run_fn, runs_dir, on_done)
    finally:
        if bar is not None:
            bar.close()
    return records


def write_tables(study: Study, specs: Sequence[RunSpec], out: Path) -> list[dict[str, Any]]:
    """Gather the rows of every run and write ``results.csv`` and ``results.json``; returns the rows."""
    rows = gather_rows(study, specs, out / "runs")
    axes_keys = study.axes_keys
    write_csv_atomic(out / "results.csv", rows, result_columns(rows, axes_keys))
    summary = {"study": study.name, "description": study.description, "axes": axes_keys, "rows": rows}
    write_json_atomic(out / "results.json", summary)
    return rows
