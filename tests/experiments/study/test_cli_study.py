"""``difflab study`` at the command line: exit status of failed runs, study identity, safe run ids, shards,
gather, missing extras, two commands on one --out, and workers that die with the study process."""

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

import difflab.experiments.kind as kind_module
from difflab.cli import main
from difflab.experiments.study import executors

ROOT = Path(__file__).resolve().parents[3]
TINY = """
[study]
name = "{name}"
[fixed]
"data.name" = "mixture8"
"data.n_train" = 512
"data.n_test" = 256
"model.hidden" = 16
"model.layers" = 2
"train.steps" = {steps}
"train.batch_size" = 64
"train.log_every" = 5
"train.checkpoint_every" = 5
"eval.n_samples" = 128
"eval.steps" = 8
"eval.nll" = false
"eval.also_ancestral" = false
"eval.n_nelbo" = 64
"eval.nelbo_t_draws" = 2
"eval.kde_n_eval" = 128
"objective.weighting" = "nelbo"
[axes]
"objective.target" = ["eps", "v"]
"train.seed" = {seeds}
"""


def _write(tmp_path: Path, name: str = "tiny", steps: int = 10, seeds: str = "[0]", extra: str = "") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY.format(name=name, steps=steps, seeds=seeds) + extra)
    return str(path)


def _fake_run(kind: str, config: dict, run_dir: str) -> dict:
    """A stand-in for training: fails for the marker learning rate 0.0123, else returns a KL."""
    pipeline = kind_module.get_kind(kind)
    Path(run_dir, "config.json").write_text(json.dumps(pipeline.to_dict(pipeline.parse(config))))
    if config["train"].get("lr") == 0.0123:
        raise RuntimeError("out of cheese")
    return {"status": "finished", "kl": float(config["train"].get("seed", 7)) + 0.5, "steps": 1}


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(kind_module, "run_by_kind", _fake_run)


