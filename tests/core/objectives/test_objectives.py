"""Objectives: weightings x targets x time distributions x norms, their identities, in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from difflab.data.gaussian import GaussianMixture
from difflab.objectives import (
    NORMS,
    TIME_DISTRIBUTIONS,
    WEIGHTINGS,
    build_norm,
    build_objective,
    build_time_distribution,
    build_weighting,
)
from difflab.parameterization import Target, TargetDenoiser, from_hub
from difflab.processes import VE, LinearVP, OrnsteinUhlenbeck, SubVP, TrigVP, ddpm_chain
from difflab.registry import UnknownNameError

TARGETS = [t.value for t in Target]
CHAIN = ddpm_chain(50, "linear")


class HubNet(nn.Module):
    """A network for ``target`` whose implied x0_hat is one fixed function of (x_t, t, theta)."""

    def __init__(self, process, target: str, theta: nn.Parameter | None = None, x0_fn=None) -> None:
        super().__init__()
        self.process = process
        self.target = Target(target)
        self.theta = (
            theta if theta is not None else nn.Parameter(torch.tensor([0.7, -0.4], dtype=torch.float64))
        )
        self.x0_fn = x0_fn

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        c = self.process.coefficients(t.to(torch.float64))
        a, s = c.alpha[:, None], c.sigma[:, None]
        if self.x0_fn is None:
            x0_hat = (
                self.theta[0] * torch.tanh(x_t) + self.theta[1] * t[:, None] * x_t + 0.3 * torch.sin(2 * x_t)
            )
        else:
            x0_hat = self.x0_fn(x_t, t)
        eps_hat = (x_t - a * x0_hat) / s
        return from_hub(self.target, x0_hat, eps_hat, c.alpha, c.sigma, d_alpha=c.d_alpha, d_sigma=c.d_sigma)


def denoiser_for(process, target: str, theta=None, x0_fn=None) -> TargetDenoiser:
    return TargetDenoiser(HubNet(process, target, theta, x0_fn), process, target)


def draws(process, n=64, dim=3, seed=0, discrete=False):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, dim, dtype=torch.float64, generator=g)
    eps = torch.randn(n, dim, dtype=torch.float64, generator=g)
    if discrete:
        t = torch.randint(1, process.T + 1, (n,), generator=g).to(torch.float64) / process.T
    else:
        t = process.t_min + (process.t_max - process.t_min) * torch.rand(n, dtype=torch.float64, generator=g)
    return x0, eps, t


def _process_for(weighting: str, time_dist: str):
    return CHAIN if (weighting == "vlb_clipped" or time_dist == "discrete") else TrigVP()


COMBOS = [
    (w, x, d)
    for w in WEIGHTINGS
    for x in TARGETS
    for d in TIME_DISTRIBUTIONS
    if not (w == "vlb_clipped" and d != "discrete")
]


# --- contract -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("weighting", "target", "time_dist"), COMBOS)
def test_contract(weighting: str, target: str, time_dist: str) -> None:
    process = _process_for(weighting, time_dist)
    obj = build_objective(process, target, weighting, time_dist)
    # weights finite and positive on the whole clamp range (on the grid for the chain weighting)
    if weighting == "vlb_clipped":
        t_grid = CHAIN.grid[1:]
    else:
        t_grid = torch.linspace(process.t_min, process.t_max, 201, dtype=torch.float64)
    w = obj.weight(t_grid)
    assert w.dtype == torch.float64 and w.shape == t_grid.shape
    assert bool(torch.isfinite(w).all()) and bool((w > 0).all())
    # determinism under a seeded generator, shapes, finiteness
    x0 = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    den = denoiser_for(process, target)
    out1 = obj(den, x0, generator=torch.Generator().manual_seed(11))
    out2 = obj(den, x0, generator=torch.Generator().manual_seed(11))
    for f in ("loss", "t", "logsnr", "weight", "raw_error", "importance"):
        a, b = getattr(out1, f), getattr(out2, f)
        assert a.shape == (16,)
        assert torch.equal(a, b)
    assert bool(torch.isfinite(out1.loss).all()) and bool((out1.loss >= 0).all())
    assert bool(((out1.t >= process.t_min) & (out1.t <= process.t_max)).all())
    torch.testing.assert_close(out1.loss, out1.weight * out1.importance * out1.raw_error, rtol=1e-14, atol=0)


@pytest.mark.parametrize(
    "process", [TrigVP(), LinearVP(), OrnsteinUhlenbeck(), SubVP(), VE(), CHAIN], ids=repr
)
@pytest.mark.parametrize("weighting", [w for w in WEIGHTINGS if w != "vlb_clipped"])
def test_weights_finite_positive_every_process(process, weighting: str) -> None:
    t = torch.linspace(process.t_min, process.t_max, 101, dtype=torch.float64)
    c = process.coefficients(t)
    wt = build_weighting(weighting)
    for target in TARGETS:
        w = wt.weight(target, c, process)
        assert bool(torch.isfinite(w).all()) and bool((w > 0).all()), (weighting, target)


def test_unknown_names_list_valid_ones() -> None:
    p = TrigVP()
    for kwargs, valid in [
        ({"weighting": "elbo"}, WEIGHTINGS),
        ({"time_dist": "lognormal"}, TIME_DISTRIBUTIONS),
        ({"norm": "l3"}, NORMS),
        ({"target": "noise"}, TARGETS),
    ]:
        with pytest.raises(UnknownNameError) as err:
            build_objective(p, **kwargs)
        for name in valid:
            assert name in str(err.value)
    with pytest.raises(UnknownNameError, match="gamma"):
        build_objective(p, "eps", "min_snr", gama=3.0)  # typo: the valid options are listed
    with pytest.raises(UnknownNameError):
        build_objective(p, "eps", "nelbo", gamma=3.0)  # gamma belongs to min_snr only
    with pytest.raises(UnknownNameError):
        build_weighting("min_snr", clip=1.0)


def test_option_routing() -> None:
    p = TrigVP()
    obj = build_objective(
        p, "x0", "min_snr", "logsnr_uniform", "huber", gamma=2.0, stratified=True, delta=0.5, importance=False
    )
    assert obj.weighting.name == "min_snr(gamma=2)" and obj.time_dist.stratified
    assert obj.norm.name == "huber(delta=0.5)" and not obj.importance
    out = obj(
        denoiser_for(p, "x0"),
        torch.randn(8, 2, dtype=torch.float64),
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(out.importance, torch.ones(8, dtype=torch.float64))
    t = torch.linspace(p.t_min, p.t_max, 50, dtype=torch.float64)
    torch.testing.assert_close(obj.weight(t), torch.clamp(p.coefficients(t).snr, max=2.0), rtol=1e-14, atol=0)


def test_chain_requirements() -> None:
    with pytest.raises(ValueError, match=r"DiscreteChain|discrete DDPM chain"):
        build_objective(TrigVP(), "eps", "vlb_clipped", "discrete")
    with pytest.raises(ValueError, match="discrete DDPM chain"):
        build_objective(TrigVP(), "eps", "vlb_clipped", "uniform")
    with pytest.raises(ValueError, match="DiscreteChain"):
        build_time_distribution("discrete", TrigVP())
    obj = build_objective(CHAIN, "eps", "vlb_clipped", "uniform")
    with pytest.raises(ValueError, match="grid"):
        obj(denoiser_for(CHAIN, "eps"), torch.randn(4, 2, dtype=torch.float64), t=torch.full((4,), 0.0123))


# --- time distributions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("process", [TrigVP(), LinearVP(), CHAIN], ids=repr)
@pytest.mark.parametrize(
    ("name", "opts"),
    [("uniform", {}), ("stratified", {}), ("logsnr_uniform", {}), ("logsnr_uniform", {"stratified": True})],
)
def test_importance_weights_integrate(process, name: str, opts: dict) -> None:
    """E[w(t) f(t)] = int_{t_min}^{t_max} f dt for f(t) = 1 + t^2 (within 4 standard errors)."""
    p_t = build_time_distribution(name, process, **opts)
    n = 100_000
    t, w = p_t.sample(n, torch.Generator().manual_seed(1))
    assert t.dtype == torch.float64 and w.shape == (n,)
    assert bool(((t >= process.t_min) & (t <= process.t_max)).all())
    torch.testing.assert_close(w, p_t.importance(t), rtol=1e-12, atol=0)
    vals = w * (1 + t**2)
    a, b = process.t_min, process.t_max
    exact = (b - a) + (b**3 - a**3) / 3
    se = float(vals.std()) / math.sqrt(n)
    assert abs(float(vals.mean()) - exact) < 4 * se + 1e-12


def test_stratified_covers_range() -> None:
    p = TrigVP()
    t, _ = build_time_distribution("stratified", p).sample(100, torch.Generator().manual_seed(0))
    u = torch.sort((t - p.t_min) / (p.t_max - p.t_min)).values
    gaps = u[1:] - u[:-1]
    torch.testing.assert_close(gaps, torch.full_like(gaps, 0.01), rtol=1e-9, atol=1e-12)


def test_logsnr_uniform_inverse_on_chain() -> None:
    """The chain's closed-form t(lambda) agrees with the generic bisection and round-trips lambda."""
    p_t = build_time_distribution("logsnr_uniform", CHAIN)
    t, _ = p_t.sample(500, torch.Generator().manual_seed(4))
    lam = CHAIN.logsnr(t)
    torch.testing.assert_close(CHAIN.t_of_logsnr(lam), t, rtol=0, atol=1e-12)
    assert float(lam.min()) >= p_t.logsnr_min - 1e-9 and float(lam.max()) <= p_t.logsnr_max + 1e-9


