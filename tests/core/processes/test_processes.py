"""Contract tests over every process in ``difflab.processes.PROCESSES`` (DESIGN.md sec. 6).

Each process is checked for: finite coefficients on [t_min, t_max], lambda_t strictly decreasing, the
inverse t(lambda) (round trip to 1e-9), analytic derivatives against autograd (rel 1e-8), g(t)^2 > 0,
alpha^2 + sigma^2 = 1 for VP processes, and the forward SDE dx = f(t) x dt + g(t) dw (Euler-Maruyama, float64)
against the closed-form marginal N(alpha_t m, alpha_t^2 v + sigma_t^2) of data N(m, v).
"""

from __future__ import annotations

import math

import pytest
import torch

from difflab.processes import (
    BETA_SCHEDULES,
    PROCESSES,
    DiscreteChain,
    Process,
    VarianceProcess,
    build_process,
    ddpm_chain,
)
from difflab.processes.discrete import cosine_betas, linear_betas, quadratic_betas, sigmoid_betas
from difflab.registry import UnknownNameError

F64 = torch.float64

# every table entry with defaults, every DDPM beta schedule at T = 50 and 1000, and non-default options
CASES: dict[str, Process] = {name: build_process(name) for name in PROCESSES}
CASES.update({f"ddpm-{s}-{T}": ddpm_chain(T, s) for s in BETA_SCHEDULES for T in (50, 1000)})
CASES.update(
    {
        "ou-h2": build_process("ou", horizon=2.0, t_min=0.01, t_max=0.9),
        "ve-edm": build_process("ve", sigma_min=0.002, sigma_max=80.0),
        "linear_vp-b10": build_process("linear_vp", beta_min=0.05, beta_max=10.0, t_min=1e-3),
        "sub_vp-b10": build_process("sub_vp", beta_min=0.05, beta_max=10.0),
        "trig_vp-wide": build_process("trig_vp", t_min=1e-3, t_max=0.999),
        "trig_vp-shifted256": build_process("trig_vp", resolution=256),
        "trig_vp-shifted32": build_process("trig_vp", resolution=32, t_min=1e-3),
    }
)
IDS = list(CASES)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: intra-op threads only add overhead (and thrash on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fine_grid(p: Process, n: int = 4001) -> torch.Tensor:
    return torch.linspace(p.t_min, p.t_max, n, dtype=F64)


def off_knot_grid(p: Process, n: int = 997) -> torch.Tensor:
    """Points strictly inside (t_min, t_max), away from the DDPM grid knots i/T (where lambda' jumps)."""
    t = torch.linspace(p.t_min, p.t_max, n + 2, dtype=F64)[1:-1]
    if isinstance(p, DiscreteChain):
        frac = t * p.T - torch.floor(t * p.T)
        t = t[(frac > 1e-3) & (frac < 1 - 1e-3)]
    return t


@pytest.mark.parametrize("name", IDS)
def test_coefficients_finite_and_g2_positive(name: str) -> None:
    p = CASES[name]
    c = p.coefficients(fine_grid(p))
    fields = ("alpha", "sigma", "d_alpha", "d_sigma", "logsnr", "d_logsnr", "drift", "g2", "snr", "d_snr")
    for field in fields:
        value = getattr(c, field)
        assert value.dtype == F64 and value.shape == c.t.shape, field
        assert torch.isfinite(value).all(), field
    assert (c.alpha > 0).all() and (c.sigma > 0).all()
    assert (c.g2 > 0).all()
    assert (c.d_logsnr < 0).all() and (c.d_snr < 0).all()
    assert math.isfinite(p.prior_std) and p.prior_std > 0
    assert f"t_min={p.t_min:g}" in repr(p)


@pytest.mark.parametrize("name", IDS)
def test_logsnr_strictly_decreasing(name: str) -> None:
    p = CASES[name]
    lam = p.logsnr(fine_grid(p, 20001))
    assert (lam[1:] < lam[:-1]).all()


@pytest.mark.parametrize("name", IDS)
def test_t_logsnr_round_trip(name: str) -> None:
    p = CASES[name]
    t = fine_grid(p, 1001)
    back = p.t_of_logsnr(p.logsnr(t))
    assert back.dtype == F64
    torch.testing.assert_close(back, t, rtol=0, atol=1e-9)
    # and lambda -> t -> lambda on a uniform log-SNR grid
    lam = torch.linspace(float(p.logsnr(p.t_min)), float(p.logsnr(p.t_max)), 257, dtype=F64)
    torch.testing.assert_close(p.logsnr(p.t_of_logsnr(lam)), lam, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("name", IDS)
def test_derivatives_match_autograd(name: str) -> None:
    p = CASES[name]
    t = off_knot_grid(p).requires_grad_(True)
    c = p.coefficients(t.detach())
    for value_fn, analytic in ((p.alpha, c.d_alpha), (p.sigma, c.d_sigma), (p.logsnr, c.d_logsnr)):
        value = value_fn(t)
        # a constant (VE's alpha_t = 1) is built without a graph: its derivative is 0
        auto = torch.autograd.grad(value.sum(), t)[0] if value.requires_grad else torch.zeros_like(value)
        torch.testing.assert_close(analytic, auto, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(p.d_logsnr(t.detach()), c.d_logsnr, rtol=1e-12, atol=0)
    # the forward SDE coefficients: f = alpha'/alpha, g^2 = (sigma^2)' - 2 f sigma^2
    torch.testing.assert_close(c.drift, c.d_alpha / c.alpha, rtol=1e-12, atol=0)
    g2 = 2 * c.sigma * c.d_sigma - 2 * c.drift * c.sigma**2
    torch.testing.assert_close(c.g2, g2, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in IDS if isinstance(CASES[n], VarianceProcess)])
def test_variance_preserving(name: str) -> None:
    p = CASES[name]
    c = p.coefficients(fine_grid(p))
    torch.testing.assert_close(c.alpha**2 + c.sigma**2, torch.ones_like(c.t), rtol=0, atol=1e-12)
    assert abs(p.prior_std - 1.0) < 1e-12


def test_named_closed_forms() -> None:
    t = torch.linspace(0.01, 0.99, 99, dtype=F64)
    trig = build_process("trig_vp")
    torch.testing.assert_close(trig.alpha(t), torch.cos(math.pi * t / 2))
    torch.testing.assert_close(trig.sigma(t), torch.sin(math.pi * t / 2))
    ou = build_process("ou", horizon=5.0)
    torch.testing.assert_close(ou.alpha(t), torch.exp(-5 * t))
    torch.testing.assert_close(ou.coefficients(t).g2, torch.full_like(t, 10.0))  # dx = -x dtau + sqrt(2) dw
    ve = build_process("ve")
    torch.testing.assert_close(ve.sigma(t), 0.01 * (50 / 0.01) ** t)
    assert abs(ve.prior_std - math.sqrt(1 + 50.0**2)) < 1e-9
    lin = build_process("linear_vp")
    beta = 0.1 + t * 19.9
    torch.testing.assert_close(lin.coefficients(t).g2, beta)  # VP SDE: g^2 = beta(t)
    sub = build_process("sub_vp")
    a2 = lin.alpha(t) ** 2
    torch.testing.assert_close(sub.sigma(t), 1 - a2)
    torch.testing.assert_close(sub.coefficients(t).g2, beta * (1 - a2**2))  # Song et al. 2021, eq. 29


# --- forward SDE by Euler-Maruyama -------------------------------------------------------------------------


def euler_maruyama(p: Process, x: torch.Tensor, ts: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
    """x_{k+1} = x_k + f(t_k) x_k h + g(t_k) sqrt(h) z_k on the grid ``ts`` (Kloeden & Platen 1992, sec. 9.1).

    Returns the states at every grid point."""
    c = p.coefficients(ts[:-1])
    out = [x]
    for k in range(len(ts) - 1):
        h = float(ts[k + 1] - ts[k])
        z = torch.randn(x.shape, dtype=F64, generator=gen)
        x = x + float(c.drift[k]) * x * h + math.sqrt(float(c.g2[k]) * h) * z
        out.append(x)
    return out


@pytest.mark.parametrize("name", ["trig_vp", "linear_vp", "ou", "ve", "sub_vp"])
def test_forward_sde_matches_marginals(name: str) -> None:
    """Start from the exact marginal at t_min of data N(m, v) -- a point mass (v = 0) and a Gaussian -- run
    Euler-Maruyama with 1000 steps and 20000 particles, and compare mean and variance with
    N(alpha_t m, alpha_t^2 v + sigma_t^2) at the middle and the end, within 4 standard errors. EM's bias in
    the variance is O(|f| h), at most ~1% here, against a 4-s.e. band of 4%."""
    p = CASES[name]
    n, steps = 20000, 1000
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    m = torch.tensor([1.5, -0.7], dtype=F64)  # column 0: point mass at 1.5; column 1: N(-0.7, 0.6^2)
    v = torch.tensor([0.0, 0.36], dtype=F64)
    t1 = min(p.t_max, 0.9)  # trig_vp: f(t) = -(pi/2) tan(pi t/2) is stiff near t = 1
    ts = torch.linspace(p.t_min, t1, steps + 1, dtype=F64)
    c0 = p.coefficients(ts[0])
    x = c0.alpha * m + torch.sqrt(c0.alpha**2 * v + c0.sigma**2) * torch.randn(n, 2, dtype=F64, generator=gen)
    path = euler_maruyama(p, x, ts, gen)
    for k in (steps // 2, steps):
        c = p.coefficients(ts[k])
        mean, var = c.alpha * m, c.alpha**2 * v + c.sigma**2
        se_mean, se_var = torch.sqrt(var / n), var * math.sqrt(2 / (n - 1))
        z_mean = (path[k].mean(0) - mean) / se_mean
        z_var = (path[k].var(0) - var) / se_var
        assert (z_mean.abs() < 4).all(), (k, z_mean)
        assert (z_var.abs() < 4).all(), (k, z_var)


# --- DDPM beta lists (seed 001) ----------------------------------------------------------------------------


@pytest.mark.parametrize("T", [50, 1000])
def test_beta_lists(T: int) -> None:
    lin = linear_betas(T)
    assert lin.dtype == F64 and lin.shape == (T,)
    assert abs(float(lin[0]) - 1e-4) < 1e-15 and abs(float(lin[-1]) - 0.02) < 1e-15
    quad = quadratic_betas(T)
    assert abs(float(quad[0]) - 1e-4) < 1e-15 and abs(float(quad[-1]) - 0.02) < 1e-15
    sig = sigmoid_betas(T)
    assert (sig > 1e-4).all() and (sig < 0.02).all() and (sig[1:] > sig[:-1]).all()
    cos = cosine_betas(T)
    assert float(cos.min()) >= 1e-4 and float(cos.max()) <= 0.9999
    assert float(cos[-1]) == 0.9999  # alpha_bar_T = 0 gives beta_T = 1, clipped (Nichol & Dhariwal 2021)
    # unclipped cosine betas reproduce alpha_bar(i) = f(i) / f(0)
    i = torch.arange(T + 1, dtype=F64)
    f = torch.cos(((i / T + 0.008) / 1.008) * math.pi / 2) ** 2
    raw = cosine_betas(T, beta_clip=(0.0, 1.0))
    torch.testing.assert_close(torch.cumprod(1 - raw, 0)[:-1], (f / f[0])[1:-1], rtol=1e-10, atol=0)


@pytest.mark.parametrize("schedule", list(BETA_SCHEDULES))
@pytest.mark.parametrize("T", [50, 1000])
def test_chain_alpha_bar_on_grid(schedule: str, T: int) -> None:
    p = ddpm_chain(T, schedule)
    assert p.T == T and p.t_min == pytest.approx(1 / T) and p.t_max == 1.0
    cumprod = torch.cumprod(1 - p.betas, 0)
    torch.testing.assert_close(p.alpha_bar[1:], cumprod, rtol=1e-12, atol=0)
    grid = torch.arange(1, T + 1, dtype=F64) / T
    torch.testing.assert_close(p.alpha(grid) ** 2, cumprod, rtol=1e-12, atol=0)
    torch.testing.assert_close(p.index(grid), torch.arange(1, T + 1))
    # posterior variance beta_tilde_i = beta_i (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i) (Ho et al. eq. 7)
    bt = p.posterior_variance()
    assert float(bt[0]) == 0.0 and (bt <= p.betas + 1e-15).all()


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as err:
        build_process("vp_magic")
    for name in PROCESSES:
        assert name in str(err.value)
    with pytest.raises(UnknownNameError, match="cosine"):
        ddpm_chain(10, "exponential")
    with pytest.raises(UnknownNameError, match="bad options"):
        build_process("ou", beta_max=3.0)
    with pytest.raises(ValueError):
        build_process("trig_vp", t_min=0.5, t_max=0.2)
