"""The contract every run kind keeps (one test per kind in KINDS, tiny configs): the config round-trips, a
run finishes, a second run resumes without retraining, evaluate reproduces the recorded metrics, and sample
writes the requested number of samples."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from difflab.experiments.kind import KINDS, SampleRequest, get_kind

TINY = {
    "toy2d": {
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
    },
    "images": {
        "data": {"name": "digits", "n_train": 128, "n_val": 32},
        "process": {"name": "ddpm", "options": {"T": 10}},
        "model": {"channels": 8, "channel_mults": [1], "num_res_blocks": 1, "attn_resolutions": []},
        "train": {"steps": 10, "batch_size": 32, "val_every": 10, "log_every": 5, "checkpoint_every": 10},
        "eval": {
            "n_samples": 32,
            "steps": 4,
            "batch": 32,
            "n_track": 0,
            "n_grid": 4,
            "bpd": False,
            "pf_ode": False,
            "classifier_epochs": 1,
        },
    },
    # one cached trained model of a tiny 2D recipe, sampled by DDIM (deterministic: the pushforward KL too)
    "samplers": {
        "denoiser": "trained",
        "sampler": "ddim",
        "grid": "karras",
        "nfe": 6,
        "n_samples": 100,
        "n_pushforward": 16,
        "kde_n_eval": 100,
        "recipe": {
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
        },
    },
}
TIME_KEYS = ("seconds",)  # wall-clock figures (train_seconds, sample_seconds_per_image, seconds)


def _numbers(metrics: dict) -> dict:
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and not any(t in k for t in TIME_KEYS)
    }


def test_every_kind_has_a_tiny_config():
    assert set(TINY) == set(KINDS)


@pytest.fixture(scope="module", params=sorted(KINDS))
def finished(request, tmp_path_factory):
    """(kind, raw config, run dir, first result) of one tiny finished run per kind."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    name = request.param
    raw = json.loads(json.dumps(TINY[name]))
    tmp = tmp_path_factory.mktemp(name)
    if name == "images":
        raw["eval"]["cache_dir"] = str(tmp / "cache")
    kind = get_kind(name)
    run_dir = str(tmp / "run")
    result = kind.run(json.loads(json.dumps(raw)), run_dir)
    yield kind, raw, run_dir, result
    torch.set_num_threads(threads)


def test_config_round_trips(finished):
    kind, raw, _, _ = finished
    config = kind.parse(raw)
    assert kind.parse(kind.to_dict(config)) == config
    assert kind.name in KINDS


def test_run_finishes(finished):
    _, _, run_dir, result = finished
    assert result["status"] == "finished"
    recorded = json.loads((Path(run_dir) / "metrics.json").read_text())
    assert _numbers(recorded) == _numbers(result)


def test_second_run_resumes_without_retraining(finished):
    kind, raw, run_dir, result = finished
    again = kind.run(json.loads(json.dumps(raw)), run_dir)
    assert again["steps"] == result["steps"]
    assert _numbers(again) == _numbers(result)  # same checkpoint, same seeds: the same figures


def test_evaluate_reproduces_recorded_metrics(finished):
    kind, _, run_dir, result = finished
    evaluated = _numbers(kind.evaluate(run_dir))
    shared = set(evaluated) & set(_numbers(result))
    assert len(shared) >= 5
    for key in shared:
        a, b = evaluated[key], result[key]
        assert a == b or (math.isnan(a) and math.isnan(b)), key


def test_sample_writes_n_samples(finished, tmp_path):
    kind, _, run_dir, _ = finished
    out = str(tmp_path / "s.npz")
    message = kind.sample(run_dir, SampleRequest(n=12, steps=3, seed=1, out=out))
    assert "12 samples" in message
    with np.load(out) as z:
        assert z["samples"].shape[0] == 12