def _csv(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_failed_runs_exit_nonzero_with_reasons(tmp_path, fake, capsys):
    study = _write(
        tmp_path,
        extra='[[extra]]\nlabel = "bad"\n"train.lr" = 0.0123\naxes = { "objective.target" = ["v"] }\n',
    )
    out = tmp_path / "out"
    args = ["study", study, "--out", str(out), "--workers", "1"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "difflab: run bad__v failed: RuntimeError: out of cheese" in err
    assert "1 of 3 runs failed" in err and "rerunning will not help" not in err
    rows = _csv(out)
    assert [r["status"] for r in rows] == ["finished", "finished", "error"]
    assert main(args) == 1  # the same failure again: now the message says what to do
    err = capsys.readouterr().err
    assert "failed the same way on 2 attempts, so rerunning will not help" in err
    assert str(out / "runs" / "bad__v" / "result.json") in err
    assert json.loads((out / "runs" / "bad__v" / "result.json").read_text())["repeats"] == 2


def test_different_study_in_an_existing_out_is_refused(tmp_path, fake, capsys):
    out = tmp_path / "out"
    assert main(["study", _write(tmp_path, "first"), "--out", str(out), "--workers", "1"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    for study, message in [
        (_write(tmp_path, "second"), "holds the results of study 'first'"),
        (_write(tmp_path, "first", steps=11), "made from a different config"),
    ]:
        assert main(["study", study, "--out", str(out), "--workers", "1"]) == 2
        assert message in capsys.readouterr().err
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing changed
    # the same study with one more seed adds runs to its own directory
    assert (
        main(["study", _write(tmp_path, "first", seeds="[0, 1]"), "--out", str(out), "--workers", "1"]) == 0
    )


def test_labels_and_names_never_leave_out(tmp_path, fake, capsys, monkeypatch):
    long = "L" * 300
    extra = '[[extra]]\nlabel = "../../escape"\naxes = { "objective.target" = ["v"] }\n'
    extra += f'[[extra]]\nlabel = "{long}"\naxes = {{ "objective.target" = ["v"] }}\n'
    study = _write(tmp_path, extra=extra)
    out = tmp_path / "a" / "out"
    before = _files(tmp_path)
    assert main(["study", study, "--out", str(out), "--workers", "1"]) == 0
    created = _files(tmp_path) - before
    assert all(c == "a" or c.startswith(os.path.join("a", "out")) for c in created)
    runs = sorted(os.listdir(out / "runs"))
    assert "escape__v" in runs
    (hashed,) = [r for r in runs if r.startswith("LLL")]
    assert len(hashed) <= 120 and hashed.endswith(hashed[-16:]) and hashed[-17] == "-"
    # a study *name* with a path in it: the default output directory is runs/<safe name> in the cwd
    named = tmp_path / "named.toml"
    named.write_text(Path(study).read_text().replace('name = "tiny"', 'name = "../../../outside"'))
    monkeypatch.chdir(tmp_path / "a")
    assert main(["study", str(named), "--workers", "1", "--dry-run"]) == 0
    assert main(["study", str(named), "--workers", "1"]) == 0
    assert (tmp_path / "a" / "runs" / "outside" / "results.csv").is_file()
    assert not (tmp_path.parent / "outside").exists() and not (tmp_path / "outside").exists()


def test_shards_and_gather(tmp_path, fake, capsys):
    study = _write(tmp_path, seeds="[0, 1, 2]")
    out = tmp_path / "out"
    base = ["study", study, "--out", str(out), "--workers", "1"]
    assert main([*base, "--shard", "0/2"]) == 0
    printed = capsys.readouterr().out
    assert "3 runs have no result yet" in printed and "--gather" in printed
    mine = {r["run_id"] for r in _csv(out) if r["status"] == "finished"}
    assert len(mine) == 3
    assert main([*base, "--gather"]) == 0
    assert "3 runs have no result yet" in capsys.readouterr().out
    assert main([*base, "--shard", "1/2"]) == 0
    rows = _csv(out)
    assert [r["status"] for r in rows] == ["finished"] * 6
    assert "no result yet" not in capsys.readouterr().out
    assert all(len((out / "runs" / r["run_id"] / "run.log").read_text().splitlines()) == 2 for r in rows)
    for bad, message in [("2/2", "0 <= I < N"), ("x", "expected I/N")]:
        fresh = tmp_path / f"fresh{bad.replace('/', '')}"
        assert main(["study", study, "--out", str(fresh), "--shard", bad]) == 2
        assert message in capsys.readouterr().err and not fresh.exists()


@pytest.mark.parametrize(("executor", "extra"), [("dask", "dask"), ("slurm", "slurm")])
def test_missing_extra_is_named(tmp_path, monkeypatch, capsys, executor, extra):
    monkeypatch.setattr(executors.importlib.util, "find_spec", lambda name: None)
    out = tmp_path / "out"
    assert main(["study", _write(tmp_path), "--out", str(out), "--executor", executor]) == 2
    assert f"pip install 'difflab[{extra}]'" in capsys.readouterr().err
    assert not out.exists()


def test_slurm_without_slurm_and_misplaced_flags(tmp_path, capsys):
    out = tmp_path / "out"
    study = _write(tmp_path)
    if not any(Path(d, "sbatch").exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
        assert main(["study", study, "--out", str(out), "--executor", "slurm"]) == 2
        assert "--cluster local tries the study without Slurm" in capsys.readouterr().err
    assert main(["study", study, "--out", str(out), "--partition", "gpu"]) == 2
    assert "--partition is for --executor slurm" in capsys.readouterr().err
    assert main(["study", study, "--out", str(out), "--scheduler", "tcp://x:1"]) == 2
    assert "--scheduler is for --executor dask" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------- real processes


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "difflab.cli", "study", *args]


def _metrics(out: Path) -> list[dict[str, str]]:
    rows = _csv(out)
    # wall-clock columns (seconds, and the curve's cost as a share of them) are not numbers the code computes
    return [{k: v for k, v in r.items() if "seconds" not in k and k != "curve_overhead_pct"} for r in rows]


@pytest.mark.slow
def test_two_commands_on_one_out_run_each_run_once(tmp_path, one_thread):
    study = _write(tmp_path, seeds="[0, 1]")
    out, serial = tmp_path / "out", tmp_path / "serial"
    procs = [
        subprocess.Popen(
            _cli(study, "--out", str(out), "--workers", "1", "--threads", "1"),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    logs = {d.name: (d / "run.log").read_text().split("\n") for d in (out / "runs").iterdir()}
    assert len(logs) == 4
    assert all(sum(" start " in line for line in lines) == 1 for lines in logs.values()), logs
    pids = {
        line.split("pid=")[1].split()[0] for lines in logs.values() for line in lines if " start " in line
    }
    assert pids <= {str(p.pid) for p in procs}
    assert main(["study", study, "--out", str(out), "--gather"]) == 0
    assert main(["study", study, "--out", str(serial), "--workers", "1", "--threads", "1"]) == 0
    assert _metrics(out) == _metrics(serial)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_die_with_the_study_process(tmp_path, sig):
    study = _write(tmp_path, steps=10**6)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _cli(study, "--out", str(out), "--workers", "2"),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    claims = [out / "runs" / r / "claim.json" for r in ("eps__s0", "v__s0")]
    deadline = time.time() + 300
    while time.time() < deadline and not all(c.exists() for c in claims):
        time.sleep(0.2)
    workers = [json.loads(c.read_text())["pid"] for c in claims]
    assert proc.pid not in workers and all(_alive(w) for w in workers)
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers)
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and "interrupted" in proc.stderr.read()
