"""DPM-Solver++(2M), EDM Heun / stochastic samplers and the karras grid, with exact denoisers (float64).

Convergence order on Gaussian data against the exact PF-ODE flow (error ratio per doubling of steps ~ 1/4 for
second order), exact equivalences with hand-written reference algorithms, the flow-matching sampler check, and
tests of the tests (a DPM-Solver++ without its multistep correction is first order and fails the 1/4 band).
Mixture recovery of every sampler is in test_samplers.py (MIXTURE_CASES covers the whole table).
"""

from __future__ import annotations

import math

import pytest
import torch

from difflab.data.gaussian import GaussianMixture
from difflab.processes import build_process
from difflab.samplers import (
    GRIDS,
    SAMPLERS,
    karras_grid,
    prior_sample,
    sample_ddim,
    sample_dpmpp_2m,
    sample_edm,
    sample_edm_heun,
    sample_ode_euler,
    sample_ode_heun,
    time_grid,
)

F64 = torch.float64
PROCS = {
    "trig_vp": build_process("trig_vp"),
    "linear_vp": build_process("linear_vp"),
    "ve": build_process("ve"),
    "ou": build_process("ou"),
    "linear_interpolant": build_process("linear_interpolant"),
    "trig_vp_shifted": build_process("trig_vp", resolution=256),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gaussian():
    mu, sd = torch.tensor([0.7, -0.4], dtype=F64), torch.tensor([0.5, 1.3], dtype=F64)
    return mu, sd, GaussianMixture.gaussian(mu, torch.diag(sd**2))


def _flow_errors(pname: str, kind: str, name: str, steps=(32, 64, 128), **opts) -> list[float]:
    """Max error at t_min against the exact PF-ODE flow of x0 ~ N(mu, diag(sd^2)) (the standardized coordinate
    z = (x_t - alpha_t mu) / sqrt(alpha_t^2 sd^2 + sigma_t^2) is constant along the flow)."""
    mu, sd, gm = _gaussian()
    p = PROCS[pname]
    c_T, c_0 = p.coefficients(p.t_max), p.coefficients(p.t_min)
    z = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    x_T = c_T.alpha * mu + (c_T.alpha**2 * sd**2 + c_T.sigma**2).sqrt() * z
    exact = c_0.alpha * mu + (c_0.alpha**2 * sd**2 + c_0.sigma**2).sqrt() * z
    out = []
    for n in steps:
        x = SAMPLERS[name].fn(gm.denoiser(p), p, x_T, time_grid(p, n, kind), denoise_final=False, **opts)
        out.append((x - exact).abs().max().item())
    return out


def _ratios(e: list[float]) -> list[float]:
    return [e[i + 1] / e[i] for i in range(len(e) - 1)]


SECOND_ORDER = (0.18, 0.32)
ORDER_CASES = [
    # measured ratios at 32 -> 64 -> 128 steps
    ("dpmpp_2m", "trig_vp", "uniform_logsnr"),  # 0.275, 0.255
    ("dpmpp_2m", "linear_vp", "karras"),  # 0.232, 0.241
    ("dpmpp_2m", "ve", "karras"),  # 0.237, 0.244
    ("dpmpp_2m", "ou", "karras"),  # 0.248, 0.247
    ("dpmpp_2m", "linear_interpolant", "uniform_logsnr"),  # 0.267, 0.253
    ("edm_heun", "trig_vp", "karras"),  # 0.234, 0.242
    ("edm_heun", "linear_vp", "karras"),  # 0.242, 0.246
    ("edm_heun", "ve", "karras"),  # 0.244, 0.247
    ("edm_heun", "linear_interpolant", "karras"),  # 0.237, 0.244
]


@pytest.mark.parametrize(("name", "pname", "kind"), ORDER_CASES)
def test_second_order_convergence(name: str, pname: str, kind: str) -> None:
    """Error ratio per doubling in [0.18, 0.32] (second order: 1/4)."""
    e = _flow_errors(pname, kind, name)
    assert all(SECOND_ORDER[0] <= r <= SECOND_ORDER[1] for r in _ratios(e)), (e, _ratios(e))


@pytest.mark.parametrize(("pname", "kind"), [("trig_vp", "uniform_logsnr"), ("ve", "karras")])
def test_of_the_test_dpmpp_without_multistep_is_first_order(pname: str, kind: str) -> None:
    """Dropping the multistep correction (order=1) leaves DDIM: ratios ~ 1/2, outside the second-order band,
    so the band above does reject a first-order implementation; and order=1 is DDIM(eta=0) to rounding."""
    e = _flow_errors(pname, kind, "dpmpp_2m", order=1)
    assert all(0.45 <= r <= 0.55 for r in _ratios(e)), _ratios(e)
    assert not any(SECOND_ORDER[0] <= r <= SECOND_ORDER[1] for r in _ratios(e))
    p = PROCS[pname]
    _, _, gm = _gaussian()
    x_T = prior_sample(p, (32, 2), torch.Generator().manual_seed(1))
    grid = time_grid(p, 20, kind)
    a = sample_dpmpp_2m(gm.denoiser(p), p, x_T, grid, order=1)
    b = sample_ddim(gm.denoiser(p), p, x_T, grid)
    assert (a - b).abs().max().item() < 1e-10


def _dpmpp_2m_reference(den, p, x, grid):
    """Lu et al. 2022 Alg. 2 written with lambda = log(alpha/sigma) and the x0 list, by hand."""
    c = p.coefficients(grid)
    lam = torch.log(c.alpha / c.sigma)
    x0s = []
    for i in range(1, len(grid)):
        x0s.append(den(x, torch.full((x.shape[0],), float(grid[i - 1]), dtype=F64)))
        h = lam[i] - lam[i - 1]
        if i == 1:
            d = x0s[-1]
        else:
            r = (lam[i - 1] - lam[i - 2]) / h
            d = (1 + 1 / (2 * r)) * x0s[-1] - 1 / (2 * r) * x0s[-2]
        x = c.sigma[i] / c.sigma[i - 1] * x - c.alpha[i] * (torch.exp(-h) - 1) * d
    return x


@pytest.mark.parametrize("pname", ["trig_vp", "ou", "linear_interpolant"])
def test_dpmpp_2m_matches_algorithm_2(pname: str) -> None:
    p = PROCS[pname]
    gm = GaussianMixture.isotropic(torch.tensor([0.6, 0.4]), torch.tensor([[1.0, -1.0], [-1.5, 0.5]]), 0.3)
    x_T = prior_sample(p, (64, 2), torch.Generator().manual_seed(0))
    grid = time_grid(p, 15, "karras")
    ours = sample_dpmpp_2m(gm.denoiser(p), p, x_T, grid, denoise_final=False)
    ref = _dpmpp_2m_reference(gm.denoiser(p), p, x_T, grid)
    assert (ours - ref).abs().max().item() < 1e-10


def _edm_reference(den, sigmas, x, gen, S_churn=0.0, S_tmin=0.0, S_tmax=math.inf, S_noise=1.0):
    """Karras et al. 2022 Alg. 2 on the VE process (alpha = 1, sigma_t = sigma), by hand in sigma."""
    p = PROCS["ve"]
    n = len(sigmas) - 1

    def D(x, s):
        t = float(p.t_of_logsnr(-2 * math.log(s)))
        return den(x, torch.full((x.shape[0],), t, dtype=F64))

    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_tmin <= s <= S_tmax else 0.0
        s_hat = min(s * (1 + gamma), sigmas[0])
        if s_hat > s:
            x = x + math.sqrt(s_hat**2 - s**2) * S_noise * torch.randn(x.shape, generator=gen, dtype=F64)
        d = (x - D(x, s_hat)) / s_hat
        x_next = x + (s_next - s_hat) * d
        d2 = (x_next - D(x_next, s_next)) / s_next
        x = x + (s_next - s_hat) * 0.5 * (d + d2)
    return x


def test_edm_samplers_match_algorithms_1_and_2_on_ve() -> None:
    """On VE (alpha = 1) difflab's EDM samplers are EDM's Alg. 1 / Alg. 2 on the rho = 7 grid of eq. 5."""
    p = PROCS["ve"]
    gm = GaussianMixture.isotropic(torch.tensor([0.6, 0.4]), torch.tensor([[1.0, -1.0], [-1.5, 0.5]]), 0.3)
    grid = karras_grid(p, 18)
    s_max, s_min = p.sigma_max, p.sigma_min
    i = torch.arange(19, dtype=F64) / 18
    sigmas = (s_max ** (1 / 7) + i * (s_min ** (1 / 7) - s_max ** (1 / 7))) ** 7  # EDM eq. 5
    torch.testing.assert_close(p.sigma(grid), sigmas, rtol=1e-12, atol=0)
    x_T = prior_sample(p, (64, 2), torch.Generator().manual_seed(0))
    den = gm.denoiser(p)
    ours = sample_edm_heun(den, p, x_T, grid, denoise_final=False)
    ref = _edm_reference(den, sigmas.tolist(), x_T, None)
    assert (ours - ref).abs().max().item() < 1e-9 * float(ref.abs().max())
    opts = {"S_churn": 10.0, "S_tmin": 0.05, "S_tmax": 20.0, "S_noise": 1.003}
    ours = sample_edm(
        den, p, x_T, grid, generator=torch.Generator().manual_seed(5), denoise_final=False, **opts
    )
    ref = _edm_reference(den, sigmas.tolist(), x_T, torch.Generator().manual_seed(5), **opts)
    assert (ours - ref).abs().max().item() < 1e-9 * float(ref.abs().max())
    # S_churn = 0 is the deterministic sampler, bitwise
    a = sample_edm(den, p, x_T, grid, generator=torch.Generator().manual_seed(5), S_churn=0.0)
    assert torch.equal(a, sample_edm_heun(den, p, x_T, grid))


@pytest.mark.parametrize("sampler", [sample_ode_euler, sample_ode_heun])
def test_pf_ode_samplers_are_rectified_flow_on_the_linear_interpolant(sampler) -> None:
    """On alpha = 1 - t, sigma = t the PF-ODE velocity is E[eps - x0 | x_t] = eps_hat - x0_hat, so the PF-ODE
    Euler / Heun samplers on uniform t are the flow-matching samplers (Liu et al. 2023, eq. 1; Esser et al.
    2024): x_s = x_t + (s - t) u_hat (Heun: the trapezoidal average of u_hat at both ends)."""
    p = PROCS["linear_interpolant"]
    gm = GaussianMixture.isotropic(torch.tensor([0.6, 0.4]), torch.tensor([[1.0, -1.0], [-1.5, 0.5]]), 0.3)
    den = gm.denoiser(p)
    x_T = prior_sample(p, (64, 2), torch.Generator().manual_seed(0))
    grid = time_grid(p, 25, "uniform_t")

    def u_hat(x, t):
        x0 = den(x, torch.full((x.shape[0],), t, dtype=F64))
        return (x - (1 - t) * x0) / t - x0  # eps_hat - x0_hat

    x = x_T
    for t, s in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        u = u_hat(x, t)
        x = (
            x + (s - t) * u
            if sampler is sample_ode_euler
            else x + 0.5 * (s - t) * (u + u_hat(x + (s - t) * u, s))
        )
    ours = sampler(den, p, x_T, grid, denoise_final=False)
    assert (ours - x).abs().max().item() < 1e-11


@pytest.mark.parametrize("pname", list(PROCS))
def test_karras_grid(pname: str) -> None:
    p = PROCS[pname]
    for steps in (1, 5, 40):
        g = time_grid(p, steps, "karras")
        assert g.dtype == F64 and g.shape == (steps + 1,) and bool((g[1:] < g[:-1]).all())
        assert g[0].item() == p.t_max and g[-1].item() == p.t_min
    g = karras_grid(p, 12)
    c = p.coefficients(g)
    s = (c.sigma / c.alpha)[1:-1]
    s_max, s_min = float(c.sigma[0] / c.alpha[0]), float(c.sigma[-1] / c.alpha[-1])
    i = torch.arange(1, 12, dtype=F64) / 12
    expected = (s_max ** (1 / 7) + i * (s_min ** (1 / 7) - s_max ** (1 / 7))) ** 7
    torch.testing.assert_close(s, expected, rtol=1e-9, atol=0)


NEW = ["dpmpp_2m", "edm_heun", "edm_stochastic"]


@pytest.mark.parametrize("pname", ["linear_interpolant", "trig_vp_shifted"])
def test_every_sampler_runs_on_the_new_processes(pname: str) -> None:
    """The sampler contract (shape, dtype, finiteness, NFE) of every table entry on the new processes."""
    p = PROCS[pname]
    gm = GaussianMixture.isotropic(torch.tensor([0.6, 0.4]), torch.tensor([[1.0, -1.0], [-1.5, 0.5]]), 0.3)
    for name, spec in SAMPLERS.items():
        for kind in [k for k in GRIDS if k != "discrete"]:
            calls = []

            def den(x, t, calls=calls):
                calls.append(1)
                return gm.denoiser(p)(x, t)

            x_T = prior_sample(p, (16, 2), torch.Generator().manual_seed(3), torch.float32)
            out = spec.fn(den, p, x_T, time_grid(p, 6, kind), generator=torch.Generator().manual_seed(7))
            assert out.shape == x_T.shape and out.dtype == torch.float32 and bool(torch.isfinite(out).all())
            assert len(calls) == spec.nfe(6), (name, kind)


def test_new_samplers_registered() -> None:
    for name in NEW:
        assert name in SAMPLERS
    assert SAMPLERS["dpmpp_2m"].nfe(10) == 11 and SAMPLERS["edm_heun"].nfe(18) == 37
    assert SAMPLERS["edm_stochastic"].stochastic and not SAMPLERS["edm_heun"].stochastic
    with pytest.raises(ValueError, match="order"):
        sample_dpmpp_2m(lambda x, t: x, PROCS["ve"], torch.zeros(2, 2, dtype=F64), [1.0, 0.5], order=3)


def test_unknown_sampler_and_grid_list_the_new_choices() -> None:
    from difflab.registry import UnknownNameError
    from difflab.samplers import get_sampler

    with pytest.raises(UnknownNameError) as err:
        get_sampler("dpm_solver")
    for name in NEW:
        assert name in str(err.value)
    with pytest.raises(UnknownNameError, match="karras"):
        time_grid(PROCS["ve"], 4, "edm")
