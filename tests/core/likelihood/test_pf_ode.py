"""PF-ODE log-likelihood against closed-form densities (Song et al. 2021, App. D.2).

With the exact Bayes denoiser of Gaussian / Gaussian-mixture data the PF-ODE transports p_{t_min} to p_{t_max}
exactly, so the only errors are (i) the solver, (ii) the prior N(0, prior_std^2 I) standing in for p_{t_max},
(iii) p_{t_min} vs p_0. Tests either compare with log p_0 (all three; budget 0.01 nats) or plug the exact
log p_{t_max}(x_t_max) in place of the prior to isolate the solver error.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from difflab.data.gaussian import GaussianMixture
from difflab.likelihood.pf_ode import LikelihoodResult, bits_per_dim, pf_ode_log_likelihood
from difflab.processes import PROCESSES, build_process

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (and thrash on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def diag_gaussian(dim: int) -> GaussianMixture:
    mu = torch.linspace(-0.5, 0.5, dim, dtype=F64)
    s = torch.linspace(0.5, 1.5, dim, dtype=F64)
    return GaussianMixture.gaussian(mu, torch.diag(s**2))


def three_modes() -> GaussianMixture:
    means = torch.tensor([[1.5, 0.0], [-1.0, 1.2], [-0.5, -1.4]], dtype=F64)
    covs = torch.stack(
        [
            torch.tensor([[0.3**2, 0.02], [0.02, 0.2**2]], dtype=F64),
            0.25**2 * torch.eye(2, dtype=F64),
            torch.tensor([[0.35**2, -0.03], [-0.03, 0.25**2]], dtype=F64),
        ]
    )
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), means, covs)


def solver_error(gm: GaussianMixture, process, x0: torch.Tensor, r: LikelihoodResult) -> torch.Tensor:
    """|log p_{t_max}(x_t_max) + delta - log p_{t_min}(x0)| with exact densities: the solver's error alone."""
    oracle = gm.log_prob(r.x_t_max, process.t_max, process) + r.delta_log_prob
    return (oracle - gm.log_prob(x0, process.t_min, process)).abs()


@pytest.mark.parametrize("process_name", ["trig_vp", "linear_vp"])
@pytest.mark.parametrize("dim", [2, 5])
def test_gaussian_log_density(process_name: str, dim: int) -> None:
    process = build_process(process_name)
    gm = diag_gaussian(dim)
    x0 = gm.sample(16, generator=torch.Generator().manual_seed(dim))
    r = pf_ode_log_likelihood(gm.denoiser(process), process, x0, solver="dopri5", rtol=1e-6, atol=1e-6)
    err = (r.log_prob - gm.log_prob(x0)).abs()
    # measured: trig_vp 7e-5 / 8e-5, linear_vp 3.8e-3 / 4.5e-3 (its prior mismatch, alpha_1 = 6.6e-3)
    assert err.mean() < 0.01
    assert solver_error(gm, process, x0, r).mean() < 1e-5  # measured <= 1e-6
    torch.testing.assert_close(r.log_prob, r.prior_log_prob + r.delta_log_prob, rtol=0, atol=1e-12)
    assert r.log_prob.shape == (16,) and r.x_t_max.shape == x0.shape
    assert r.rtol == 1e-6 and r.atol == 1e-6 and r.solver == "dopri5" and r.n_probes == 0
    assert r.nfe == 2 + 6 * (r.steps + r.rejected)  # initial-step probe + 6 new stages per step (FSAL)


@pytest.mark.parametrize("grid", ["uniform_t", "uniform_logsnr"])
@pytest.mark.parametrize("process_name", list(PROCESSES))
def test_every_process(process_name: str, grid: str) -> None:
    """Solver error with dopri5 rtol 1e-6 on every process of the table (measured <= 3.4e-6), except the
    DDPM chain on a uniform t grid: its log alpha_bar is piecewise linear in t, so the field has a kink at
    each of the T = 1000 knots (656 NFE, 1.3e-4). In log-SNR the VP PF-ODE does not see the schedule at all
    (116 NFE, 7e-7)."""
    process = build_process(process_name)
    gm = diag_gaussian(2)
    x0 = gm.sample(8, generator=torch.Generator().manual_seed(9))
    r = pf_ode_log_likelihood(gm.denoiser(process), process, x0, rtol=1e-6, atol=1e-6, grid=grid)
    budget = 1e-3 if (process_name, grid) == ("ddpm", "uniform_t") else 1e-5
    assert solver_error(gm, process, x0, r).mean() < budget
    assert torch.isfinite(r.log_prob).all() and r.grid == grid