def test_discrete_time_convention() -> None:
    """weight 1 and E[w f(t_i)] = (1/T) sum_i f(t_i): the sum over steps is T x the mean."""
    p_t = build_time_distribution("discrete", CHAIN)
    t, w = p_t.sample(200_000, torch.Generator().manual_seed(2))
    assert torch.equal(w, torch.ones_like(w))
    i = torch.round(t * CHAIN.T)
    torch.testing.assert_close(i, t * CHAIN.T, rtol=0, atol=1e-12)
    assert int(i.min()) == 1 and int(i.max()) == CHAIN.T
    f = torch.exp(-CHAIN.grid[1:])
    vals = w * torch.exp(-t)
    se = float(vals.std()) / math.sqrt(t.numel())
    assert abs(float(vals.mean()) - float(f.mean())) < 4 * se


# --- identities between weightings and targets --------------------------------------------------------------


@pytest.mark.parametrize("process", [TrigVP(), LinearVP(), VE(), SubVP(), CHAIN], ids=repr)
def test_nelbo_identical_through_every_target(process) -> None:
    x0, eps, t = draws(process, discrete=process is CHAIN)
    losses = {
        x: build_objective(process, x, "nelbo")(denoiser_for(process, x), x0, t=t, eps=eps).loss
        for x in TARGETS
    }
    for x in TARGETS:
        torch.testing.assert_close(losses[x], losses["eps"], rtol=1e-10, atol=0)


