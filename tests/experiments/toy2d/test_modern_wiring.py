"""Issue 12 wiring: every new process / target / weighting / time distribution / grid / sampler /
preconditioning name is reachable from a TOML config and the CLI, unknown names list the new choices, and a
tiny flow-matching run and a tiny EDM-preconditioned run train and sample."""

from __future__ import annotations

import json
import math

import pytest
import torch

from difflab.cli import main
from difflab.experiments.common.configs import ConfigError
from difflab.experiments.common.overrides import tomllib
from difflab.experiments.images.config import validate_image_config
from difflab.experiments.toy2d.build import build_run_parts
from difflab.experiments.toy2d.config import NATURAL_SAMPLERS, natural_sampler
from difflab.experiments.toy2d.run import run_experiment, validate_config

MODERN_TOML = """
[process]
name = "{process}"
options = {process_options}
[objective]
target = "{target}"
weighting = "{weighting}"
time_dist = "{time_dist}"
options = {objective_options}
[model]
preconditioning = "{preconditioning}"
[eval]
sampler = "{sampler}"
grid = "{grid}"
"""

# (process, process options, target, weighting, time dist, objective options, preconditioning, sampler, grid)
MODERN_CASES = [
    ("linear_interpolant", "{}", "flow", "flow_matching", "uniform", "{}", "none", "natural", "uniform_t"),
    (
        "linear_interpolant",
        "{}",
        "flow",
        "flow_matching",
        "logit_normal",
        "{ m = 0.0, s = 1.0 }",
        "none",
        "ode_heun",
        "karras",
    ),
    (
        "trig_vp",
        "{}",
        "x0",
        "edm",
        "edm_lognormal",
        "{ sigma_data = 1.0, P_mean = -1.2, P_std = 1.2 }",
        "edm",
        "edm_heun",
        "karras",
    ),
    (
        "trig_vp",
        "{ resolution = 32 }",
        "eps",
        "sigmoid",
        "logsnr_uniform",
        "{ b = -2.0 }",
        "none",
        "dpmpp_2m",
        "uniform_logsnr",
    ),
    ("trig_vp", "{}", "eps", "p2", "uniform", "{ k = 1.0, gamma = 0.5 }", "none", "edm_stochastic", "karras"),
]


def _toml(case: tuple[str, ...]) -> dict:
    keys = (
        "process",
        "process_options",
        "target",
        "weighting",
        "time_dist",
        "objective_options",
        "preconditioning",
        "sampler",
        "grid",
    )
    return tomllib.loads(MODERN_TOML.format(**dict(zip(keys, case))))


@pytest.mark.parametrize("case", MODERN_CASES, ids=[f"{c[2]}-{c[3]}-{c[7]}" for c in MODERN_CASES])
def test_every_new_name_parses_from_toml(case):
    config = validate_config(_toml(case))
    assert config.process.name == case[0] and config.objective.weighting == case[3]
    assert config.model.preconditioning == case[6]
    parts = build_run_parts(config)
    assert parts.denoiser.preconditioning == case[6]
    assert parts.objective.time_dist.name == case[4]


def test_flow_target_has_a_natural_sampler_and_a_missing_one_lists_the_table(monkeypatch):
    assert natural_sampler("flow") == "ode_euler"  # the old table raised KeyError: 'flow'
    monkeypatch.delitem(NATURAL_SAMPLERS, "flow")
    with pytest.raises(ConfigError, match=r"no natural sampler; targets with one: eps, score, v, x0"):
        natural_sampler("flow")


@pytest.mark.parametrize(
    ("key", "value", "listed"),
    [
        ("model.preconditioning", "karras", "edm, none"),
        ("objective.weighting", "sigmoidal", "edm"),
        ("objective.time_dist", "lognormal", "edm_lognormal"),
        ("eval.grid", "karas", "karras"),
        ("eval.sampler", "dpm", "dpmpp_2m"),
        ("process.name", "rectified", "linear_interpolant"),
        ("objective.target", "velocity", "flow"),
    ],
)
def test_cli_unknown_names_list_the_new_choices(tmp_path, capsys, key, value, listed):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[train]\nsteps = 10\n")
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--dry-run", "--set", f'{key}="{value}"']) == 2
    err = capsys.readouterr().err
    assert value in err and listed in err
    assert not out.exists()


