"""Issue 11 item 1: a run directory is never reused under a different config.

A checkpoint carries the identity (and hash) of the config that made it; ``train`` into a directory of
another config is refused before anything is touched (or retrains with ``--overwrite``); ``sample`` and
``evaluate`` refuse a checkpoint that ``config.json`` no longer describes; the run function itself refuses,
which covers the study engine (it calls the kind's run function).
"""

from __future__ import annotations

import json

import pytest
import torch

from difflab.cli import main
from difflab.experiments.common.rundir import (
    RunDirError,
    config_diff,
    config_hash,
    config_identity,
    read_config,
)
from difflab.experiments.kind import get_kind

from .conftest import snapshot


def test_hash_ignores_label_eval_and_device_only():
    base = {"label": "a", "train": {"steps": 4, "device": "cpu"}, "eval": {"n": 5}, "model": {"h": 8}}
    same = {"label": "b", "train": {"steps": 4, "device": "cuda"}, "eval": {"n": 9}, "model": {"h": 8}}
    other = {**base, "train": {"steps": 5, "device": "cpu"}}
    assert config_hash(base) == config_hash(same)
    assert config_hash(base) != config_hash(other)
    assert config_identity(base) == {"train": {"steps": 4}, "model": {"h": 8}}
    assert config_diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 4}) == [
        "a.c: 2 -> 3",
        "d: '(none)' -> 4",
    ]


def test_checkpoint_carries_the_config_hash(trained):
    _, run = trained
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    config = read_config(run)
    assert state["config_hash"] == config_hash(config)
    assert state["config"] == config  # the full resolved config; its identity is what is hashed
    assert json.loads((run / "metrics.json").read_text())["config_hash"] == config_hash(config)


@pytest.mark.parametrize(
    ("sets", "shown"),
    [
        (["train.steps=8", "train.lr=0.05"], ["train.lr: 0.002 -> 0.05", "train.steps: 4 -> 8"]),
        (["model.hidden=16"], ["model.hidden: 8 -> 16"]),  # incompatible weights: crashed after overwriting
    ],
)
def test_train_refuses_a_run_dir_of_another_config(trained, capsys, sets, shown):
    cfg, run = trained
    before = snapshot(run)
    args = ["train", str(cfg), "--out", str(run)]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds a run of another config" in err and "--overwrite" in err
    for text in shown:
        assert text in err
    assert snapshot(run) == before  # config.json, checkpoint and metrics untouched (bytes and mtimes)


def test_overwrite_retrains_from_scratch(trained, capsys):
    cfg, run = trained
    assert main(["train", str(cfg), "--out", str(run), "--set", "train.steps=6", "--overwrite"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "finished" and result["steps"] == 6
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 6 and state["config_hash"] == config_hash(read_config(run))
    assert read_config(run)["train"]["steps"] == 6


def test_same_weights_other_eval_reevaluates(trained, capsys):
    cfg, run = trained
    ckpt = (run / "checkpoint.pt").read_bytes()
    assert main(["train", str(cfg), "--out", str(run), "--set", "eval.n_samples=60"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_samples"] == 60 and result["steps"] == 4  # the metrics of the new eval settings
    assert (run / "checkpoint.pt").read_bytes() == ckpt  # the same weights, not retrained


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_sample_and_evaluate_refuse_a_checkpoint_of_another_config(trained, capsys, command):
    _, run = trained
    config = read_config(run)
    config["train"]["steps"] = 80  # config.json no longer describes the checkpoint (old bug's end state)
    (run / "config.json").write_text(json.dumps(config))
    before = snapshot(run)
    args = [command, str(run)] + (["--n", "5", "--steps", "2"] if command == "sample" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt was trained under another config (train.steps: 4 -> 80)" in err
    assert snapshot(run) == before


def test_run_function_never_resumes_weights_of_another_config(trained):
    """What a study does when result.json is missing: it calls the kind's run function on the run dir."""
    _, run = trained
    (run / "config.json").unlink()  # only the checkpoint of the old config is left
    before = snapshot(run)
    new = get_kind("toy2d").to_dict(get_kind("toy2d").parse({}))
    new["data"].update(n_train=300, n_test=100)
    new["model"].update(hidden=8, layers=1)
    new["train"].update(steps=5, batch_size=32, log_every=1, checkpoint_every=1)
    with pytest.raises(RunDirError, match=r"trained under another config \(.*train.steps: 4 -> 5"):
        get_kind("toy2d").run(new, str(run))
    assert snapshot(run) == before
