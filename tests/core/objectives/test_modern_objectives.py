"""EDM, flow matching, sigmoid / P2 weightings, logit-normal / EDM log-normal times, shifted cosine (float64).

The identities (each with a test of the test: a plausible wrong implementation fails the tolerance):
  * EDM's loss computed EDM's way (D-space, lambda(sigma) = (sigma^2 + sigma_data^2)/(sigma sigma_data)^2,
    ln sigma ~ N(P_mean, P_std^2), x~ = y + sigma n) equals difflab's objective (x0 target with EDM
    preconditioning, weighting ``edm``, time distribution ``edm_lognormal``) times the truncation mass Z;
  * the flow-matching loss |u_hat - u|^2 equals (sigma_t lambda'_t/2)^2 |eps_hat - eps|^2 on every
    process, and on the linear interpolant it is the ELBO integrand weighted by w(lambda) = e^{-lambda/2};
  * every ELBO weighting (sigmoid, edm) gives weight x importance = (lambda_max - lambda_min)/2 w(lambda)
    under the log-SNR-uniform proposal, on every process (Kingma & Gao 2023 schedule invariance).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from difflab.objectives import build_objective, build_time_distribution, build_weighting
from difflab.objectives.weighting import Weighting, elbo_weighting
from difflab.parameterization import (
    PRECONDITIONINGS,
    TIME_INPUTS,
    Target,
    TargetDenoiser,
    from_hub,
    logsnr_time,
)
from difflab.processes import PROCESSES, ShiftedTrigVP, TrigVP, build_process, ddpm_chain
from difflab.registry import UnknownNameError

F64 = torch.float64
ALL = {name: build_process(name) for name in PROCESSES}
ALL["ddpm-cosine-50"] = ddpm_chain(50, "cosine")
ALL["trig_vp-256"] = build_process("trig_vp", resolution=256)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class FNet(nn.Module):
    """A smooth stand-in for EDM's F(c_in x; c_noise)."""

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return (
            torch.tanh(x_in @ torch.tensor([[0.8, -0.3], [0.5, 1.1]], dtype=F64))
            + 0.3 * c_noise[:, None] * x_in
        )


def _x0_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A plain denoiser D(x_t, t) -> x0_hat (not the Bayes one: the identities hold for any prediction)."""
    return 0.7 * torch.tanh(x_t) - 0.4 * t[:, None] * x_t + 0.3 * torch.sin(2 * x_t)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs() / b.abs()).max().item()


# --- EDM ------------------------------------------------------------------------------------------------


def _edm_way(y, n, sigma, sigma_data, f_net, lam_fn=None):
    """EDM's loss by hand (Karras et al. 2022 eq. 2, 7, 8, Table 1): lambda(sigma) |D(y + sigma n) - y|^2."""
    s, sd = sigma[:, None], sigma_data
    x = y + s * n
    c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
    c_in, c_noise = 1 / (s**2 + sd**2).sqrt(), 0.25 * torch.log(sigma)
    D = c_skip * x + c_out * f_net(c_in * x, c_noise)
    lam = (sigma**2 + sd**2) / (sigma * sd) ** 2 if lam_fn is None else lam_fn(sigma, sd)
    return lam * ((D - y) ** 2).mean(1)


def _edm_draws(p, n=256, P_mean=-1.2, P_std=1.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, 2, dtype=F64, generator=g) * 0.5
    noise = torch.randn(n, 2, dtype=F64, generator=g)
    sigma = torch.exp(P_mean + P_std * torch.randn(n, dtype=F64, generator=g))  # EDM's sampling of sigma
    c0, c1 = p.coefficients(p.t_min), p.coefficients(p.t_max)
    keep = (sigma > c0.sigma / c0.alpha) & (sigma < c1.sigma / c1.alpha)
    return y[keep], noise[keep], sigma[keep]


EDM_PROCESSES = ["trig_vp", "linear_vp", "ve", "linear_interpolant", "ddpm-cosine-50", "trig_vp-256"]


