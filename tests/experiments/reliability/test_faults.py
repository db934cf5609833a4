"""Issue 11 items 5 (corrupt files) and 8 (file-system errors): one message naming the file and what to do,
exit code 2, no temporary file left, nothing else changed; a rerun after the fault resumes."""

from __future__ import annotations

import errno
import json
import os
import pickle

import pytest
import torch

from difflab.cli import main
from difflab.experiments.common import overrides, rundir

from .conftest import snapshot, write_tiny

DAMAGE = {
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: os.urandom(256),
}


def _commands(run, cfg):
    return {
        "sample": ["sample", str(run), "--n", "5", "--steps", "2"],
        "evaluate": ["evaluate", str(run)],
        "train": ["train", str(cfg), "--out", str(run)],
    }


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("command", ["sample", "evaluate", "train"])
def test_corrupt_checkpoint(trained, capsys, damage, command):
    cfg, run = trained
    path = run / "checkpoint.pt"
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    before = snapshot(run)
    assert main(_commands(run, cfg)[command]) == 2
    err = capsys.readouterr().err
    assert err.count("difflab: error:") == 1
    assert f"{path} is corrupt, truncated or not a difflab checkpoint" in err and "delete it" in err
    assert snapshot(run) == before


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("command", ["sample", "evaluate", "train"])
def test_corrupt_config_json(trained, capsys, damage, command):
    cfg, run = trained
    path = run / "config.json"
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    before = snapshot(run)
    assert main(_commands(run, cfg)[command]) == 2
    err = capsys.readouterr().err
    assert err.count("difflab: error:") == 1 and f"{path}: " in err and "restore it" in err
    assert snapshot(run) == before


