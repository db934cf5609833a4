"""Studies past one process: claims, shards, the Dask and submitit executors, a killed worker's takeover.

Every executor must give a results.csv identical, in every metric column, to a serial run, and run each run
exactly once (one ``start`` line in its ``run.log``)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.experiments.study.scaleout_fns import accept, torch_run

from difflab.experiments.study import claims
from difflab.experiments.study.engine import run_study, shard_of
from difflab.experiments.study.executors import ExecutorOptions
from difflab.experiments.study.spec import expand, load_study

ROOT = Path(__file__).resolve().parents[3]
STUDY = """
[study]
name = "scale"
[fixed]
"train.steps" = 6
[axes]
"train.lr" = [0.01, 0.05, 0.1]
"train.seed" = [0, 1]
"""
METRICS = ["loss", "w0"]  # torch_run's metrics; "threads" differs by design between executors


def _study(tmp_path: Path, text: str = STUDY):
    path = tmp_path / "scale.toml"
    path.write_text(text)
    return load_study(path, tmp_path), path


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _metric_table(out: Path) -> list[tuple]:
    return [(r["run_id"], r["status"], *(r[m] for m in METRICS)) for r in _rows(out)]


def _starts(out: Path) -> dict[str, int]:
    return {
        p.parent.name: sum(line.split()[1] == "start" for line in p.read_text().splitlines())
        for p in out.glob("runs/*/run.log")
    }


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


# ----------------------------------------------------------------------------------------------- claims


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claim_is_exclusive_and_stale_claims_are_taken_over(tmp_path, monkeypatch):
    run_dir = tmp_path / "r"
    first = claims.try_claim(run_dir)
    assert first is not None and first.took_over is None
    assert claims.try_claim(run_dir) is None  # held by a live process (this one)
    first.release()
    assert not (run_dir / "claim.json").exists()
    # A dead pid on this host: taken over at once, and the stale owner is recorded.
    dead = _dead_pid()
    (run_dir / "claim.json").write_text(json.dumps({**claims.owner_record(), "pid": dead}))
    second = claims.try_claim(run_dir)
    assert second is not None and second.took_over["pid"] == dead
    assert json.loads((run_dir / "claim.json").read_text())["pid"] == os.getpid()
    second.release()
    # Another host: live while its heartbeat is fresh, stale once it is older than stale_after().
    other = {**claims.owner_record(), "host": "elsewhere", "pid": 1}
    (run_dir / "claim.json").write_text(json.dumps(other))
    assert claims.try_claim(run_dir) is None
    monkeypatch.setenv(claims.STALE_ENV, "30")
    old = time.time() - 31
    os.utime(run_dir / "claim.json", (old, old))
    third = claims.try_claim(run_dir)
    assert third is not None and third.took_over["host"] == "elsewhere"
    third.release()
    # The same Slurm array task, requeued after preemption (another pid, another node): its own claim.
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    (run_dir / "claim.json").write_text(json.dumps({**other, "job": "77_3", "restart": 0}))
    assert claims.try_claim(run_dir) is None  # a live sibling worker of this same task (no requeue yet)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert claims.try_claim(run_dir) is not None  # requeued: the claim of the first incarnation is ours
    (run_dir / "claim.json").write_text(json.dumps({**other, "job": "77_4", "restart": 0}))
    assert claims.try_claim(run_dir) is None  # another task of the array, alive


def test_heartbeat_refreshes_the_claim(tmp_path):
    claim = claims.try_claim(tmp_path / "r", heartbeat=0.05)
    old = time.time() - 1000
    os.utime(claim.path, (old, old))
    time.sleep(0.3)
    assert time.time() - claim.path.stat().st_mtime < 5
    claim.release()


# ----------------------------------------------------------------------------------------------- shards


def test_shards_are_disjoint_covering_balanced_and_order_free(tmp_path):
    specs = expand(_study(tmp_path)[0])
    ids = [s.run_id for s in specs]
    for n in (1, 2, 4, 7):
        slices = [[s.run_id for s in shard_of(specs, i, n)] for i in range(n)]
        assert sorted(i for sl in slices for i in sl) == sorted(ids)  # covering, and disjoint (no id twice)
        assert max(map(len, slices)) - min(map(len, slices)) <= 1
        # the assignment depends on the run ids only, not on their order
        assert [[s.run_id for s in shard_of(specs[::-1], i, n)] for i in range(n)] == [
            s[::-1] for s in slices
        ]
    for bad in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="0 <= I < N"):
            shard_of(specs, *bad)


# --------------------------------------------------------------------------------------- executors


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("serial")
    out = tmp / "out"
    run_study(_study(tmp)[0], run_fn=torch_run, validate_fn=accept, out_dir=out, workers=1, progress=False)
    assert [r[1] for r in _metric_table(out)] == ["finished"] * 6
    return out


def test_two_shard_processes_match_serial(tmp_path, serial):
    _, path = _study(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tests.experiments.study.scaleout_fns", str(path), str(out)]
    procs = [subprocess.Popen([*cmd, f"{i}/2"], env=_env(), cwd=ROOT) for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert _metric_table(out) == _metric_table(serial)
    assert _starts(out) == dict.fromkeys(_starts(serial), 1)


def test_dask_local_cluster_matches_serial(tmp_path, serial):
    pytest.importorskip("distributed")
    out = tmp_path / "out"
    result = run_study(
        _study(tmp_path)[0],
        run_fn=torch_run,
        validate_fn=accept,
        out_dir=out,
        progress=False,
        executor=ExecutorOptions("dask", workers=2),
    )
    assert sorted(result.ran) == sorted(r["run_id"] for r in result.rows) and not result.failed
    assert _metric_table(out) == _metric_table(serial)
    assert _starts(out) == dict.fromkeys(_starts(serial), 1)
    assert all(r["threads"] == "1" for r in _rows(out))  # the thread cap reached the Dask workers


def test_submitit_local_job_array_matches_serial(tmp_path, serial):
    pytest.importorskip("submitit")
    out = tmp_path / "out"
    options = ExecutorOptions(
        "slurm", threads=1, slurm={"cluster": "local", "folder": str(tmp_path / "sub"), "runs_per_task": 4}
    )
    result = run_study(
        _study(tmp_path)[0],
        run_fn=torch_run,
        validate_fn=accept,
        out_dir=out,
        progress=False,
        executor=options,
    )
    assert not result.failed and len(result.ran) == 6
    assert _metric_table(out) == _metric_table(serial)
    assert _starts(out) == dict.fromkeys(_starts(serial), 1)
    pids = {line.split()[0] for p in out.glob("runs/*/steps.log") for line in p.read_text().splitlines()}
    assert len(pids) == 2  # 6 runs packed 4 + 2 into two array tasks


def test_killed_worker_claim_is_taken_over_and_run_resumes(tmp_path):
    text = '[study]\nname = "slow"\n[fixed]\n"train.steps" = 40\n"train.delay" = 0.1\n'
    text += '[axes]\n"train.seed" = [5]\n'
    _, path = _study(tmp_path, text)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tests.experiments.study.scaleout_fns", str(path), str(out)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT)
    ckpt = out / "runs" / "s5" / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpt.exists() and json.loads(ckpt.read_text())["step"] >= 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(ckpt.read_text())["step"]
    assert 3 <= killed_at < 40
    assert json.loads((out / "runs" / "s5" / "claim.json").read_text())["pid"] == proc.pid  # left behind
    result = run_study(
        load_study(path, tmp_path),
        run_fn=torch_run,
        validate_fn=accept,
        out_dir=out,
        workers=1,
        progress=False,
    )
    assert result.ran == ["s5"] and result.rows[0]["status"] == "finished"
    log = (out / "runs" / "s5" / "run.log").read_text().splitlines()
    assert [line.split()[1] for line in log] == ["start", "start", "end"]
    assert f"took_over=vm:{proc.pid}" in log[1] or f":{proc.pid} (started" in log[1]
    assert "checkpoint=yes" in log[1]
    steps = [line.split() for line in (out / "runs" / "s5" / "steps.log").read_text().splitlines()]
    resumed = [int(s) for pid, s in steps if pid == str(os.getpid())]
    assert resumed == list(range(killed_at, 40))  # continued from the checkpoint, not from step 0
    assert not (out / "runs" / "s5" / "claim.json").exists()
    fresh = tmp_path / "fresh"
    run_study(
        load_study(path, tmp_path),
        run_fn=torch_run,
        validate_fn=accept,
        out_dir=fresh,
        workers=1,
        progress=False,
    )
    assert _metric_table(out) == _metric_table(fresh)  # the resumed run is bit-identical to an unbroken one
