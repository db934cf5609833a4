"""What runs on a worker, wherever it is: claim a run, run it, write its ``result.json`` and ``run.log``.

:func:`execute_pack` is the one function every executor calls (a local process pool, a Dask worker, a Slurm
array task): it caps the intra-op threads, and for each run of its pack claims the run directory
(:mod:`difflab.experiments.study.claims`), skips a run another worker finished meanwhile, runs
``run_fn(config, run_dir)``, records the result and releases the claim. ``run.log`` gets one ``start`` and
one ``end`` line per attempt, so that exactly-once execution can be counted from the files.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import os
import shutil
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from difflab import __version__
from difflab.experiments.common.rundir import write_json_atomic
from difflab.experiments.study.claims import Claim, describe, read_claim, try_claim
from difflab.experiments.study.results import DONE_STATUSES, read_record
from difflab.experiments.study.spec import RunSpec

RunFn = Callable[[dict, str], Mapping[str, Any]]
CLAIMED = "claimed"  # status of a run that a live worker elsewhere holds (not written to result.json)
ALREADY_DONE = "already-done"  # finished (by another worker, or before a requeue) since planning

#: files of a run directory that belong to the run itself rather than to what it computed (not copied)
OWN_FILES = frozenset(
    {"claim.json", "claim.json.takeover", "run.log", "result.json", "config.json", "checkpoint.pt"}
)

_STOP_EVENT: Any = None  # set in local pool workers by init_local_worker


def set_threads(threads: int | None) -> None:
    """Cap intra-op threads (torch, OpenMP, MKL) of this process; None leaves them alone."""
    if not threads:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def watch_parent(poll_s: float = 1.0) -> None:
    """Make this process die with its parent: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux, and (anywhere)
    a daemon thread that exits the process once ``os.getppid()`` changes (the parent died, we were
    re-parented). A ``kill -9`` of the study leaves no worker training or idle."""
    ppid = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != ppid:  # the parent died before prctl took effect
        os._exit(1)

    def poll() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != ppid:
                os._exit(1)

    threading.Thread(target=poll, daemon=True, name="difflab-parent-watch").start()


def init_local_worker(threads: int, stop_event: Any) -> None:
    """Initializer of a local pool worker: thread caps, the stop flag, die with the parent."""
    global _STOP_EVENT
    _STOP_EVENT = stop_event
    watch_parent()
    set_threads(threads)


def _log(run_dir: Path, text: str) -> None:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with open(run_dir / "run.log", "a") as f:
        f.write(f"{stamp} {text}\n")


def _base(spec: RunSpec) -> dict[str, Any]:
    return {
        "run_id": spec.run_id,
        "label": spec.label,
        "axes": spec.axes,
        "config_hash": spec.config_hash,
        "difflab_version": __version__,
        "host": socket.gethostname(),
    }


def make_record(spec: RunSpec, out: Any, seconds: float) -> dict[str, Any]:
    """The result.json of a run whose ``run_fn`` returned ``out``."""
    if not isinstance(out, Mapping):
        raise TypeError(f"run_fn returned {type(out).__name__}, expected a dict of metrics with a 'status'")
    metrics = {k: v for k, v in out.items() if k not in ("status", "seconds", "steps")}
    return {
        **_base(spec),
        "status": str(out.get("status", "finished")),
        "metrics": metrics,
        "seconds": out.get("seconds", round(seconds, 3)),
        "steps": out.get("steps"),
    }


def error_record(
    spec: RunSpec, err: BaseException, seconds: float, previous: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The result.json of a failed run; ``repeats`` counts consecutive attempts failing with this error."""
    reason = f"{type(err).__name__}: {err}"
    repeats = 1
    if previous and previous.get("status") == "error" and previous.get("error") == reason:
        repeats = int(previous.get("repeats", 1)) + 1
    return {
        **_base(spec),
        "status": "error",
        "error": reason,
        "repeats": repeats,
        "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
        "metrics": {},
        "seconds": round(seconds, 3),
        "steps": None,
    }


