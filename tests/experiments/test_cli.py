"""The CLI end to end: a small study runs, resumes, writes its table, report and plots; bad input exits 2."""

import json
import os
import subprocess
import sys

import pytest

from difflab.cli import main

TINY = [
    "data.n_train=2000",
    "data.n_test=600",
    "model.hidden=32",
    "model.layers=2",
    "train.steps=40",
    "train.batch_size=128",
    "train.log_every=20",
    "train.checkpoint_every=20",
    "eval.n_samples=300",
    "eval.steps=12",
    "eval.n_nll=40",
    "eval.n_nelbo=100",
    "eval.nelbo_t_draws=4",
    "eval.kde_n_eval=500",
    "eval.nll_rtol=1e-3",
    "data.name=mixture8",
    "objective.weighting=nelbo",
    'objective.target=["eps", "v"]',
]


def _sets(items):
    out = []
    for item in items:
        out += ["--set", item]
    return out


def test_study_list_and_dry_run(capsys):
    assert main(["study", "--list"]) == 0
    listed = capsys.readouterr().out
    for name in ("default", "paper", "loss-comparison-2d"):
        assert name in listed
    assert main(["study", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "26" in out or out.count("mixture8") >= 13  # 2 sets x 4 targets x 3 scalings + oracle


def test_tiny_study_runs_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "study")
    args = ["study", "default", "--out", out, "--workers", "1", *_sets(TINY)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "kl" in table
    with open(os.path.join(out, "results.csv")) as f:
        lines = f.read().strip().splitlines()
    assert len(lines) == 1 + 3  # header + eps, v, oracle
    assert all(",finished," in line for line in lines[1:])
    assert os.path.exists(os.path.join(out, "report.md"))
    pngs = os.listdir(os.path.join(out, "figures"))
    assert any(p.startswith("samples_mixture8") for p in pngs)
    oracle = next(d for d in os.listdir(os.path.join(out, "runs")) if d.startswith("oracle"))
    with open(os.path.join(out, "runs", oracle, "result.json")) as f:
        kl = json.load(f)["metrics"]["kl"]
    assert abs(kl) < 0.05  # the exact denoiser: KL ~ 0 up to solver tolerance and MC error (40 points)
    # sample and evaluate a finished run from its directory
    eps_run = os.path.join(out, "runs", next(d for d in os.listdir(os.path.join(out, "runs")) if "eps" in d))
    npz = str(tmp_path / "s.npz")
    assert main(["sample", eps_run, "--sampler", "ode_heun", "--steps", "5", "--n", "64", "--out", npz]) == 0
    import numpy as np

    with np.load(npz) as z:
        assert z["samples"].shape == (64, 2) and np.isfinite(z["samples"]).all()
    capsys.readouterr()
    assert main(["evaluate", eps_run]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    with open(os.path.join(eps_run, "result.json")) as f:
        recorded = json.load(f)["metrics"]
    assert evaluated["nll"] == pytest.approx(recorded["nll"], rel=1e-9)  # same seeds, same figures
    # a rerun finds every run finished and trains nothing
    mtimes = {
        d: os.path.getmtime(os.path.join(out, "runs", d, "result.json")) for d in os.listdir(out + "/runs")
    }
    assert main(args) == 0
    for d, m in mtimes.items():
        assert os.path.getmtime(os.path.join(out, "runs", d, "result.json")) == m


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "train.stepz=3"], "unknown key 'train.stepz'"),
        (["--set", "objective.target=noise"], "unknown target 'noise'"),
        (["--set", "train.steps=lots"], "train.steps: expected an integer"),
    ],
)
def test_bad_study_input_exits_2_and_writes_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    assert main(["study", "default", "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unknown_study_and_missing_files(tmp_path, capsys):
    assert main(["study", "no-such-study"]) == 2
    assert "default" in capsys.readouterr().err  # lists the available studies
    assert main(["train", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["study", "default", "--out", str(blocker / "out"), *_sets(TINY)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_train_config_errors(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nwidth = 3\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "unknown key 'model.width'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    cfg.write_text("[model\n")
    assert main(["train", str(cfg)]) == 2
    assert "invalid TOML" in capsys.readouterr().err


def test_unknown_kind_is_a_clear_error(tmp_path, capsys):
    study = tmp_path / "s.toml"
    study.write_text('[study]\nkind = "audio"\n[axes]\n"train.seed" = [0]\n')
    assert main(["study", str(study), "--out", str(tmp_path / "out")]) == 2
    assert "unknown study kind 'audio'; valid study kinds: images, samplers, toy2d" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_closed_stdout_pipe_ends_quietly():
    """`difflab study loss-comparison-2d --dry-run | head -1`: the reader closes the pipe; no error message,
    no traceback, exit 1 (Python's convention for EPIPE), instead of "cannot access: Broken pipe" (exit 2)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "difflab.cli", "study", "loss-comparison-2d", "--dry-run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # before the child has written anything: every write meets a closed pipe
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == 1, stderr
    assert "error" not in stderr and "Traceback" not in stderr and "Exception ignored" not in stderr
