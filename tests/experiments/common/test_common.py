"""The shared pieces, and the issue-8 bugs they fix: one tomllib/tomli import and one --set parser, one
device rule for both kinds, figures that never switch matplotlib's backend, arms grouped by axes (not by
run-id text), every numeric metric in report.md, sampler options for image runs, rank-0-only output."""

from __future__ import annotations

import json
import sys
import types

import matplotlib
import numpy as np
import pytest

from difflab.experiments.common import overrides
from difflab.experiments.common.configs import ConfigError, check_device
from difflab.experiments.common.overrides import OverrideError, apply_sets, load_toml, parse_value


def test_tomli_fallback_below_python_3_11(monkeypatch):
    """Python 3.10 has no tomllib: the module must import tomli under the same name (and nothing else)."""
    import importlib.util
    from pathlib import Path

    import tomllib

    fake = types.ModuleType("tomli")
    fake.load, fake.loads, fake.TOMLDecodeError = tomllib.load, tomllib.loads, tomllib.TOMLDecodeError
    monkeypatch.setitem(sys.modules, "tomli", fake)
    monkeypatch.setattr(sys, "version_info", (3, 10, 0, "final", 0))
    spec = importlib.util.spec_from_file_location("overrides_on_py310", overrides.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)  # a fresh copy: the real module stays as it is
    assert copy.tomllib is fake and copy.parse_value("[1, 2]") == [1, 2]
    src = Path(overrides.__file__).resolve().parents[2]
    users = [p for p in src.rglob("*.py") if "import tomllib" in p.read_text() and p.name != "overrides.py"]
    assert users == []  # no other module of difflab imports tomllib itself


