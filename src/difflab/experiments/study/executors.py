"""The executor seam: any :class:`concurrent.futures.Executor` runs a study's packs of runs.

The engine submits ``worker.execute_pack(run_fn, specs, runs_dir, threads)`` once per pack and gathers the
futures with :func:`concurrent.futures.as_completed`; everything a run leaves is on the shared filesystem, so
an executor needs nothing but ``submit``. Three are built in (:func:`make_backend`):

- ``local``: a ``ProcessPoolExecutor`` of "spawn" workers, one run per pack; each worker caps its threads to
  ``cores // workers``, watches a stop flag, and dies with the study process.
- ``dask``: ``distributed.Client(ADDRESS).get_executor()`` (a scheduler started elsewhere, e.g. by
  dask-jobqueue), or a ``LocalCluster`` of ``workers`` one-thread worker processes; one run per pack, so idle
  workers pull the next run.
- ``slurm``: submitit job arrays (:mod:`difflab.experiments.study.slurm`), several runs per array task.

An executor that can submit many calls at once (a job array) may offer
``submit_batch(fn, arglists) -> list[Future]``; the engine uses it when present.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import multiprocessing as mp
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflab.experiments.common.rundir import write_json_atomic
from difflab.experiments.study.claims import describe, is_stale, read_claim
from difflab.experiments.study.plan import StudyError
from difflab.experiments.study.results import DONE_STATUSES, read_record
from difflab.experiments.study.spec import RunSpec
from difflab.experiments.study.worker import (
    ALREADY_DONE,
    CLAIMED,
    RunFn,
    error_record,
    execute_pack,
    init_local_worker,
)

EXECUTORS = ("local", "dask", "slurm")
OnDone = Callable[[RunSpec, "dict[str, Any] | None"], None]


@dataclass
class ExecutorOptions:
    """How to run a study's runs: the executor and its settings (CLI flags of ``difflab study``)."""

    executor: str = "local"
    workers: int | None = None  # local pool / LocalCluster processes (default: one per core)
    threads: int | None = None  # intra-op threads per run (default: cores // workers; Slurm: cpus)
    scheduler: str | None = None  # dask scheduler address; None starts a LocalCluster
    slurm: dict[str, Any] = field(default_factory=dict)  # see slurm.SLURM_OPTIONS


@dataclass
class Backend:
    """A built executor: ``pack_size`` runs per submitted call, ``threads`` per run, and how to stop it."""

    executor: cf.Executor
    pack_size: int = 1
    threads: int | None = None
    abort: Callable[[], None] = lambda: None
    close: Callable[[], None] = lambda: None


def missing_extra(extra: str, module: str) -> StudyError:
    return StudyError(
        f"--executor {extra} needs the optional package {module!r}: pip install 'difflab[{extra}]'"
    )