def _claim_pending(
    spec: RunSpec, runs_dir: str
) -> tuple[Path, Claim | None, dict[str, Any] | None, dict[str, Any] | None]:
    """(run dir, claim, previous result.json, status): the claim on a run still to do, else claim None and
    the status to return (CLAIMED: a live worker holds it; ALREADY_DONE: finished since planning)."""
    run_dir = Path(runs_dir) / spec.run_id
    claim = try_claim(run_dir)
    if claim is None:
        return (
            run_dir,
            None,
            None,
            {"run_id": spec.run_id, "status": CLAIMED, "owner": describe(read_claim(run_dir))},
        )
    previous = read_record(run_dir)
    if previous is not None and previous.get("status") in DONE_STATUSES:
        claim.release()
        return run_dir, None, previous, {"run_id": spec.run_id, "status": ALREADY_DONE}
    return run_dir, claim, previous, None


def execute_run(run_fn: RunFn, spec: RunSpec, runs_dir: str) -> dict[str, Any] | None:
    """Claim, run and record one spec. None if the study was stopped; status CLAIMED / ALREADY_DONE when
    another worker holds or finished the run; else the record written to result.json (errors included)."""
    if _STOP_EVENT is not None and _STOP_EVENT.is_set():
        return None
    run_dir, claim, previous, status = _claim_pending(spec, runs_dir)
    if claim is None:
        return status
    try:
        if not (run_dir / "config.json").exists():  # an existing one is the run's: its kind checks reuse
            write_json_atomic(run_dir / "config.json", spec.config)
        checkpoint = "yes" if (run_dir / "checkpoint.pt").exists() else "no"
        taken = f" took_over={describe(claim.took_over)}" if claim.took_over else ""
        _log(run_dir, f"start host={claim.owner['host']} pid={os.getpid()} checkpoint={checkpoint}{taken}")
        start = time.perf_counter()
        try:
            out = run_fn(copy.deepcopy(spec.config), str(run_dir))
            record = make_record(spec, out, time.perf_counter() - start)
        except Exception as err:
            record = error_record(spec, err, time.perf_counter() - start, previous)
        write_json_atomic(run_dir / "result.json", record)
        _log(run_dir, f"end status={record['status']} seconds={record['seconds']}")
        return record
    finally:
        claim.release()


def copy_run(spec: RunSpec, source: RunSpec, runs_dir: str) -> dict[str, Any] | None:
    """Give ``spec`` the result of ``source``, a finished run that computes the same thing (the run kind's
    ``same_run_key``), instead of training it: every output of the source but its checkpoint (which records
    the source's config; it stays in the source's directory) is copied, and result.json is the source's with
    this run's id, config hash and ``copy_of``. Claimed like a run (CLAIMED / ALREADY_DONE as in
    :func:`execute_run`); a checkpoint left by an earlier partial attempt of this run is removed, so the
    directory holds one computation. result.json is written last: an interrupted copy is not a result."""
    if _STOP_EVENT is not None and _STOP_EVENT.is_set():
        return None
    run_dir, claim, _, status = _claim_pending(spec, runs_dir)
    if claim is None:
        return status
    source_dir = Path(runs_dir) / source.run_id
    try:
        source_record = read_record(source_dir)
        if source_record is None or source_record.get("status") not in DONE_STATUSES:
            raise ValueError(f"{source_dir} has no finished result to copy")
        for item in sorted(source_dir.iterdir()):
            if item.name in OWN_FILES:
                continue
            if item.is_dir():
                shutil.copytree(item, run_dir / item.name, dirs_exist_ok=True)
            else:
                shutil.copy2(item, run_dir / item.name)
        with contextlib.suppress(FileNotFoundError):
            (run_dir / "checkpoint.pt").unlink()
        write_json_atomic(run_dir / "config.json", spec.config)
        record = {**source_record, **_base(spec), "copy_of": source.run_id}
        write_json_atomic(run_dir / "result.json", record)
        _log(run_dir, f"copied from {source.run_id} (the same computation); its checkpoint stays there")
        return record
    finally:
        claim.release()


def execute_pack(
    run_fn: RunFn, specs: Sequence[RunSpec], runs_dir: str, threads: int | None = None
) -> list[dict[str, Any] | None]:
    """Run several specs one after another in this process (a Slurm array task packs several)."""
    set_threads(threads)
    return [execute_run(run_fn, spec, runs_dir) for spec in specs]