@pytest.mark.parametrize("pname", EDM_PROCESSES)
def test_edm_loss_equals_difflab_objective(pname: str) -> None:
    """Per example: difflab loss = Z x EDM loss to rel 1e-12 (measured <= 7e-14); Z = the lognormal's mass
    inside [t_min, t_max]. The wrong-sigma_data variants below miss by 0.5 and 1.0."""
    p, sd = ALL[pname], 0.5
    y, noise, sigma = _edm_draws(p)
    t = p.t_of_logsnr(-2.0 * torch.log(sigma))
    obj = build_objective(p, "x0", "edm", "edm_lognormal", sigma_data=sd)
    den = TargetDenoiser(FNet(), p, "x0", preconditioning="edm", data_std=sd)
    out = obj(den, y, t=t, eps=noise)
    edm = _edm_way(y, noise, sigma, sd, FNet())
    Z = obj.time_dist.mass
    assert 0.8 < Z <= 1.0
    assert _rel(out.loss, Z * edm) < 1e-12
    # the same objective trained on another target (through the hub) gives the same numbers
    for target in ("eps", "v", "flow"):
        other = build_objective(p, target, "edm", "edm_lognormal", sigma_data=sd)(den, y, t=t, eps=noise)
        assert _rel(other.loss, out.loss) < 1e-10, target


def test_of_the_test_edm_sigma_data_not_squared_fails() -> None:
    """lambda(sigma) with sigma_data in place of sigma_data^2 (either place) misses the identity by > 10%."""
    p, sd = ALL["trig_vp"], 0.5
    y, noise, sigma = _edm_draws(p)
    t = p.t_of_logsnr(-2.0 * torch.log(sigma))
    den = TargetDenoiser(FNet(), p, "x0", preconditioning="edm", data_std=sd)
    out = build_objective(p, "x0", "edm", "edm_lognormal", sigma_data=sd)(den, y, t=t, eps=noise)
    for wrong in (lambda s, d: (s**2 + d) / (s * d) ** 2, lambda s, d: (s**2 + d**2) / (s**2 * d)):
        bad = _edm_way(y, noise, sigma, sd, FNet(), lam_fn=wrong)
        assert _rel(out.loss, bad) > 0.1


def test_edm_preconditioning_sigma_data_one_is_minus_v() -> None:
    """With sigma_data = 1 on a VP process EDM's target F* = (x0 - c_skip x~)/c_out is
    -v = sigma x0 - alpha eps
    (anchors sec. 4.4)."""
    p = ALL["trig_vp"]
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(64, 2, dtype=F64, generator=g), torch.randn(64, 2, dtype=F64, generator=g)
    t = torch.linspace(0.05, 0.95, 64, dtype=F64)
    c = p.coefficients(t)
    a, s = c.alpha[:, None], c.sigma[:, None]
    s_ve, x_ve = s / a, x0 + (s / a) * eps
    c_skip, c_out = 1 / (s_ve**2 + 1), s_ve / (s_ve**2 + 1).sqrt()
    F = (x0 - c_skip * x_ve) / c_out
    torch.testing.assert_close(F, -from_hub(Target.V, x0, eps, c.alpha, c.sigma), rtol=1e-12, atol=1e-12)


def test_preconditioning_errors() -> None:
    p = ALL["trig_vp"]
    with pytest.raises(ValueError, match="x0"):
        TargetDenoiser(FNet(), p, "eps", preconditioning="edm")
    with pytest.raises(UnknownNameError) as err:
        TargetDenoiser(FNet(), p, "x0", preconditioning="karras")
    for name in PRECONDITIONINGS:
        assert name in str(err.value)