def test_mixture_log_density_exact_divergence() -> None:
    process = build_process("trig_vp")
    gm = three_modes()
    x0 = gm.sample(32, generator=torch.Generator().manual_seed(0))
    r = pf_ode_log_likelihood(gm.denoiser(process), process, x0, divergence="exact", rtol=1e-6, atol=1e-6)
    err = (r.log_prob - gm.log_prob(x0)).abs()
    assert err.mean() < 0.01  # measured 4.7e-5
    assert solver_error(gm, process, x0, r).mean() < 1e-5  # measured 8e-7


@pytest.mark.parametrize(
    ("solver", "steps", "grid", "budget"),
    # measured mean solver errors: 3.4e-6, 1.3e-3, 1.1e-3, 3.7e-3 nats
    [
        ("rk4", 50, "uniform_t", 2e-5),
        ("rk4", 50, "uniform_logsnr", 5e-3),
        ("heun", 100, "uniform_t", 5e-3),
        ("heun", 100, "uniform_logsnr", 1e-2),
    ],
)
def test_fixed_step_solvers(solver: str, steps: int, grid: str, budget: float) -> None:
    process = build_process("trig_vp")
    gm = three_modes()
    x0 = gm.sample(16, generator=torch.Generator().manual_seed(1))
    r = pf_ode_log_likelihood(gm.denoiser(process), process, x0, solver=solver, steps=steps, grid=grid)
    assert r.nfe == steps * (4 if solver == "rk4" else 2)
    assert r.rtol is None and r.steps == steps
    assert solver_error(gm, process, x0, r).mean() < budget


def test_rk4_converges_at_fourth_order() -> None:
    process = build_process("linear_vp")
    gm = diag_gaussian(2)
    x0 = gm.sample(8, generator=torch.Generator().manual_seed(2))
    errs = [
        solver_error(
            gm, process, x0, pf_ode_log_likelihood(gm.denoiser(process), process, x0, solver="rk4", steps=n)
        )
        .mean()
        .item()
        for n in (10, 20, 40)
    ]
    rates = [math.log2(a / b) for a, b in itertools.pairwise(errs)]
    assert all(r > 3.0 for r in rates), (errs, rates)


def test_adaptive_tolerance_and_nfe() -> None:
    process = build_process("trig_vp")
    gm = three_modes()
    x0 = gm.sample(16, generator=torch.Generator().manual_seed(3))
    errs, nfes = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        r = pf_ode_log_likelihood(gm.denoiser(process), process, x0, solver="dopri5", rtol=tol, atol=tol)
        err = solver_error(gm, process, x0, r).mean().item()
        # global error within 10x the requested relative accuracy of log p (|log p| ~ 2-4 nats here)
        assert err < 10 * tol * (1 + r.log_prob.abs().mean().item()), (tol, err)
        errs.append(err)
        nfes.append(r.nfe)
    assert errs[0] > errs[1] > errs[2]
    assert nfes[0] < nfes[1] < nfes[2]


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_unbiased(probe: str) -> None:
    process = build_process("trig_vp")
    gm = three_modes()
    x0 = gm.sample(8, generator=torch.Generator().manual_seed(4))
    kw = dict(solver="rk4", steps=20)
    exact = pf_ode_log_likelihood(gm.denoiser(process), process, x0, divergence="exact", **kw)
    n = 256
    hut = pf_ode_log_likelihood(
        gm.denoiser(process),
        process,
        x0,
        divergence="hutchinson",
        n_probes=n,
        probe=probe,
        generator=torch.Generator().manual_seed(5),
        **kw,
    )
    per_probe = hut.probe_delta_log_prob
    assert per_probe is not None and per_probe.shape == (n, 8)
    torch.testing.assert_close(hut.delta_log_prob, per_probe.mean(0))
    # the x-trajectory does not depend on the probes
    torch.testing.assert_close(hut.x_t_max, exact.x_t_max, rtol=0, atol=1e-12)
    se = per_probe.std(0) / math.sqrt(n)
    z = (per_probe.mean(0) - exact.delta_log_prob) / se
    assert (z.abs() < 4).all(), z
    pooled = (per_probe.mean(0) - exact.delta_log_prob).mean() / (se.pow(2).sum().sqrt() / 8)
    assert pooled.abs() < 3, pooled
    assert se.max() > 1e-4  # the estimator really is noisy: this is not the exact trace in disguise


