"""Strict configs: unknown keys/names and wrong types are errors that list the valid choices."""

import pytest

from difflab.experiments.toy2d.config import ConfigError, RunConfig, parse_config, total_steps
from difflab.experiments.toy2d.run import validate_config


def test_defaults_round_trip():
    cfg = parse_config({})
    assert cfg == RunConfig()
    assert total_steps(cfg) == cfg.train.steps


def test_unknown_key_lists_valid_keys():
    with pytest.raises(
        ConfigError, match=r"unknown key 'train.stepz'.*valid keys in \[train\]: steps, epochs"
    ):
        parse_config({"train": {"stepz": 10}})
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        parse_config({"trian": {}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"train": {"steps": "many"}}, "train.steps: expected an integer"),
        ({"train": {"steps": 1.5}}, "train.steps: expected an integer"),
        ({"train": {"lr": "fast"}}, "train.lr: expected a number"),
        ({"model": {"time_embed": 1}}, "model.time_embed: expected true/false"),
        ({"data": {"name": 3}}, "data.name: expected a string"),
        ({"train": 5}, "train: expected a table"),
    ],
)
def test_wrong_types(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_int_accepted_for_float_and_optional():
    cfg = parse_config({"train": {"lr": 1, "epochs": 2}, "data": {"n_train": 2048}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert total_steps(cfg) == round(2 * 2048 / cfg.train.batch_size)


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"objective": {"target": "noise"}}, "eps, flow, score, v, x0"),
        ({"objective": {"weighting": "elbo2"}}, "nelbo"),
        ({"process": {"name": "vpp"}}, "linear_vp"),
        ({"data": {"name": "moons"}}, "mixture8"),
        ({"model": {"name": "transformer"}}, "mlp, oracle"),
        ({"eval": {"sampler": "dpm"}}, "ancestral"),
        ({"train": {"optimizer": "sgd"}}, "adam, adamw"),
    ],
)
def test_unknown_names_list_valid_ones(data, names):
    with pytest.raises(ConfigError, match=names):
        validate_config(data)


def test_bad_process_option():
    with pytest.raises(ConfigError, match="bad options for process 'ou'"):
        validate_config({"process": {"name": "ou", "options": {"horizn": 3}}})


def test_value_ranges():
    with pytest.raises(ConfigError, match="ema"):
        validate_config({"train": {"ema": 1.5}})
    with pytest.raises(ConfigError, match=r"train.lr: must be > 0, got -1.0"):
        validate_config({"train": {"lr": -1.0}})
