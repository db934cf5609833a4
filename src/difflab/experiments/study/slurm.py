"""Slurm job arrays through submitit (the ``difflab[slurm]`` extra): ``--executor slurm``.

Pending runs are packed ``runs_per_task`` to an array task (short runs amortise the queue wait and keep
arrays under ``MaxArraySize``); ``max_parallel`` caps how many tasks run at once
(``slurm_array_parallelism``). Each task is a :class:`PackTask`, a ``submitit.helpers.Checkpointable``: on
preemption or timeout submitit requeues it with the same pack (at most ``max_requeue`` times after a timeout);
the requeued task takes over its own claims (same array task id), skips the runs it finished and resumes the
one it was cut off in from that run's checkpoint. Preemption is only signalled to the job if the cluster sets
``SlurmctldParameters=preempt_send_user_signal``. submitit's folder (pickled calls, logs) lives under the
study's output directory, so it is on the shared filesystem.

``cluster`` is ``"slurm"`` (the default: fail when there is no Slurm), or submitit's ``"local"``
(subprocesses) or ``"debug"`` (in this process) to try a study without a cluster.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import submitit

from difflab.experiments.study.plan import StudyError
from difflab.experiments.study.worker import execute_pack

SLURM_OPTIONS = {
    "cluster": "slurm, local or debug",
    "folder": "submitit folder (default: <out>/slurm)",
    "partition": "Slurm partition",
    "time_min": "time limit of one array task, minutes",
    "gpus": "GPUs per task",
    "cpus": "CPUs per task (also the runs' thread count)",
    "mem_gb": "memory per task, GB",
    "max_parallel": "array tasks running at once",
    "runs_per_task": "runs packed into one array task",
    "max_requeue": "requeues after a timeout",
}


class PackTask(submitit.helpers.Checkpointable):
    """A Slurm array task: ``execute_pack``; requeued with the same arguments when preempted or timed out."""

    def __call__(self, *args: Any) -> Any:
        return execute_pack(*args)


class SubmititExecutor(cf.Executor):
    """A ``concurrent.futures`` view of a submitit executor; ``submit_batch`` submits one job array."""

    def __init__(self, executor: Any, poll_s: float = 1.0) -> None:
        self._executor = executor
        self._poll_s = poll_s
        self.jobs: list[Any] = []

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        if kwargs:
            raise TypeError("SubmititExecutor.submit takes positional arguments only")
        return self.submit_batch(fn, [args])[0]

    def submit_batch(self, fn: Callable, arglists: Sequence[tuple]) -> list[cf.Future]:
        task = PackTask() if fn is execute_pack else fn
        with self._executor.batch():
            jobs = [self._executor.submit(task, *args) for args in arglists]
        self.jobs += jobs
        futures = [cf.Future() for _ in jobs]
        for future in futures:
            future.set_running_or_notify_cancel()
        by_job = {id(job): future for job, future in zip(jobs, futures)}
        threading.Thread(target=self._watch, args=(jobs, by_job), daemon=True).start()
        return futures

    def _watch(self, jobs: list[Any], by_job: dict[int, cf.Future]) -> None:
        for job in submitit.helpers.as_completed(jobs, poll_frequency=self._poll_s):
            future = by_job[id(job)]
            try:
                future.set_result(job.result())
            except BaseException as err:
                future.set_exception(err)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            self.cancel_all()

    def cancel_all(self) -> None:
        for job in self.jobs:
            if not job.done():
                job.cancel(check=False)


def slurm_backend(
    options: dict[str, Any], n_pending: int, threads: int | None
) -> tuple[SubmititExecutor, int, int | None]:
    """(executor, runs per array task, threads per run) for ``options`` (keys of :data:`SLURM_OPTIONS`)."""
    unknown = sorted(set(options) - set(SLURM_OPTIONS))
    if unknown:
        raise StudyError(f"unknown Slurm option {unknown[0]!r}; valid: {', '.join(SLURM_OPTIONS)}")
    cluster = options.get("cluster") or "slurm"
    if cluster not in ("slurm", "local", "debug"):
        raise StudyError(f"Slurm cluster must be slurm, local or debug, got {cluster!r}")
    folder = Path(options["folder"]) / "%j"
    try:
        executor = submitit.AutoExecutor(
            folder=folder, cluster=cluster, slurm_max_num_timeout=int(options.get("max_requeue", 3))
        )
    except RuntimeError as err:
        raise StudyError(f"--executor slurm: {err} (is this a Slurm login node?)") from None
    max_parallel = int(options.get("max_parallel") or 64)
    runs_per_task = int(options.get("runs_per_task") or max(1, math.ceil(n_pending / 1000)))
    params: dict[str, Any] = {"name": "difflab-study", "slurm_array_parallelism": max_parallel}
    if options.get("time_min"):
        params["timeout_min"] = int(options["time_min"])
    if options.get("gpus"):
        params["gpus_per_node"] = int(options["gpus"])
    if options.get("cpus"):
        params["cpus_per_task"] = int(options["cpus"])
    if options.get("mem_gb"):
        params["mem_gb"] = float(options["mem_gb"])
    if options.get("partition"):
        params["slurm_partition"] = str(options["partition"])
    executor.update_parameters(**params)
    wrapped = SubmititExecutor(executor)
    run_threads = threads or (int(options["cpus"]) if options.get("cpus") else None)
    return wrapped, runs_per_task, run_threads