@pytest.mark.parametrize("process", [TrigVP(), LinearVP(), VE(), CHAIN], ids=repr)
@pytest.mark.parametrize("target", TARGETS)
def test_weighting_identities(process, target: str) -> None:
    x0, eps, t = draws(process, discrete=process is CHAIN)
    den = denoiser_for(process, target)

    def loss(name: str) -> Tensor:
        return build_objective(process, target, name)(den, x0, t=t, eps=eps).loss

    c = process.coefficients(t)
    # nelbo / rescaled = -1/2 SNR' for every target
    torch.testing.assert_close(loss("nelbo") / loss("rescaled"), -0.5 * c.d_snr, rtol=1e-10, atol=0)
    # likelihood weighting = 2 x nelbo;  inverse variance = eps_simple
    torch.testing.assert_close(loss("likelihood"), 2.0 * loss("nelbo"), rtol=1e-10, atol=0)
    torch.testing.assert_close(loss("inverse_variance"), loss("eps_simple"), rtol=1e-10, atol=0)
    # NELBO loss = continuous diffusion integrand 1/2 (-lambda') |eps - eps_hat|^2 / D times 1/p(t)
    _, eps_hat = den.predict(process.marginal(x0, t, eps), t)
    integrand = -0.5 * c.d_logsnr * ((eps - eps_hat) ** 2).mean(1) * (process.t_max - process.t_min)
    torch.testing.assert_close(loss("nelbo"), integrand, rtol=1e-10, atol=0)