class _Payload:
    """Unpickling this would create a file: a checkpoint that runs code."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_checkpoint_is_loaded_weights_only(trained, capsys, tmp_path):
    _cfg, run = trained
    target = tmp_path / "pwned"
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["extra"] = {"x": _Payload(str(target))}
    with open(run / "checkpoint.pt", "wb") as f:
        pickle.dump(state, f, protocol=2)  # torch.load falls back to plain pickle for a non-zip file
    assert main(["sample", str(run), "--n", "5", "--steps", "2"]) == 2
    assert "is corrupt, truncated or not a difflab checkpoint" in capsys.readouterr().err
    assert not target.exists()  # the payload never ran


def test_checkpoint_contents_are_weights_only_types(trained):
    """What the trainer writes loads under weights_only=True (tensors, dicts, lists, numbers, strings)."""
    _, run = trained
    state = torch.load(run / "checkpoint.pt", weights_only=True)

    def walk(obj):
        if isinstance(obj, dict):
            return all(isinstance(k, str | int) and walk(v) for k, v in obj.items())
        if isinstance(obj, list | tuple):
            return all(walk(v) for v in obj)
        return obj is None or isinstance(obj, torch.Tensor | int | float | str | bool)

    assert walk(state)


def test_classifier_cache_verified_and_rebuilt(tmp_path, capsys):
    from difflab.models.classifier import load_or_train_classifier

    g = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 8, 8, generator=g) * 2 - 1
    labels = torch.arange(64) % 10
    data = dict(epochs=1, batch_size=32, feature_dim=8, verbose=True)
    _model, acc = load_or_train_classifier("tiny", (images, labels), (images, labels), tmp_path, **data)
    (cache,) = list(tmp_path.glob("classifier_tiny_*.pt"))
    good = cache.read_bytes()
    for damage in sorted(DAMAGE):
        cache.write_bytes(DAMAGE[damage](good))
        capsys.readouterr()
        _again, acc2 = load_or_train_classifier("tiny", (images, labels), (images, labels), tmp_path, **data)
        out = capsys.readouterr().out
        assert f"the classifier cache {cache} is corrupt" in out and "retraining it" in out
        assert acc2 == acc  # same seed: the same classifier again
        assert torch.load(cache, weights_only=True)["test_accuracy"] == acc  # rewritten whole
    load_or_train_classifier("tiny", (images, labels), (images, labels), tmp_path, **data)
    assert "loaded cached tiny feature classifier" in capsys.readouterr().out


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_bad_inception_file(tmp_path, capsys, damage):
    bad = tmp_path / "inception.pt"
    bad.write_bytes(DAMAGE[damage](os.urandom(1024)))
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'kind = "images"\n[data]\nn_train = 16\nn_val = 16\n[model]\nchannels = 4\nchannel_mults = [1]\n'
        "attn_resolutions = []\nnum_res_blocks = 1\n[train]\nsteps = 2\nbatch_size = 8\n"
        f'[eval]\nfeatures = "inception"\ninception_path = "{bad}"\n'
    )
    assert main(["train", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"eval.inception_path {bad}: not a readable TorchScript network" in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- item 8: file system


def test_binary_config_file(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_bytes(b"\x00\xff\xfe binary")
    assert main(["train", str(path), "--dry-run"]) == 2
    assert f"{path}: not a text file (TOML must be UTF-8 text)" in capsys.readouterr().err


def test_unreadable_config_file(tmp_path, capsys, monkeypatch):
    """Simulated (the tests may run as root, for whom chmod 000 does not stop a read)."""
    path = write_tiny(tmp_path / "c.toml")

    def denied(f):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(overrides.tomllib, "load", denied)
    assert main(["train", str(path), "--dry-run"]) == 2
    assert f"{path}: cannot read the config file: Permission denied" in capsys.readouterr().err


def test_unreadable_data_directory(tmp_path, capsys, monkeypatch):
    import difflab.data.images as images_data

    def denied(name, root=None, split="train"):
        raise PermissionError(errno.EACCES, "Permission denied", str(root))

    monkeypatch.setattr(images_data, "load_image_data", denied)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'kind = "images"\n[data]\nname = "mnist"\nroot = "{tmp_path / "data"}"\n')
    assert main(["train", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert f"cannot access {tmp_path / 'data'}: Permission denied" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_output_under_sys(tmp_path, capsys):
    cfg = write_tiny(tmp_path / "c.toml")
    assert main(["train", str(cfg), "--out", "/sys/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("difflab: error:") == 1 and "/sys" in err


def _tmp_files(root):
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".tmp")]


def test_disk_full_writing_a_checkpoint_then_resume(trained_template, tmp_path, capsys, monkeypatch):
    """ENOSPC on the second checkpoint (step 4): one message, no .tmp left; after 'freeing space' the same
    command resumes from the step-2 checkpoint and ends with exactly the weights of the uninterrupted run."""
    cfg = write_tiny(tmp_path / "c.toml")
    run = tmp_path / "run"
    real_save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) >= 2:
            with open(f, "wb") as out:
                out.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    assert main(["train", str(cfg), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {run / 'checkpoint.pt'}: No space left on device; free space" in err
    assert _tmp_files(run) == [] and torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "finished"
    resumed = torch.load(run / "checkpoint.pt", weights_only=True)
    straight = torch.load(trained_template / "checkpoint.pt", weights_only=True)
    assert resumed["step"] == straight["step"] == 4
    for a, b in zip(resumed["ema"], straight["ema"], strict=True):
        assert torch.equal(a, b)


def test_disk_full_writing_json(tmp_path, capsys, monkeypatch):
    cfg = write_tiny(tmp_path / "c.toml")
    run = tmp_path / "run"
    real_dump = json.dump

    def full_disk(obj, f, *args, **kwargs):
        if os.path.basename(f.name).startswith("metrics.json"):
            f.write('{"half": ')
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_dump(obj, f, *args, **kwargs)

    monkeypatch.setattr(rundir.json, "dump", full_disk)
    assert main(["train", str(cfg), "--out", str(run)]) == 2
    assert f"cannot write {run / 'metrics.json'}: No space left on device" in capsys.readouterr().err
    assert _tmp_files(run) == [] and not (run / "metrics.json").exists()
    monkeypatch.setattr(rundir.json, "dump", real_dump)
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"


STUDY_SETS = [
    "data.n_train=300",
    "data.n_test=100",
    "model.hidden=8",
    "model.layers=1",
    "train.steps=4",
    "train.batch_size=32",
    "train.log_every=2",
    "train.checkpoint_every=2",
    "eval.n_samples=50",
    "eval.steps=3",
    "eval.nll=false",
    "eval.n_nelbo=20",
    "eval.nelbo_t_draws=1",
    "eval.kde_n_eval=50",
    "eval.also_ancestral=false",
    'objective.target=["eps"]',
    'objective.weighting=["nelbo"]',
]


def test_disk_full_during_a_study_then_resume(tmp_path, capsys, monkeypatch):
    """ENOSPC while the study writes results.csv: one message, no .tmp anywhere; the rerun reuses every
    finished run (their result.json files are not rewritten) and writes the table."""
    out = tmp_path / "study"
    args = ["study", "default", "--out", str(out), "--workers", "1"]
    for item in STUDY_SETS:
        args += ["--set", item]
    real_writer = rundir.csv.writer

    def full_disk(f, *a, **k):
        if os.path.basename(f.name).startswith("results.csv"):
            f.write("run_id,")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_writer(f, *a, **k)

    monkeypatch.setattr(rundir.csv, "writer", full_disk)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out / 'results.csv'}: No space left on device" in err
    assert _tmp_files(out) == [] and not (out / "results.csv").exists()
    results = {p: os.stat(p).st_mtime_ns for p in out.glob("runs/*/result.json")}
    assert results  # the runs themselves finished
    monkeypatch.setattr(rundir.csv, "writer", real_writer)
    assert main(args) == 0
    assert (out / "results.csv").exists()
    assert {p: os.stat(p).st_mtime_ns for p in out.glob("runs/*/result.json")} == results