def test_cli_dry_run_accepts_edm_and_flow(tmp_path, capsys):
    cfg = tmp_path / "edm.toml"
    cfg.write_text(
        '[objective]\ntarget = "x0"\nweighting = "edm"\ntime_dist = "edm_lognormal"\n'
        '[model]\npreconditioning = "edm"\n'
    )
    assert main(["train", str(cfg), "--dry-run"]) == 0
    assert '"preconditioning": "edm"' in capsys.readouterr().out


def test_edm_preconditioning_needs_the_x0_target():
    with pytest.raises(ConfigError, match=r"needs objective\.target = 'x0'"):
        validate_config({"model": {"preconditioning": "edm"}, "objective": {"target": "eps"}})
    raw = {"model": {"preconditioning": "edm"}, "objective": {"target": "eps", "weighting": "nelbo"}}
    with pytest.raises(ConfigError, match=r"needs objective\.target = 'x0'"):
        validate_image_config(raw)
    ok = validate_image_config({"model": {"preconditioning": "edm"}, "objective": {"target": "x0"}})
    assert ok.model.preconditioning == "edm"
    with pytest.raises(ConfigError, match="valid preconditionings: edm, none"):
        validate_image_config({"model": {"preconditioning": "vp"}})


def test_time_input_reaches_the_denoiser_and_bad_values_are_config_errors():
    config = validate_config({"model": {"time_input": "logsnr"}, "process": {"name": "ou"}})
    assert build_run_parts(config).denoiser.time_input == "logsnr"
    assert validate_image_config({"model": {"time_input": "logsnr"}}).model.time_input == "logsnr"
    for validate in (validate_config, validate_image_config):
        with pytest.raises(ConfigError, match="valid time inputs: logsnr, t"):
            validate({"model": {"time_input": "sigma"}})
        raw = {"model": {"preconditioning": "edm", "time_input": "logsnr"}, "objective": {"target": "x0"}}
        with pytest.raises(ConfigError, match="c_noise"):
            validate(raw)


def test_image_build_passes_preconditioning_and_data_std():
    from difflab.experiments.images.train import build_denoiser
    from difflab.processes import build_process

    config = validate_image_config(
        {
            "process": {"name": "trig_vp"},
            "model": {"preconditioning": "edm"},
            "objective": {"target": "x0", "time_dist": "uniform"},
        }
    )
    den = build_denoiser(config, build_process("trig_vp"), torch.nn.Identity())
    assert den.preconditioning == "edm" and den.data_std == 0.5


TINY = {
    "data": {"name": "mixture8", "n_train": 600, "n_test": 200},
    "model": {"hidden": 16, "layers": 2},
    "train": {"steps": 20, "batch_size": 64, "log_every": 10, "checkpoint_every": 10},
    "eval": {
        "n_samples": 100,
        "steps": 6,
        "n_nll": 10,
        "n_nelbo": 40,
        "nelbo_t_draws": 2,
        "kde_n_eval": 100,
        "nll_rtol": 1e-2,
        "also_ancestral": False,
    },
}


@pytest.mark.parametrize(
    "extra",
    [
        {
            "process": {"name": "linear_interpolant"},
            "objective": {"target": "flow", "weighting": "flow_matching"},
        },
        {
            "objective": {
                "target": "x0",
                "weighting": "edm",
                "time_dist": "edm_lognormal",
                "options": {"sigma_data": 1.0},
            },
            "model": {"hidden": 16, "layers": 2, "preconditioning": "edm"},
            "eval": {**TINY["eval"], "sampler": "edm_heun", "grid": "karras"},
        },
    ],
    ids=["flow", "edm"],
)
def test_tiny_training_runs_finish(tmp_path, extra):
    raw = json.loads(json.dumps({**TINY, **extra}))
    result = run_experiment(raw, str(tmp_path / "run"))
    assert result["status"] == "finished" and result["steps"] == 20
    assert math.isfinite(result["final_loss"]) and math.isfinite(result["mmd2"])
    expected = "ode_euler" if extra["objective"]["target"] == "flow" else "edm_heun"
    assert result["sampler"] == expected