def test_weighted_gives_different_objectives() -> None:
    p = TrigVP()
    x0, eps, t = draws(p)
    losses = [build_objective(p, x, "weighted")(denoiser_for(p, x), x0, t=t, eps=eps).loss for x in TARGETS]
    for a in losses[1:]:
        assert not torch.allclose(a, losses[0], rtol=1e-3)


def test_rescaled_closed_forms() -> None:
    p = TrigVP()
    t = torch.linspace(0.01, 0.99, 33, dtype=torch.float64)
    c = p.coefficients(t)
    w = build_weighting("rescaled")
    a2, s2 = c.alpha**2, c.sigma**2
    for target, expected in [
        ("x0", torch.ones_like(t)),
        ("eps", s2 / a2),
        ("v", s2 / (a2 + s2) ** 2),
        ("score", s2**2 / a2),
    ]:
        torch.testing.assert_close(w.weight(target, c, p), expected, rtol=1e-12, atol=0)
    m = build_weighting("min_snr", gamma=5.0)
    g = torch.clamp(c.snr, max=5.0)
    torch.testing.assert_close(m.weight("eps", c, p), g / c.snr, rtol=1e-12, atol=0)
    torch.testing.assert_close(m.weight("v", c, p), g / (c.snr + 1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("process", [TrigVP(), LinearVP()], ids=repr)
def test_min_snr_three_forms_equal_losses_and_gradients(process) -> None:
    x0, eps, t = draws(process, n=128)
    theta = nn.Parameter(torch.tensor([0.7, -0.4], dtype=torch.float64))
    losses, grads = {}, {}
    for target in ("x0", "eps", "v"):
        theta.grad = None
        den = denoiser_for(process, target, theta)
        out = build_objective(process, target, "min_snr", gamma=5.0)(den, x0, t=t, eps=eps)
        out.loss.mean().backward()
        losses[target], grads[target] = out.loss.detach(), theta.grad.clone()
    for target in ("eps", "v"):
        torch.testing.assert_close(losses[target], losses["x0"], rtol=1e-10, atol=0)
        torch.testing.assert_close(grads[target], grads["x0"], rtol=1e-10, atol=0)
    assert float(grads["x0"].abs().min()) > 1e-6


def test_cross_target_training_and_plain_denoiser() -> None:
    """An x0-network trained with an eps-space loss goes through the hub; a plain x0-denoiser works too."""
    p = LinearVP()
    x0, eps, t = draws(p)
    obj = build_objective(p, "eps", "eps_simple")
    ref = obj(denoiser_for(p, "eps"), x0, t=t, eps=eps).loss
    torch.testing.assert_close(obj(denoiser_for(p, "x0"), x0, t=t, eps=eps).loss, ref, rtol=1e-10, atol=0)
    plain = denoiser_for(p, "x0").forward
    torch.testing.assert_close(obj(plain, x0, t=t, eps=eps).loss, ref, rtol=1e-10, atol=0)


# --- vlb_clipped: seed 001's numbers ------------------------------------------------------------------------


def test_vlb_clipped_matches_seed_001() -> None:
    """Linear beta, T = 500 (seed-repos.md 1.3 [obs], 0-based there: w_0 = inf, w_1 ~ 0.70, w_2 ~ 0.37, ...).

    Our steps are 1-based (t_i = i/T): i = 1 is clipped, i = 2 ~ 0.70, i = 3 ~ 0.37.
    """
    chain = ddpm_chain(500, "linear")
    t = chain.grid[1:]
    c = chain.coefficients(t)
    w = build_weighting("vlb_clipped", clip=1.0).native_weight(c, chain)
    # the seed's values to their printed precision (half a unit of the last digit)
    for i, expected, tol in [
        (1, 1.0, 0),
        (2, 0.70, 5e-3),
        (3, 0.37, 5e-3),
        (11, 0.089, 5e-4),
        (101, 0.011, 5e-4),
        (500, 0.010, 5e-4),
    ]:
        assert abs(float(w[i - 1]) - expected) <= tol, (i, float(w[i - 1]))
    assert int((w >= 1.0).sum()) == 1
    for clip, mean in [(1.0, 0.0175), (10.0, 0.0355), (100.0, 0.2155)]:
        wc = build_weighting("vlb_clipped", clip=clip).native_weight(c, chain)
        assert abs(float(wc.mean()) - mean) < 5e-5
    # unclipped, i >= 2: Ho et al.'s weight = 1/2 (SNR_{i-1}/SNR_i - 1), the exact discrete KL in eps-space
    w_inf = build_weighting("vlb_clipped", clip=math.inf).native_weight(c, chain)
    assert math.isinf(float(w_inf[0]))
    snr = c.snr
    torch.testing.assert_close(w_inf[1:], 0.5 * (snr[:-1] / snr[1:] - 1.0), rtol=1e-10, atol=0)


# --- norms --------------------------------------------------------------------------------------------------


def test_norms() -> None:
    r = torch.tensor([[-3.0, -0.5, 0.2, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(build_norm("l2")(r), (r**2).mean(1))
    torch.testing.assert_close(build_norm("l1")(r), r.abs().mean(1))
    z = torch.zeros_like(r)
    torch.testing.assert_close(build_norm("huber")(r), torch.nn.functional.huber_loss(r, z, delta=1.0)[None])
    expected = torch.tensor([(3 - 0.25) + 0.25 + 0.04 + (2 - 0.25)], dtype=torch.float64) / 4  # delta = 0.5
    torch.testing.assert_close(build_norm("huber", delta=0.5)(r), expected)


# --- the Bayes denoiser on Gaussian data: MC loss = analytic MMSE -------------------------------------------


@pytest.mark.parametrize("t", [0.15, 0.5, 0.85])
def test_bayes_denoiser_loss_matches_mmse(t: float) -> None:
    process = TrigVP()
    mean = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    cov = torch.diag(torch.tensor([0.3, 0.7, 1.2, 0.5], dtype=torch.float64) ** 2)
    data = GaussianMixture.gaussian(mean, cov)
    bayes = data.denoiser(process)
    g = torch.Generator().manual_seed(5)
    n, D = 20_000, 4
    x0 = data.sample(n, generator=g)
    c = process.coefficients(t)
    mmse_x0 = data.mmse_at(float(c.alpha), float(c.sigma))
    for target, weighting, expected in [
        ("x0", "weighted", mmse_x0),
        ("eps", "eps_simple", mmse_x0 * float(c.snr)),
        ("v", "weighted", mmse_x0 * float(c.snr) * float((c.alpha**2 + c.sigma**2) / c.alpha) ** 2),
    ]:
        obj = build_objective(process, target, weighting, importance=False)
        out = obj(denoiser_for(process, target, x0_fn=bayes), x0, t=t, generator=g)
        per_example = out.raw_error * D  # |X - X_hat|^2 summed over dims
        se = float(per_example.std()) / math.sqrt(n)
        assert abs(float(per_example.mean()) - expected) < 3 * se, (
            target,
            float(per_example.mean()),
            expected,
        )
        # a plain x0-denoiser gives the same numbers through the hub
        plain = obj(bayes, x0, t=t, eps=None, generator=torch.Generator().manual_seed(9))
        ref = obj(
            denoiser_for(process, target, x0_fn=bayes), x0, t=t, generator=torch.Generator().manual_seed(9)
        )
        torch.testing.assert_close(plain.loss, ref.loss, rtol=1e-9, atol=1e-12)