def local_backend(workers: int, threads: int) -> Backend:
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    executor = cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=init_local_worker, initargs=(threads, stop)
    )

    def abort() -> None:
        stop.set()
        processes = list(getattr(executor, "_processes", {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        for proc in processes:
            proc.join(timeout=5)

    return Backend(executor, 1, None, abort, lambda: executor.shutdown(wait=True))


def dask_backend(scheduler: str | None, workers: int, threads: int) -> Backend:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise missing_extra("dask", "distributed") from None
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise StudyError(f"cannot reach the dask scheduler at {scheduler}: {err}") from None
    else:
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)

    def close() -> None:
        client.close()
        if cluster is not None:
            cluster.close()

    return Backend(client.get_executor(), 1, threads, close, close)


def preflight(options: ExecutorOptions) -> None:
    """StudyError now, before anything is written, if ``options`` cannot work: an unknown executor, a missing
    extra, or ``--executor slurm`` where there is no Slurm (and no local / debug cluster asked for)."""
    if options.executor not in EXECUTORS:
        raise StudyError(f"unknown executor {options.executor!r}; valid executors: {', '.join(EXECUTORS)}")
    if options.threads is not None and options.threads < 1:
        raise StudyError(f"--threads must be at least 1, got {options.threads}")
    if options.executor == "dask" and importlib.util.find_spec("distributed") is None:
        raise missing_extra("dask", "distributed")
    if options.executor == "slurm":
        if importlib.util.find_spec("submitit") is None:
            raise missing_extra("slurm", "submitit")
        cluster = options.slurm.get("cluster") or "slurm"
        if cluster not in ("slurm", "local", "debug"):
            raise StudyError(f"--cluster must be slurm, local or debug, got {cluster!r}")
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise StudyError(
                "--executor slurm: no sbatch on this machine (run it on a Slurm login node; "
                "--cluster local tries the study without Slurm)"
            )


def make_backend(options: ExecutorOptions, n_pending: int, cores: int) -> Backend:
    """Build the executor of ``options`` for ``n_pending`` runs on a machine with ``cores`` cores."""
    if options.executor not in EXECUTORS:
        raise StudyError(f"unknown executor {options.executor!r}; valid executors: {', '.join(EXECUTORS)}")
    workers = max(1, min(options.workers or cores, n_pending or 1))
    threads = options.threads or max(1, cores // workers)
    if options.executor == "local":
        return local_backend(workers, threads)
    if options.executor == "dask":
        # a remote worker runs one task per thread by default: one intra-op thread per run unless told
        remote = 1 if options.scheduler else threads
        return dask_backend(options.scheduler, workers, options.threads or remote)
    try:
        from difflab.experiments.study.slurm import slurm_backend
    except ImportError:
        raise missing_extra("slurm", "submitit") from None
    executor, runs_per_task, run_threads = slurm_backend(options.slurm, n_pending, options.threads)
    return Backend(executor, runs_per_task, run_threads, executor.cancel_all, lambda: None)


def packs_of(specs: Sequence[RunSpec], size: int) -> list[list[RunSpec]]:
    """Consecutive packs of ``size`` runs (the last may be shorter)."""
    size = max(1, size)
    return [list(specs[i : i + size]) for i in range(0, len(specs), size)]


def _submit(executor: cf.Executor, arglists: list[tuple]) -> list[cf.Future]:
    batch = getattr(executor, "submit_batch", None)
    if callable(batch):
        return list(batch(execute_pack, arglists))
    return [executor.submit(execute_pack, *args) for args in arglists]


def _pack_failed(spec: RunSpec, runs_dir: Path, err: BaseException) -> dict[str, Any]:
    """The record of a run whose pack died (worker killed, unpicklable call, failed job)."""
    run_dir = runs_dir / spec.run_id
    record = read_record(run_dir)
    if record is not None and record.get("status") in DONE_STATUSES:
        return record
    claim = read_claim(run_dir)
    if claim is not None and not is_stale(claim):
        return {"run_id": spec.run_id, "status": CLAIMED, "owner": describe(claim)}
    record = error_record(spec, err, 0.0, record)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "result.json", record)
    return record


def run_packs(backend: Backend, pending: Sequence[RunSpec], run_fn: RunFn, runs_dir: Path, on_done: OnDone):
    """Submit ``pending`` in packs and report each run to ``on_done`` as its pack completes.

    On Ctrl-C (or any failure of the engine itself) queued work is cancelled and the backend aborted (local
    workers terminated, a LocalCluster closed, Slurm jobs cancelled) before the exception propagates; runs
    that finished keep their result.json, and a run cut short keeps its checkpoint and a stale claim."""
    packs = packs_of(pending, backend.pack_size)
    futures: dict[cf.Future, list[RunSpec]] = {}
    try:
        arglists = [(run_fn, pack, str(runs_dir), backend.threads) for pack in packs]
        futures = dict(zip(_submit(backend.executor, arglists), packs))
        for future in cf.as_completed(futures):
            pack = futures[future]
            try:
                records = list(future.result())
            except KeyboardInterrupt:
                raise
            except BaseException as err:
                records = [_pack_failed(spec, runs_dir, err) for spec in pack]
            for spec, record in zip(pack, records):
                if record is not None and record.get("status") == ALREADY_DONE:
                    record = read_record(runs_dir / spec.run_id)
                on_done(spec, record)
    except BaseException:
        for future in futures:
            future.cancel()
        backend.abort()
        raise
    backend.close()
