"""Exactly-once runs on a shared filesystem: a worker claims a run directory before it runs it.

A claim is the file ``<run_dir>/claim.json``, created with ``O_CREAT | O_EXCL`` (one creator wins, on a local
filesystem and on NFSv3+ with a modern kernel; older NFS clients do not make O_EXCL atomic). It records the
owner's ``host``, ``pid``, ``start`` time and, under Slurm, its ``job`` (array job and task ids); while the
run lasts a daemon thread refreshes the file's mtime every ``HEARTBEAT_S`` seconds (the heartbeat).

A claim is *stale*, and may be taken over, when its heartbeat is older than :func:`stale_after` seconds, or
its owner is on this host and its pid is gone, or its owner is this same Slurm task before a requeue (a
smaller ``$SLURM_RESTART_COUNT``). A takeover is serialised by a second O_EXCL file,
``claim.json.takeover``, so that two workers finding the same stale claim cannot both win. The run then
resumes from its own checkpoint (the run function's contract). A run directory name is a run id, a safe file
name (see ``spec.safe_run_id``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLAIM_FILE = "claim.json"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0
STALE_ENV = "DIFFLAB_CLAIM_STALE_S"


def stale_after() -> float:
    """Seconds without a heartbeat after which a claim is stale (``$DIFFLAB_CLAIM_STALE_S``, default 120)."""
    try:
        return max(1.0, float(os.environ.get(STALE_ENV, STALE_AFTER_S)))
    except ValueError:
        return STALE_AFTER_S


def slurm_task() -> str | None:
    """``"<array job id>_<task id>"`` (or the job id) inside a Slurm job, else None."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


def _restarts() -> int:
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def owner_record() -> dict[str, Any]:
    """Who is claiming: host, pid, start time (UTC seconds), the Slurm task and its requeue count."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": time.time(),
        "job": slurm_task(),
        "restart": _restarts(),
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return False
    return True


def read_claim(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The claim of ``run_dir`` with its ``heartbeat`` (mtime), or None when unclaimed or unreadable."""
    path = Path(run_dir) / CLAIM_FILE
    try:
        heartbeat = path.stat().st_mtime
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict):
        return None
    return {**owner, "heartbeat": heartbeat}


def is_stale(claim: dict[str, Any], now: float | None = None) -> bool:
    """Whether the claim's owner is gone: stale heartbeat, a dead pid on this host, or this Slurm task."""
    now = time.time() if now is None else now
    if now - float(claim.get("heartbeat", 0.0)) > stale_after():
        return True
    me = owner_record()
    if claim.get("job") and claim.get("job") == me["job"] and int(claim.get("restart") or 0) < me["restart"]:
        return True  # this Slurm task, requeued ($SLURM_RESTART_COUNT grew): its earlier run is gone
    if claim.get("host") == me["host"]:
        pid = claim.get("pid")
        return isinstance(pid, int) and pid != me["pid"] and not _pid_alive(pid)
    return False


def describe(claim: dict[str, Any] | None) -> str:
    """``"host:pid (started 12 s ago)"`` for messages."""
    if not claim:
        return "another worker"
    age = time.time() - float(claim.get("start", time.time()))
    return f"{claim.get('host')}:{claim.get('pid')} (started {age:.0f} s ago)"


def _create(path: Path, owner: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(owner, f)
    return True


@dataclass
class Claim:
    """A held claim (heartbeat until :meth:`release`); ``took_over``: the stale claim it replaced."""

    path: Path
    owner: dict[str, Any]
    took_over: dict[str, Any] | None = None
    _stop: threading.Event | None = None

    def start_heartbeat(self, period: float = HEARTBEAT_S) -> None:
        self._stop = threading.Event()
        thread = threading.Thread(target=self._beat, args=(period,), daemon=True, name="difflab-claim")
        thread.start()

    def _beat(self, period: float) -> None:
        assert self._stop is not None
        while not self._stop.wait(period):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the claim file (only if it is still ours)."""
        if self._stop is not None:
            self._stop.set()
        current = read_claim(self.path.parent)
        if current is not None and current.get("pid") == self.owner["pid"] and (
            current.get("host") == self.owner["host"] and current.get("start") == self.owner["start"]
        ):
            with contextlib.suppress(OSError):
                self.path.unlink()


def try_claim(run_dir: str | os.PathLike[str], heartbeat: float = HEARTBEAT_S) -> Claim | None:
    """Claim ``run_dir`` (created if needed); None when a live worker holds it.

    A stale claim (see :func:`is_stale`) is taken over under the ``claim.json.takeover`` lock; a takeover
    lock left by a crashed taker is itself ignored after :func:`stale_after` seconds."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CLAIM_FILE
    owner = owner_record()
    if _create(path, owner):
        claim = Claim(path, owner)
        claim.start_heartbeat(heartbeat)
        return claim
    current = read_claim(run_dir)
    if current is not None and not is_stale(current):
        return None
    lock = run_dir / (CLAIM_FILE + ".takeover")
    try:
        if time.time() - lock.stat().st_mtime > stale_after():
            lock.unlink()
    except OSError:
        pass
    if not _create(lock, owner):
        return None  # another worker is taking it over right now
    try:
        current = read_claim(run_dir)
        if current is not None and not is_stale(current):
            return None
        try:
            path.unlink()
        except OSError as err:
            if err.errno != errno.ENOENT:
                raise
        if not _create(path, owner):
            return None
    finally:
        lock.unlink(missing_ok=True)
    claim = Claim(path, owner, took_over=current)
    claim.start_heartbeat(heartbeat)
    return claim