@pytest.mark.parametrize("pname", ["ou", "trig_vp", "ddpm-cosine-50"])
def test_scale_by_sigma_score_is_minus_F_over_sigma(pname: str) -> None:
    """s = -F / sigma_t (score-SDE's get_score_fn): the wrapped score, its eps_hat = F, and the
    inverse-variance score loss sigma^2 |s - s*|^2 = |F - eps|^2 (the eps loss of F), to float64 rounding."""
    p = ALL[pname]
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(64, 2, dtype=F64, generator=g), torch.randn(64, 2, dtype=F64, generator=g)
    t = p.t_min + (p.t_max - p.t_min) * torch.rand(64, dtype=F64, generator=g)
    c = p.coefficients(t)
    x_t = c.alpha[:, None] * x0 + c.sigma[:, None] * eps
    den = TargetDenoiser(FNet(), p, "score", preconditioning="scale_by_sigma")
    F = FNet()(x_t, t)
    torch.testing.assert_close(den.raw(x_t, t), -F / c.sigma[:, None], rtol=1e-13, atol=0)
    torch.testing.assert_close(den.predict(x_t, t)[1], F, rtol=1e-12, atol=1e-12)
    loss = build_objective(p, "score", "inverse_variance", "uniform")(den, x0, t=t, eps=eps).loss
    plain = build_objective(p, "eps", "eps_simple", "uniform")
    ref = plain(TargetDenoiser(FNet(), p, "eps"), x0, t=t, eps=eps).loss
    assert _rel(loss, ref) < 1e-10


def test_of_the_test_scale_by_sigma_wrong_scale_fails() -> None:
    """Scaling by 1/sigma^2 or 1/alpha (plausible slips) instead of 1/sigma misses the identity by > 10%."""
    p = ALL["ou"]
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(64, 2, dtype=F64, generator=g)
    t = torch.linspace(0.05, 0.95, 64, dtype=F64)
    c = p.coefficients(t)
    s = TargetDenoiser(FNet(), p, "score", preconditioning="scale_by_sigma").raw(x_t, t)
    F = FNet()(x_t, t)
    for wrong in (-F / c.sigma[:, None] ** 2, -F / c.alpha[:, None]):
        assert _rel(wrong, s) > 0.1


def test_scale_by_sigma_needs_the_score_target() -> None:
    with pytest.raises(ValueError, match="score"):
        TargetDenoiser(FNet(), ALL["ou"], "eps", preconditioning="scale_by_sigma")


# --- the network's time input ------------------------------------------------------------------------------