def test_one_set_parser_for_train_and_study(tmp_path):
    config = apply_sets({}, ["train.steps=10", "objective.target=[eps, v]", 'eval.grid="uniform_t"', "a.b=x"])
    assert config == {
        "train": {"steps": 10},
        "objective": {"target": ["eps", "v"]},
        "eval": {"grid": "uniform_t"},
        "a": {"b": "x"},
    }
    assert parse_value("1e-3") == 1e-3 and parse_value("{ a = 1 }") == {"a": 1}
    with pytest.raises(OverrideError, match="key=value"):
        apply_sets({}, ["train.steps"])
    with pytest.raises(OverrideError, match="not found"):
        load_toml(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[x\n")
    with pytest.raises(OverrideError, match="invalid TOML"):
        load_toml(tmp_path / "bad.toml")


def test_one_device_rule_for_both_kinds():
    from difflab.experiments.images.config import validate_image_config
    from difflab.experiments.toy2d.run import validate_config

    for device in ("cpu", "cuda", "cuda:1"):
        assert check_device(device) == device
        assert validate_config({"train": {"device": device}}).train.device == device
        assert validate_image_config({"train": {"device": device}}).train.device == device
    for bad in ("gpu", "cuda:", "cuda:x"):
        with pytest.raises(ConfigError, match="valid devices: cpu, cuda, cuda:N"):
            validate_config({"train": {"device": bad}})
        with pytest.raises(ConfigError, match="valid devices: cpu, cuda, cuda:N"):
            validate_image_config({"train": {"device": bad}})


def test_figures_never_switch_the_backend(monkeypatch, tmp_path):
    from difflab.experiments.common import figures

    def forbidden(*args, **kwargs):
        raise AssertionError("a library function called matplotlib.use")

    monkeypatch.setattr(matplotlib, "use", forbidden)
    before = matplotlib.get_backend()
    grid = figures.save_image_grid(np.zeros((4, 1, 8, 8), dtype=np.float32), tmp_path / "g.png")
    panels = figures.plot_image_panels({"a": grid}, {"a": "a"}, tmp_path / "p.png")
    curve = {
        "t": [0.1, 0.5],
        "err": [1.0, 2.0],
        "logsnr": [2.0, -1.0],
        "err_eps": [0.1, 0.2],
        "ref": [3.0, 4.0],
    }
    score = figures.plot_score_error(
        {"x": curve, "y": curve}, tmp_path / "s.png", groups={"x": "A", "y": "A"}
    )
    assert all(p.is_file() for p in (tmp_path / "g.png", panels, score))
    assert matplotlib.get_backend() == before


def test_score_arms_are_grouped_by_axes_not_by_run_id_text():
    """Old rule: run_id.split("__s")[0], which merged every arm whose second token starts with "s"."""
    from difflab.experiments.toy2d.score import arm_of

    axes = ["data.name", "objective.target", "objective.weighting", "train.seed"]
    values = [("nelbo", 0), ("nelbo", 1), ("weighted", 0)]
    rows = [
        {
            "run_id": f"mixture8__score__{w}__s{s}",
            "data.name": "mixture8",
            "objective.target": "score",
            "objective.weighting": w,
            "train.seed": s,
        }
        for w, s in values
    ]
    rows.append({"run_id": "oracle__mixture8", "label": "oracle", "data.name": "mixture8"})
    arms = [arm_of(r, axes) for r in rows]
    assert arms == [
        "mixture8__score__nelbo",
        "mixture8__score__nelbo",
        "mixture8__score__weighted",
        "oracle__mixture8",
    ]
    assert {r["run_id"].split("__s")[0] for r in rows[:3]} == {"mixture8"}  # the old rule merged all three


def test_report_lists_every_numeric_metric_and_is_written_once(tmp_path):
    from difflab.experiments.study.report import ReportSpec, finish_study
    from difflab.experiments.study.spec import Study

    study = Study("s", axes={"objective.target": ["eps", "v"]})
    rows = [
        {
            "run_id": "eps",
            "objective.target": "eps",
            "status": "finished",
            "kl": 1.0,
            "nll_se": 0.1,
            "kde_h": 0.2,
        },
        {
            "run_id": "v",
            "objective.target": "v",
            "status": "finished",
            "kl": 2.0,
            "nll_se": 0.3,
            "kde_h": 0.2,
        },
    ]
    spec = ReportSpec(metrics=("kl",), terminal=("kl",))
    table = finish_study(study, rows, tmp_path, spec, sections=["## Extra", "", "text"])
    report = (tmp_path / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| objective.target"))
    assert (
        header.index("kl ↓") < header.index("kde_h ↓") < header.index("nll_se ↓")
    )  # listed first, then the rest
    assert report.count("# Study: s") == 1 and report.rstrip().endswith("text")
    assert "kl" in table and "nll_se" not in table


def test_image_runs_take_sampler_options():
    from difflab.experiments.images.config import validate_image_config

    cfg = validate_image_config({"eval": {"sampler": "ddim", "sampler_options": {"eta": 0.5}}})
    assert cfg.eval.options() == {"eta": 0.5}
    assert validate_image_config({"eval": {"sampler": "ddim", "eta": 0.3}}).eval.options() == {"eta": 0.3}
    assert validate_image_config(
        {"eval": {"sampler": "pc", "sampler_options": {"snr": 0.1}}}
    ).eval.options() == {"snr": 0.1}
    with pytest.raises(ConfigError, match="not an option of the samplers"):
        validate_image_config({"eval": {"sampler": "ancestral", "sampler_options": {"snr": 0.1}}})
    with pytest.raises(ConfigError, match="not both"):
        validate_image_config({"eval": {"sampler": "ddim", "eta": 0.3, "sampler_options": {"eta": 0.5}}})


def test_image_sampler_options_reach_the_sampler():
    import torch

    from difflab.experiments.images.evaluate import draw_image_samples
    from difflab.processes import build_process

    process = build_process("ddpm", T=10)
    net = torch.nn.Conv2d(1, 1, 1)

    def den(x, t):
        return net(x)

    den.parameters, den.training, den.eval, den.train = net.parameters, False, lambda: None, lambda was: None
    draws = {}
    for eta in (0.0, 1.0):
        x, info = draw_image_samples(
            den,
            process,
            (1, 4, 4),
            4,
            sampler="ddim",
            steps=5,
            options={"eta": eta, "snr": 9.0},
            seed=0,
            batch=4,
        )
        draws[eta] = x
        assert info["eta"] == eta
    assert not torch.equal(draws[0.0], draws[1.0])


def test_train_prints_its_result_on_rank_zero_only(tmp_path, monkeypatch, capsys):
    import torch

    from difflab.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        "[data]\nn_train = 300\nn_test = 100\n[model]\nhidden = 8\nlayers = 1\n"
        "[train]\nsteps = 4\nbatch_size = 32\nlog_every = 2\ncheckpoint_every = 2\n"
        "[eval]\nn_samples = 50\nsteps = 3\nnll = false\nn_nelbo = 20\nnelbo_t_draws = 1\nkde_n_eval = 50\n"
        "also_ancestral = false\n"
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a machine with two GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert main(["train", str(cfg), "--dry-run", "--set", "train.device=cuda:1"]) == 0
    monkeypatch.undo()
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["train"]["steps"] == 4 and resolved["train"]["device"] == "cuda:1"
    monkeypatch.setenv("RANK", "1")
    assert main(["train", str(cfg), "--out", str(tmp_path / "r1")]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.delenv("RANK")
    assert main(["train", str(cfg), "--out", str(tmp_path / "r0")]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "finished"
