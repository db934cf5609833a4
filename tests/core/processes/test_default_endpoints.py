"""Default endpoint clamps against z-scored data (issue 9, item 2).

The oracle (exact denoiser of the z-scored ``mixture8`` law, component variance 1/51) must score an exact KL
(E_q[log q - log p], p the PF-ODE density from t_min, as ``toy2d/evaluate.py`` computes ``kl``) below
0.01 nats at every process's default settings. Seed 003's raw-data endpoint (sigma^2(t_min) = 0.02) blurs
every mode and scores ~0.19 nats; the same check must catch it.
"""

from __future__ import annotations

import math

import pytest
import torch

from difflab.data.toy2d import make_toy2d
from difflab.likelihood.pf_ode import pf_ode_log_likelihood
from difflab.processes import PROCESSES, build_process


@pytest.fixture(scope="module")
def mixture8():
    return make_toy2d("mixture8", n_train=0, n_test=1000, seed=3)


def oracle_kl(data, process) -> tuple[float, float]:
    x = data.test.to(torch.float64)
    res = pf_ode_log_likelihood(
        data.law.denoiser(process), process, x, divergence="exact", solver="dopri5", rtol=1e-5, atol=1e-5
    )
    d = data.law.log_prob(x) - res.log_prob.detach()
    return float(d.mean()), float(d.std()) / math.sqrt(d.numel())


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_oracle_kl_is_negligible_at_default_endpoints(mixture8, name) -> None:
    kl, se = oracle_kl(mixture8, build_process(name))
    assert kl + 2 * se < 0.01, (kl, se)
    assert kl > -3 * se - 2e-3  # a KL, up to noise and solver error


def test_ou_default_t_min_is_set_by_logsnr() -> None:
    p = build_process("ou")
    assert float(p.logsnr(p.t_min)) == pytest.approx(10.0, abs=1e-9)
    p2 = build_process("ou", horizon=2.0)
    assert float(p2.logsnr(p2.t_min)) == pytest.approx(10.0, abs=1e-9)
    assert build_process("ou", t_min=0.002).t_min == 0.002  # seed 003's raw-data endpoint on request


def test_raw_data_endpoint_is_caught_and_logsnr_clamp_fixes_it(mixture8) -> None:
    """Test of the test: sigma^2(t_min) = 0.02 (seed 003's OU endpoint, the constant beta = 0.02 chain at
    its own t_min = 1/T) fails the 0.01 bound by far; score-sde-gmm's logsnr_max = 7.85 passes."""
    for proc in (build_process("ou", t_min=0.002), build_process("ddpm", T=500, schedule="constant")):
        kl, se = oracle_kl(mixture8, proc)
        assert kl - 3 * se > 0.1, (proc, kl, se)
    kl, se = oracle_kl(mixture8, build_process("ddpm", T=500, schedule="constant", logsnr_max=7.85))
    assert kl + 2 * se < 0.01