def test_hutchinson_adaptive_single_probe() -> None:
    process = build_process("linear_vp")
    gm = diag_gaussian(5)
    x0 = gm.sample(4, generator=torch.Generator().manual_seed(6))
    r = pf_ode_log_likelihood(
        gm.denoiser(process), process, x0, divergence="hutchinson", generator=torch.Generator().manual_seed(0)
    )
    assert r.n_probes == 1 and r.nfe > 0 and torch.isfinite(r.log_prob).all()
    # a diagonal Gaussian's Jacobian is diagonal, so Rademacher probes give the exact trace
    assert (r.log_prob - gm.log_prob(x0)).abs().mean() < 0.01


def test_image_shaped_input_and_float32() -> None:
    """Data of shape (B, C, H, W) with a denoiser that works on the flat vector; float32 state."""
    process = build_process("trig_vp")
    gm = diag_gaussian(4)
    flat_denoiser = gm.denoiser(process)

    def denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return flat_denoiser(x_t.reshape(x_t.shape[0], 4), t).reshape(x_t.shape)

    x0 = gm.sample(6, generator=torch.Generator().manual_seed(7))
    r = pf_ode_log_likelihood(denoiser, process, x0.reshape(6, 1, 2, 2).float(), solver="rk4", steps=20)
    assert r.x_t_max.shape == (6, 1, 2, 2) and r.x_t_max.dtype == torch.float32
    assert (r.log_prob - gm.log_prob(x0)).abs().mean() < 1e-3  # measured ~1e-4 (float32)


def test_works_under_no_grad_and_with_parameters() -> None:
    process = build_process("linear_vp")
    gm = diag_gaussian(2)
    lin = torch.nn.Linear(2, 2).double()
    exact = gm.denoiser(process)

    def denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return exact(x_t, t) + 0.0 * lin(x_t)

    x0 = gm.sample(4, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        r = pf_ode_log_likelihood(denoiser, process, x0, solver="rk4", steps=10)
    assert torch.isfinite(r.log_prob).all()
    assert lin.weight.grad is None  # only input gradients are taken


def test_bits_per_dim_constants() -> None:
    D = 3 * 8 * 8
    zero = torch.zeros(2, dtype=F64)
    # default bin width 2/255: difflab's images are k / 127.5 - 1 (data/images.py)
    torch.testing.assert_close(bits_per_dim(zero, D), torch.full((2,), math.log2(127.5), dtype=F64))
    torch.testing.assert_close(bits_per_dim(zero, D, bin_width=2 / 256), torch.full((2,), 7.0, dtype=F64))
    # a model uniform on [-1, 1)^D (density 2^-D) is worth exactly 8 bits per 8-bit dimension (bins 2/256)
    uniform = torch.full((1,), -D * math.log(2.0), dtype=F64)
    torch.testing.assert_close(bits_per_dim(uniform, D, bin_width=2 / 256), torch.full((1,), 8.0, dtype=F64))


def test_bad_options() -> None:
    process = build_process("trig_vp")
    gm = diag_gaussian(2)
    x0 = gm.sample(2)
    for kw, word in [
        (dict(solver="euler"), "dopri5"),
        (dict(divergence="skilling"), "hutchinson"),
        (dict(probe="sphere"), "rademacher"),
        (dict(grid="karras"), "uniform_logsnr"),
    ]:
        with pytest.raises(ValueError, match=word):
            pf_ode_log_likelihood(gm.denoiser(process), process, x0, **kw)
    with pytest.raises(RuntimeError, match="dopri5"):
        pf_ode_log_likelihood(gm.denoiser(process), process, x0, rtol=1e-12, atol=1e-12, max_steps=5)
