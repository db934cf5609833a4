"""The image pipeline end to end on tiny models: metrics with floor, logs and grids, exact resume, early
stopping, sampling a trained run, bad data and bad configs, and the image study presets through the CLI."""

from __future__ import annotations

import copy
import csv
import json
import math
import struct

import numpy as np
import pytest
import torch

from difflab.cli import main
from difflab.experiments.common.configs import ConfigError
from difflab.experiments.images.config import parse_image_config, validate_image_config
from difflab.experiments.images.run import run_image_experiment, sample_image_run
from difflab.experiments.training import validation
from difflab.experiments.training.trainer import Trainer
from difflab.experiments.training.validation import EarlyStopping

TINY = {
    "data": {"name": "digits", "n_train": 256, "n_val": 64, "flip": True},
    "process": {"name": "ddpm", "options": {"T": 20, "schedule": "linear"}},
    "model": {"channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attn_resolutions": []},
    "train": {
        "steps": 20,
        "batch_size": 32,
        "lr": 2e-3,
        "warmup": 2,
        "val_every": 10,
        "log_every": 5,
        "checkpoint_every": 10,
        "time_bins": 5,
    },
    "eval": {
        "n_samples": 96,
        "steps": 8,
        "batch": 96,
        "n_track": 32,
        "track_steps": 4,
        "n_grid": 16,
        "n_bpd": 16,
        "bpd_mc_steps": 2,
        "n_pf_ode": 8,
        "pf_ode_solver": "heun",
        "pf_ode_steps": 3,
        "classifier_epochs": 2,
    },
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread each is several times faster than oversubscribing
    yield
    torch.set_num_threads(threads)


def _config(tmp_path, **sections):
    cfg = copy.deepcopy(TINY)
    cfg["eval"]["cache_dir"] = str(tmp_path / "cache")
    for section, values in sections.items():
        cfg[section].update(values)
    return cfg


def test_end_to_end_digits_metrics_with_floor_logs_and_grids(tmp_path):
    run = tmp_path / "run"
    result = run_image_experiment(_config(tmp_path), str(run))
    assert result["status"] == "finished" and result["steps"] == 20
    for key in ("fid", "fid_floor", "fid_same_n", "kid", "kid_floor", "is", "is_floor", "bpd"):
        assert math.isfinite(result[key]), key
    # a PF-ODE figure worse than uniform on the 17 levels is withheld (NaN, raw value kept), else shown
    pf = result.get("bpd_pf_ode_raw") if result["bpd_pf_ode_untrusted"] else result["bpd_pf_ode"]
    assert math.isfinite(pf) and result["bpd_pf_ode_untrusted"] == (pf > math.log2(17))
    # 20 steps of a tiny model are far from the data; the held-out floor is far below the model's FID
    assert 0 <= result["fid_floor"] < result["fid_same_n"]
    # IS of the held-out set, by hand from the run's (cached) classifier: exp(E_x KL(p(y|x) || p(y))) over
    # 10 contiguous splits of the 64 held-out images (Salimans et al. 2016)
    assert result["is_floor"] == pytest.approx(_inception_score_by_hand(tmp_path), rel=1e-6)
    assert 0.5 < result["classifier_test_acc"] <= 1.0
    assert result["n_samples"] == 96 and result["n_floor"] == 64 and result["nfe"] == 9
    # the T = 20 linear chain ends far from its prior: alpha_bar_T = prod(1 - beta_i), recorded as is
    abar = float(np.prod(1.0 - np.linspace(1e-4, 0.02, 20)))
    assert result["terminal_snr"] == pytest.approx(abar / (1.0 - abar), rel=1e-9)
    assert result["fid_eps_fallback"] in (True, False) and result["levels"] == 17
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    # every val_every = 10 steps and at the learning curve's points 20/16 .. 20 rounded to log_every (5)
    assert [int(r["step"]) for r in rows] == [5, 10, 20]
    curve = json.loads((run / "curves.json").read_text())
    assert [p["step"] for p in curve["points"]] == [5, 10, 20] and result["verdict"] != "no curve"
    assert all(float(r["val_loss"]) > 0 for r in rows)
    # the tracked FID / IS (and grid) at every val_every only; the curve's extra point has the loss alone
    assert all(float(r["fid"]) > 0 and float(r["is"]) >= 1 for r in rows if int(r["step"]) % 10 == 0)
    assert rows[0]["fid"] == "" and not (run / "grids" / "step_0000005.png").exists()
    assert (run / "grids" / "step_0000010.png").is_file() and (run / "grids" / "step_0000020.png").is_file()
    with np.load(run / "samples.npz") as z:
        assert z["samples"].shape == (96, 1, 8, 8) and z["samples"].dtype == np.uint8
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "images"
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss_by_time"]) == 5
    assert len(history["grad_norm"]) == len(history["grad_norm_max"]) == len(history["steps"]) == 4
    assert all(m >= g > 0 for g, m in zip(history["grad_norm"], history["grad_norm_max"], strict=True))
    assert result["grad_norm_max"] == max(history["grad_norm_max"]) and result["grad_spike_ratio"] >= 1.0

    out = sample_image_run(str(run), "ddim", 5, 10, 0, str(tmp_path / "s.npz"), None)
    assert "NFE 6" in out
    with np.load(tmp_path / "s.npz") as z:
        assert z["samples"].shape == (10, 1, 8, 8)
    assert (tmp_path / "s.png").is_file()
    # the full chain: steps >= T means T - 1 grid steps plus the final denoising
    assert "19 discrete steps, NFE 20" in sample_image_run(str(run), "ancestral", 1000, 4, 1, None, None)


def _inception_score_by_hand(tmp_path) -> float:
    from difflab.data.images import load_image_data
    from difflab.models.classifier import load_or_train_classifier

    train, test = load_image_data("digits", None, "train"), load_image_data("digits", None, "test")
    net, _ = load_or_train_classifier("digits", train, test, tmp_path / "cache", epochs=2, verbose=False)
    with torch.no_grad():
        log_p = torch.log_softmax(net.eval()(test.images[:64].float()).double(), dim=1)
    scores = []
    for part in torch.tensor_split(log_p, 10):
        log_py = torch.logsumexp(part, 0) - math.log(part.shape[0])
        scores.append(math.exp(float((part.exp() * (part - log_py)).sum(1).mean())))
    return sum(scores) / len(scores)


def test_exact_resume_of_an_image_run(tmp_path, monkeypatch):
    cfg = _config(tmp_path, eval={"enabled": False}, train={"steps": 30})
    full = tmp_path / "full"
    run_image_experiment(cfg, str(full))

    class CrashError(RuntimeError):
        pass

    original = Trainer.train

    def crashing(self, progress=None, until=None):
        history = original(self, progress, until=min(until or 10**9, 20))
        if self.step >= 20:
            raise CrashError("killed after the checkpoint at step 20")
        return history

    part = tmp_path / "part"
    monkeypatch.setattr(Trainer, "train", crashing)
    with pytest.raises(CrashError):
        run_image_experiment(cfg, str(part))
    monkeypatch.setattr(Trainer, "train", original)
    result = run_image_experiment(cfg, str(part))
    assert result["steps"] == 30
    a = torch.load(full / "checkpoint.pt", weights_only=False)
    b = torch.load(part / "checkpoint.pt", weights_only=False)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for p, q in zip(a["ema"], b["ema"], strict=True):
        assert torch.equal(p, q)
    assert a["history"]["loss"] == b["history"]["loss"]
    assert [e["val_loss"] for e in a["extra"]["evals"]] == [e["val_loss"] for e in b["extra"]["evals"]]
    # validations every 10 steps and at the curve's points of 30 (rounded to log_every 5): 5, 10, 15, 20, 30
    assert (full / "log.csv").read_text().count("\n") == (part / "log.csv").read_text().count("\n") == 6
    assert [e["step"] for e in b["extra"]["evals"]] == [5, 10, 15, 20, 30]


def test_early_stopping_rule_on_a_constructed_sequence():
    stop = EarlyStopping(patience=2)
    decisions = [stop.update(v, step) for step, v in enumerate([1.0, 0.9, 0.95, float("nan"), 0.91, 0.5])]
    assert decisions == [False, False, False, False, True, False]
    assert stop.best == 0.5 and stop.best_step == 5
    never = EarlyStopping(patience=0)
    assert not any(never.update(v) for v in [1.0, 2.0, 3.0, 4.0])


def test_early_stopping_stops_the_run(tmp_path, monkeypatch):
    sequence = iter([0.5, 0.4, 0.45, 0.41, 0.42, 0.1])
    monkeypatch.setattr(validation, "validation_loss", lambda *a, **k: next(sequence))
    cfg = _config(tmp_path, eval={"enabled": False}, train={"steps": 60, "val_every": 5, "patience": 2})
    result = run_image_experiment(cfg, str(tmp_path / "run"))
    assert result["stopped_early_at"] == 25 and result["steps"] == 25
    assert result["best_val_loss"] == 0.4 and result["best_val_step"] == 10
    # resuming a stopped run does not train further
    assert run_image_experiment(cfg, str(tmp_path / "run"))["steps"] == 25


def _idx(arr: np.ndarray) -> bytes:
    return struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_truncated_data_is_a_clear_error_through_the_config(tmp_path, capsys):
    root = tmp_path / "mnist"
    root.mkdir()
    images = np.zeros((10, 28, 28), dtype=np.uint8)
    labels = np.arange(10, dtype=np.uint8)
    for split in ("train", "t10k"):
        (root / f"{split}-images-idx3-ubyte").write_bytes(_idx(images)[:-100])  # truncated
        (root / f"{split}-labels-idx1-ubyte").write_bytes(_idx(labels))
    cfg = _config(tmp_path, data={"name": "mnist", "root": str(root), "n_train": None, "n_val": None})
    validate_image_config(cfg)  # names and types are fine; the files are not
    with pytest.raises(ConfigError, match=r"truncated IDX file .*train-images-idx3-ubyte"):
        run_image_experiment(cfg, str(tmp_path / "run"))
    path = tmp_path / "bad.toml"
    path.write_text(f'kind = "images"\n[data]\nname = "mnist"\nroot = "{root}"\n')
    assert main(["train", str(path), "--out", str(tmp_path / "cli")]) == 2
    assert "truncated IDX file" in capsys.readouterr().err


def test_bad_configs_name_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.stepz'"):
        parse_image_config({"train": {"stepz": 1}})
    with pytest.raises(ConfigError, match="valid beta schedules"):
        validate_image_config({"process": {"name": "ddpm", "options": {"T": 10, "schedule": "nope"}}})
    with pytest.raises(ConfigError, match=r"model.channel_mults\[1\]"):
        parse_image_config({"model": {"channel_mults": [1, "2"]}})
    with pytest.raises(ConfigError, match="valid precisions"):
        validate_image_config({"train": {"precision": "fp8"}})
    with pytest.raises(ConfigError, match=r"needs data\.root"):
        validate_image_config({"data": {"name": "cifar10"}})
    assert validate_image_config({}).eval.n_samples == 10_000


@pytest.mark.parametrize("name,runs", [("ddpm-ablations-quick", 13), ("loss-comparison-images-quick", 9)])
def test_image_study_presets_dry_run(name, runs, capsys):
    assert main(["study", name, "--dry-run"]) == 0
    assert f"{runs} runs" in capsys.readouterr().out
    assert main(["study", name.removesuffix("-quick"), "--dry-run"]) == 0
    assert main(["study", name, "--dry-run", "--set", "data.name=mnist", "--set", "data.root=/data"]) == 0