class TimeRecorder(nn.Module):
    """F(x, t) = FNet(x, t), remembering the time it was given."""

    def forward(self, x_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        self.seen = t_in
        return FNet()(x_in, t_in)


@pytest.mark.parametrize("pname", list(ALL))
def test_logsnr_time_input_is_the_rescaled_logsnr(pname: str) -> None:
    """time_input "logsnr": the network sees u = (lambda(t_min) - lambda_t) / (lambda(t_min) - lambda(t_max)),
    0 at t_min, 1 at t_max, increasing; only the input changes (raw = F(x_t, u) for the plain target)."""
    p = ALL[pname]
    t = torch.linspace(p.t_min, p.t_max, 65, dtype=F64)
    lam = p.coefficients(t).logsnr
    u_ref = (lam[0] - lam) / (lam[0] - lam[-1])
    u = logsnr_time(p, t)
    torch.testing.assert_close(u, u_ref, rtol=0, atol=1e-12)
    assert abs(float(u[0])) < 1e-12 and abs(float(u[-1]) - 1.0) < 1e-12
    assert bool((u.diff() > 0).all())
    x_t = torch.randn(65, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    net = TimeRecorder()
    den = TargetDenoiser(net, p, "eps", time_input="logsnr")
    torch.testing.assert_close(den.raw(x_t, t), FNet()(x_t, u_ref), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(net.seen, u_ref, rtol=0, atol=1e-12)
    TargetDenoiser(net, p, "eps").raw(x_t, t)
    torch.testing.assert_close(net.seen, t, rtol=0, atol=0)  # the default still feeds t


@pytest.mark.parametrize("pname", ["ou", "ddpm-cosine-50", "trig_vp"])
def test_raw_with_the_callers_coefficients_is_bit_identical(pname: str) -> None:
    """The training loss passes its coefficients into ``raw`` (one evaluation per step): same bits as ``raw``
    computing them itself, for every input option that reads them."""
    p = ALL[pname]
    g = torch.Generator().manual_seed(2)
    x_t = torch.randn(32, 2, dtype=F64, generator=g)
    t = p.t_min + (p.t_max - p.t_min) * torch.rand(32, dtype=F64, generator=g)
    c = p.coefficients(t)
    for kwargs in ({"time_input": "logsnr"}, {"input_scaling": True}, {"preconditioning": "scale_by_sigma"}):
        target = "score" if "preconditioning" in kwargs else "eps"
        den = TargetDenoiser(FNet(), p, target, **kwargs)
        assert torch.equal(den.raw(x_t, t, c), den.raw(x_t, t))
    den = TargetDenoiser(FNet(), p, "x0", preconditioning="edm")
    assert torch.equal(den.raw(x_t, t, c), den.raw(x_t, t))


def test_of_the_test_logsnr_time_is_not_t() -> None:
    """On OU with logsnr_max 7.85 the resolved range lambda in [2, 7.85] is t < 0.025 but u in [0, 0.33]: an
    implementation that fed t (or lambda itself, or u reversed) would miss the identity by far."""
    p = build_process("ou", logsnr_max=7.85)
    t = p.t_of_logsnr(torch.tensor([7.85, 2.0], dtype=F64))
    assert float(t[1]) < 0.025
    u = logsnr_time(p, t)
    lam = p.logsnr(t)
    assert abs(float(u[1]) - (7.85 - 2.0) / (7.85 - float(p.logsnr(p.t_max)))) < 1e-9
    for wrong in (t, lam, 1.0 - u):
        assert float((wrong - u).abs().max()) > 0.3


def test_time_input_errors() -> None:
    p = ALL["trig_vp"]
    with pytest.raises(UnknownNameError) as err:
        TargetDenoiser(FNet(), p, "eps", time_input="sigma")
    for name in TIME_INPUTS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="c_noise"):
        TargetDenoiser(FNet(), p, "x0", preconditioning="edm", time_input="logsnr")


# --- flow matching ------------------------------------------------------------------------------------------


def _draws(p, n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 3, dtype=F64, generator=g)
    eps = torch.randn(n, 3, dtype=F64, generator=g)
    t = p.t_min + (p.t_max - p.t_min) * torch.rand(n, dtype=F64, generator=g)
    return x0, eps, t


@pytest.mark.parametrize("pname", list(ALL))
def test_flow_matching_loss_is_weighted_eps_loss(pname: str) -> None:
    """|u_hat - u|^2 = (sigma' - alpha' sigma / alpha)^2 |eps_hat - eps|^2 = (sigma lambda'/2)^2 |...|^2, i.e.
    the ELBO weighting w(lambda_t) = -1/2 sigma_t^2 lambda'_t; the ``flow_matching`` weighting on any
    target is the flow loss."""
    p = ALL[pname]
    x0, eps, t = _draws(p)
    flow = build_objective(p, "flow", "weighted", "uniform")(_x0_fn, x0, t=t, eps=eps)
    eps_loss = build_objective(p, "eps", "weighted", "uniform")(_x0_fn, x0, t=t, eps=eps)
    c = p.coefficients(t)
    m = (c.d_sigma - c.d_alpha * c.sigma / c.alpha) ** 2
    assert _rel(flow.loss, m * eps_loss.loss) < 1e-12  # measured <= 4e-14
    for target in ("x0", "eps", "v", "score"):
        other = build_objective(p, target, "flow_matching", "uniform")(_x0_fn, x0, t=t, eps=eps)
        assert _rel(other.loss, flow.loss) < 1e-10, target


def test_flow_matching_on_the_linear_interpolant() -> None:
    """u = eps - x0; flow matching with t ~ U is the ELBO integrand weighted by e^{-lambda/2} (Kingma & Gao
    2023 App. D) -- and a wrong exponent (e^{-lambda}) misses by far (test of the test)."""
    p = ALL["linear_interpolant"]
    x0, eps, t = _draws(p)
    c = p.coefficients(t)
    u = from_hub(Target.FLOW, x0, eps, c.alpha, c.sigma, d_alpha=c.d_alpha, d_sigma=c.d_sigma)
    torch.testing.assert_close(u, eps - x0, rtol=0, atol=4e-15)  # d_alpha = alpha (-1/(1-t)): ulps
    flow = build_objective(p, "flow", "weighted", "uniform")(_x0_fn, x0, t=t, eps=eps)
    right = elbo_weighting("exp(-lambda/2)", lambda lam: torch.exp(-0.5 * lam))
    elbo = build_objective(p, "eps", right, "uniform")(_x0_fn, x0, t=t, eps=eps)
    assert _rel(elbo.loss, flow.loss) < 1e-10
    wrong = elbo_weighting("exp(-lambda)", lambda lam: torch.exp(-lam))
    bad = build_objective(p, "eps", wrong, "uniform")(_x0_fn, x0, t=t, eps=eps)
    assert _rel(bad.loss, flow.loss) > 0.5


# --- ELBO weightings, P2 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pname", [n for n in ALL if n != "ddpm"])
@pytest.mark.parametrize(
    ("weighting", "opts", "w"),
    [
        ("sigmoid", {}, lambda lam: torch.sigmoid(-2.0 - lam)),
        ("sigmoid", {"b": 1.5}, lambda lam: torch.sigmoid(1.5 - lam)),
        (
            "edm",
            {"sigma_data": 0.5},
            lambda lam: (
                2
                * torch.exp(-0.5 * ((lam - 2.4) / 2.4) ** 2)
                / (2.4 * math.sqrt(2 * math.pi))
                * (torch.exp(-lam) + 0.25)
                / 0.25
            ),
        ),
    ],
)
def test_elbo_weightings_schedule_invariant(pname: str, weighting: str, opts: dict, w) -> None:
    """Under lambda ~ U[lambda_min, lambda_max]: w_eps(t) / p(t) = (lambda_max - lambda_min)/2 w(lambda_t),
    whatever the schedule (Kingma & Gao 2023, eq. 5 and sec. 3)."""
    p = ALL[pname]
    obj = build_objective(p, "eps", weighting, "logsnr_uniform", **opts)
    t = torch.linspace(p.t_min, p.t_max, 301, dtype=F64)[1:-1]
    if pname.startswith("ddpm"):
        t = t[((t * p.T) - torch.round(t * p.T)).abs() > 1e-3]  # lambda' jumps at the knots
    lhs = obj.weight(t) * obj.time_dist.importance(t)
    d_lam = obj.time_dist.logsnr_max - obj.time_dist.logsnr_min
    assert _rel(lhs, 0.5 * d_lam * w(p.logsnr(t))) < 1e-10


def test_p2_weighting() -> None:
    """P2: eps weight (k + SNR)^-gamma (Choi et al. 2022, eq. 8); gamma = 0 is L_simple."""
    p = ALL["linear_vp"]
    t = torch.linspace(p.t_min, p.t_max, 101, dtype=F64)
    c = p.coefficients(t)
    torch.testing.assert_close(build_weighting("p2").weight("eps", c, p), 1 / (1 + c.snr), rtol=1e-14, atol=0)
    w = build_weighting("p2", k=2.0, gamma=0.5).weight("x0", c, p)
    torch.testing.assert_close(w, (2 + c.snr) ** -0.5 * c.snr, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        build_weighting("p2", gamma=0.0).weight("v", c, p),
        build_weighting("eps_simple").weight("v", c, p),
        rtol=1e-14,
        atol=0,
    )
    with pytest.raises(ValueError):
        build_weighting("p2", k=0.0)


def test_options_route_to_every_component() -> None:
    p = ALL["trig_vp"]
    obj = build_objective(p, "eps", "edm", "edm_lognormal", P_mean=-0.5, P_std=0.8)
    assert "P_mean=-0.5" in obj.weighting.name and obj.time_dist.mean == pytest.approx(1.0)
    assert obj.time_dist.std == pytest.approx(1.6)
    with pytest.raises(UnknownNameError, match="b"):
        build_objective(p, "eps", "sigmoid", bb=1.0)


# --- time distributions -------------------------------------------------------------------------------------


def test_logit_normal_time() -> None:
    """SD3's logit-normal (m = 0, s = 1): logit(t) ~ N(0, 1) in law; 1/p(t) = t(1-t) Z / N(logit t); the
    importance-weighted mean of 1 is t_max - t_min."""
    p = ALL["linear_interpolant"]
    td = build_time_distribution("logit_normal", p)
    t, iw = td.sample(200_000, torch.Generator().manual_seed(0))
    z = torch.logit(t)
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01  # MC std 0.002
    assert abs(iw.mean().item() / (p.t_max - p.t_min) - 1) < 0.02
    tt = torch.tensor([0.1, 0.5, 0.8], dtype=F64)
    dens = torch.exp(-0.5 * torch.logit(tt) ** 2) / math.sqrt(2 * math.pi) / (tt * (1 - tt))
    torch.testing.assert_close(td.importance(tt), td.mass / dens, rtol=1e-13, atol=0)
    td2 = build_time_distribution("logit_normal", p, m=0.5, s=0.5)
    t2, _ = td2.sample(100_000, torch.Generator().manual_seed(1))
    assert abs(torch.logit(t2).mean().item() - 0.5) < 0.01


@pytest.mark.parametrize("pname", ["trig_vp", "linear_interpolant", "ve"])
def test_edm_lognormal_time(pname: str) -> None:
    """ln sigma~ ~ N(-1.2, 1.2^2) (truncated to the process range; Z = its mass)."""
    p = ALL[pname]
    td = build_time_distribution("edm_lognormal", p)
    t, iw = td.sample(200_000, torch.Generator().manual_seed(0))
    c = p.coefficients(t)
    log_sigma = torch.log(c.sigma / c.alpha)
    if td.mass > 1 - 1e-9:
        assert abs(log_sigma.mean().item() + 1.2) < 0.015 and abs(log_sigma.std().item() - 1.2) < 0.015
    assert abs(iw.mean().item() / (p.t_max - p.t_min) - 1) < 0.05


# --- shifted cosine -----------------------------------------------------------------------------------------


def test_shifted_cosine() -> None:
    """lambda_shifted(t) = lambda_cos(t) + 2 log(64 / d) (Hoogeboom et al. 2023 eq. 4); d = 64: cosine."""
    t = torch.linspace(1e-3, 1 - 1e-3, 999, dtype=F64)
    base = TrigVP()
    for d in (32, 128, 512):
        p = build_process("trig_vp", resolution=d)
        assert isinstance(p, ShiftedTrigVP)
        torch.testing.assert_close(
            p.logsnr(t) - base.logsnr(t), torch.full_like(t, 2 * math.log(64 / d)), rtol=0, atol=1e-12
        )
        c = p.coefficients(t)
        torch.testing.assert_close(
            c.alpha**2, torch.sigmoid(base.logsnr(t) + 2 * math.log(64 / d)), rtol=1e-12, atol=0
        )
    same, ref = build_process("trig_vp", resolution=64).coefficients(t), base.coefficients(t)
    for f in ("alpha", "sigma", "d_alpha", "d_sigma", "logsnr", "d_logsnr"):
        torch.testing.assert_close(getattr(same, f), getattr(ref, f), rtol=1e-10, atol=1e-12)
    assert type(build_process("trig_vp")) is TrigVP  # the default is untouched
    with pytest.raises(ValueError):
        build_process("trig_vp", base_resolution=32)


def test_new_names_listed_when_unknown() -> None:
    p = ALL["trig_vp"]
    with pytest.raises(UnknownNameError) as err:
        build_objective(p, "eps", "karras")
    for name in ("sigmoid", "edm", "p2", "flow_matching"):
        assert name in str(err.value)
    with pytest.raises(UnknownNameError) as err:
        build_objective(p, "eps", "nelbo", "lognormal")
    for name in ("logit_normal", "edm_lognormal"):
        assert name in str(err.value)
    with pytest.raises(UnknownNameError, match="linear_interpolant"):
        build_process("rectified")
    with pytest.raises(UnknownNameError, match="flow"):
        build_objective(p, "velocity")
    assert isinstance(build_weighting("flow_matching"), Weighting)
