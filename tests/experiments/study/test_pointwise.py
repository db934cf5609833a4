"""Per-point values of a 2D run (issue 10 item 3a): stored in ``samples.npz`` beside the samples, their means
are the recorded metrics, and two arms see the same held-out points, so their differences are paired."""

from __future__ import annotations

import numpy as np
import pytest

from difflab.experiments.toy2d.report import load_pointwise
from difflab.experiments.toy2d.run import run_experiment


def _config(target: str) -> dict:
    return {
        "data": {"name": "mixture8", "n_train": 800, "n_test": 300},
        "objective": {"target": target, "weighting": "nelbo"},
        "model": {"hidden": 16, "layers": 2},
        "train": {"steps": 20, "batch_size": 128, "checkpoint_every": 10, "log_every": 10},
        "eval": {"n_samples": 200, "n_nll": 40, "n_nelbo": 60, "kde_n_eval": 200, "steps": 16},
    }


def test_pointwise_arrays_are_the_recorded_metrics_and_paired(tmp_path):
    runs = {}
    for target in ("eps", "v"):
        run_dir = tmp_path / "runs" / f"m__{target}"
        metrics = run_experiment(_config(target), str(run_dir))
        with np.load(run_dir / "samples.npz") as z:
            assert z.files[0] == metrics["sampler"]  # the samples stay the first entry (figures read it)
            arrays = {k: z[k] for k in z.files if k.startswith("pointwise_")}
        assert sorted(arrays) == ["pointwise_kl", "pointwise_nelbo", "pointwise_nll"]
        assert arrays["pointwise_nelbo"].shape == (60,) and arrays["pointwise_kl"].shape == (40,)
        for name in ("kl", "nll", "nelbo"):
            assert float(arrays[f"pointwise_{name}"].mean()) == pytest.approx(
                metrics[name], rel=1e-12, abs=1e-15
            )
        se = arrays["pointwise_kl"].std(ddof=1) / np.sqrt(40)
        assert se == pytest.approx(metrics["kl_se"], rel=1e-10)
        runs[target] = arrays
    # kl_i - D nll_i = log q(x_i): the same for both arms only if they were evaluated on the same points
    log_q = {t: a["pointwise_kl"] - 2 * a["pointwise_nll"] for t, a in runs.items()}
    np.testing.assert_allclose(log_q["eps"], log_q["v"], rtol=0, atol=1e-9)
    assert np.abs(runs["eps"]["pointwise_kl"] - runs["v"]["pointwise_kl"]).max() > 1e-3  # different models
    rows = [{"run_id": f"m__{t}", "status": "finished"} for t in runs] + [
        {"run_id": "gone", "status": "failed"}
    ]
    loaded = load_pointwise(rows, str(tmp_path))
    assert sorted(loaded) == ["m__eps", "m__v"] and sorted(loaded["m__v"]) == ["kl", "nelbo", "nll"]
