"""Targets x0 / eps / v / score through the (x0_hat, eps_hat) hub (DESIGN.md sec. 3).

Identities checked in float64 for every target and process:
  * to_hub(from_hub(x0, eps)) = (x0, eps) with x_t = alpha x0 + sigma eps;
  * for a prediction consistent with x_t (alpha dx0 + sigma deps = 0), |dX|^2 = error_scale(X) |deps|^2
    (Kingma & Gao 2023, sec. 2): m_x0 = e^{-lambda}, m_v = ((alpha^2 + sigma^2)/alpha)^2, m_s = sigma^{-2};
  * TargetDenoiser around a network that outputs the exact target returns the exact Bayes x0_hat.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from difflab.data.gaussian import GaussianMixture
from difflab.parameterization import (
    TARGETS,
    Target,
    TargetDenoiser,
    error_scale,
    from_hub,
    parse_target,
    to_hub,
)
from difflab.processes import PROCESSES, build_process, ddpm_chain
from difflab.registry import UnknownNameError

F64 = torch.float64
PROCESS_CASES = {name: build_process(name) for name in PROCESSES}
PROCESS_CASES["ddpm-cosine-50"] = ddpm_chain(50, "cosine")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: intra-op threads only add overhead (and thrash on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def times(p) -> torch.Tensor:
    """Endpoints and interior points of [t_min, t_max]."""
    return torch.cat(
        [torch.tensor([p.t_min, p.t_max], dtype=F64), torch.linspace(p.t_min, p.t_max, 32, dtype=F64)[1:-1]]
    )


def draw(p, n_rep: int = 4, dim: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    t = times(p).repeat(n_rep)
    x0 = torch.randn(t.shape[0], dim, dtype=F64, generator=gen) * 1.3 + 0.4
    eps = torch.randn(t.shape[0], dim, dtype=F64, generator=gen)
    c = p.coefficients(t)
    x_t = c.alpha[:, None] * x0 + c.sigma[:, None] * eps
    return t, c, x0, eps, x_t


def _derivs(c) -> dict:
    """d_alpha, d_sigma: the flow target's conversions need them."""
    return {"d_alpha": c.d_alpha, "d_sigma": c.d_sigma}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example relative error |a - b| / |b|."""
    return (a - b).norm(dim=1) / b.norm(dim=1)


@pytest.mark.parametrize("process_name", list(PROCESS_CASES))
@pytest.mark.parametrize("target", list(Target))
def test_hub_round_trip(process_name: str, target: Target) -> None:
    p = PROCESS_CASES[process_name]
    _, c, x0, eps, x_t = draw(p)
    out = from_hub(target, x0, eps, c.alpha, c.sigma, **_derivs(c))
    x0_back, eps_back = to_hub(target, out, x_t, c.alpha, c.sigma, **_derivs(c))
    # relative 1e-12 per example; the x0 target divides by sigma (eps target by alpha), so where sigma (alpha)
    # is tiny the error is the cancellation in x_t - alpha x0: |x_t| ulp / sigma, i.e. 1e-16 / sigma_min
    c_bad = torch.maximum(1 / c.alpha, 1 / c.sigma)
    tol = torch.clamp(1e-12 * torch.ones_like(c_bad), min=4e-16 * c_bad)
    assert (rel_err(x0_back, x0) <= tol).all(), rel_err(x0_back, x0).max()
    assert (rel_err(eps_back, eps) <= tol).all(), rel_err(eps_back, eps).max()


@pytest.mark.parametrize("target", list(Target))
def test_from_hub_formulas(target: Target) -> None:
    p = build_process("linear_vp")
    _, c, x0, eps, _ = draw(p)
    a, s = c.alpha[:, None], c.sigma[:, None]
    da, ds = c.d_alpha[:, None], c.d_sigma[:, None]
    expected = {
        Target.X0: x0,
        Target.EPS: eps,
        Target.V: a * eps - s * x0,
        Target.SCORE: -eps / s,
        Target.FLOW: da * x0 + ds * eps,
    }[target]
    torch.testing.assert_close(
        from_hub(target, x0, eps, c.alpha, c.sigma, **_derivs(c)), expected, rtol=1e-14, atol=0
    )


@pytest.mark.parametrize("process_name", list(PROCESS_CASES))
@pytest.mark.parametrize("target", list(Target))
def test_error_identities(process_name: str, target: Target) -> None:
    """Perturb eps_hat = eps + d, with x0_hat = (x_t - sigma eps_hat)/alpha (the same x_t)."""
    p = PROCESS_CASES[process_name]
    _, c, x0, eps, x_t = draw(p, seed=1)
    d = 0.1 * torch.randn(eps.shape, dtype=F64, generator=torch.Generator().manual_seed(2))
    eps_hat = eps + d
    x0_hat = (x_t - c.sigma[:, None] * eps_hat) / c.alpha[:, None]
    # the perturbed pair is still on the hub of x_t
    x_t_back = c.alpha[:, None] * x0_hat + c.sigma[:, None] * eps_hat
    torch.testing.assert_close(x_t_back, x_t, rtol=1e-12, atol=0)
    dX = from_hub(target, x0_hat, eps_hat, c.alpha, c.sigma, **_derivs(c)) - from_hub(
        target, x0, eps, c.alpha, c.sigma, **_derivs(c)
    )
    lhs = (dX**2).sum(1)
    rhs = error_scale(target, c) * (d**2).sum(1)
    # dX is a difference of O(1) numbers, relative error ~ ulp / sqrt(m_X): worst 1.5e-9 (sub_vp's x0 target
    # at t_min, where sigma/alpha = 2e-6); elsewhere <= 1e-12
    torch.testing.assert_close(lhs, rhs, rtol=1e-8, atol=0)


def test_error_scale_closed_forms() -> None:
    c = build_process("trig_vp").coefficients(torch.linspace(0.05, 0.95, 19, dtype=F64))
    torch.testing.assert_close(error_scale(Target.EPS, c), torch.ones_like(c.t))
    torch.testing.assert_close(error_scale(Target.X0, c), c.sigma**2 / c.alpha**2)
    # VP: m_v = 1 / alpha^2 = 1 + e^{-lambda} (DESIGN.md sec. 3)
    torch.testing.assert_close(error_scale(Target.V, c), 1 + torch.exp(-c.logsnr))
    torch.testing.assert_close(error_scale(Target.SCORE, c), c.sigma**-2)


class ExactTargetNet(nn.Module):
    """A 'network' returning the exact target value of the Bayes denoiser of a Gaussian mixture."""

    def __init__(self, gm: GaussianMixture, process, target: Target) -> None:
        super().__init__()
        self.gm, self.process, self.target = gm, process, target

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x_t.shape[0],)
        c = self.process.coefficients(t.to(F64))
        x0_hat = self.gm.denoise_at(x_t, c.alpha, c.sigma)
        eps_hat = (x_t - c.alpha[:, None] * x0_hat) / c.sigma[:, None]
        return from_hub(self.target, x0_hat, eps_hat, c.alpha, c.sigma, **_derivs(c))


@pytest.mark.parametrize("process_name", ["trig_vp", "linear_vp", "ve", "sub_vp"])
@pytest.mark.parametrize("target", list(Target))
def test_target_denoiser_recovers_bayes_x0(process_name: str, target: Target) -> None:
    p = build_process(process_name)
    gm = GaussianMixture.isotropic(torch.tensor([0.6, 0.4]), torch.tensor([[1.0, -1.0], [-1.5, 0.5]]), 0.4)
    t = torch.linspace(0.05, 0.95, 64, dtype=F64)
    gen = torch.Generator().manual_seed(3)
    x0 = gm.sample(64, generator=gen)
    x_t = p.marginal(x0, t, torch.randn(x0.shape, dtype=F64, generator=gen))
    denoiser = TargetDenoiser(ExactTargetNet(gm, p, target), p, target.value)
    x0_hat, eps_hat = denoiser.predict(x_t, t)
    exact = gm.denoiser(p)(x_t, t)
    torch.testing.assert_close(denoiser(x_t, t), exact, rtol=1e-10, atol=1e-10)
    c = p.coefficients(t)
    x_t_back = c.alpha[:, None] * x0_hat + c.sigma[:, None] * eps_hat
    torch.testing.assert_close(x_t_back, x_t, rtol=1e-12, atol=1e-12)
    # a scalar t is broadcast to the batch
    half = torch.full((4,), 0.5, dtype=F64)
    torch.testing.assert_close(denoiser(x_t[:4], 0.5), gm.denoiser(p)(x_t[:4], half))


def test_target_names() -> None:
    assert set(TARGETS) == {"x0", "eps", "v", "score", "flow"}
    assert parse_target("v") is Target.V and parse_target(Target.EPS) is Target.EPS
    with pytest.raises(UnknownNameError) as err:
        parse_target("velocity")
    for name in TARGETS:
        assert name in str(err.value)
