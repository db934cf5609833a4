"""Docstring claims checked against closed forms (issue 9, item 11): Weighting.eps_weight, the PC
corrector's alpha_i = 1 - beta_i on a chain's full grid, and the learned-variance DDPM's lambda T scaling."""

from __future__ import annotations

import math

import pytest
import torch

import difflab.samplers.sde as sde
from difflab.baselines.learned_variance import LearnedVarianceDDPM
from difflab.data.gaussian import GaussianMixture
from difflab.objectives.weighting import build_weighting
from difflab.processes import VE, TrigVP, ddpm_chain
from difflab.samplers import prior_sample
from difflab.samplers.sde import sample_pc

F64 = torch.float64
TARGETS = ("x0", "eps", "v", "score")


def _m(target: str, c) -> torch.Tensor:
    """|d target|^2 / |d eps|^2 by hand from alpha x0 + sigma eps = x_t (d x0 = -(sigma/alpha) d eps)."""
    a, s = c.alpha, c.sigma
    return {"x0": s**2 / a**2, "eps": torch.ones_like(a), "v": ((a**2 + s**2) / a) ** 2, "score": 1 / s**2}[
        target
    ]


@pytest.mark.parametrize("process", [TrigVP(), VE()], ids=repr)
def test_eps_weight_closed_forms(process) -> None:
    c = process.coefficients(torch.linspace(0.05, 0.95, 19, dtype=F64))
    nelbo, weighted = build_weighting("nelbo"), build_weighting("weighted")
    gamma = 5.0
    msnr = build_weighting("min_snr", gamma=gamma)
    snr = torch.exp(c.logsnr)
    for target in TARGETS:
        # NELBO: the same eps-space weight -1/2 lambda' whatever the target
        torch.testing.assert_close(
            nelbo.eps_weight(c, process, target), -0.5 * c.d_logsnr, rtol=1e-12, atol=0
        )
        # "weighted": unit weight in the target's own space, so w_eps = m_target
        torch.testing.assert_close(weighted.eps_weight(c, process, target), _m(target, c), rtol=1e-12, atol=0)
    # min-SNR-gamma (Hang et al. 2023): min(SNR, gamma) on x0, i.e. min(SNR, gamma) / SNR in eps space
    torch.testing.assert_close(msnr.eps_weight(c, process, "x0"), torch.clamp(snr, max=gamma) / snr)


def test_pc_alpha_i_is_one_minus_beta_on_the_chain_grid(monkeypatch) -> None:
    chain = ddpm_chain(20, "linear")
    seen: list[float] = []
    step = sde.langevin_step

    def spy(*args, alpha_i, **kw):
        seen.append(float(alpha_i))
        return step(*args, alpha_i=alpha_i, **kw)

    monkeypatch.setattr(sde, "langevin_step", spy)
    gm = GaussianMixture.gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    x_T = prior_sample(chain, (8, 2), torch.Generator().manual_seed(0))
    sample_pc(
        gm.denoiser(chain), chain, x_T, chain.grid.flip(0)[:-1], generator=torch.Generator().manual_seed(1)
    )
    # steps t_i -> t_{i-1} for i = T..2 (the grid ends at t_1 = t_min): alpha_i = abar_i / abar_{i-1}
    torch.testing.assert_close(torch.tensor(seen, dtype=F64), 1 - chain.betas[1:].flip(0), rtol=1e-12, atol=0)


def test_learned_variance_vlb_scaling_against_closed_form(monkeypatch) -> None:
    """x0 ~ N(mu, s^2 I) with the exact eps and v = -1 (Sigma = beta_tilde, the true posterior variance):
    E[L_{i-1}] = 1/2 (SNR_{i-1} - SNR_i) mmse_i for i >= 2 and D/2 log(2 pi beta_tilde_2) + mmse_1 /
    (2 beta_tilde_2) for the decoder, mmse_i = D s^2 (1 - abar_i) / (abar_i s^2 + 1 - abar_i). So
    E_i[l_vlb] = sum_i E[L_{i-1}] / (D ln 2) (the T-scaled single-step estimate in bits/dim), and the hybrid
    adds lambda l_vlb = (T / 1000) L_{i-1} / (D ln 2): improved-diffusion's rescaled term."""
    T, D, s = 100, 2, 0.7
    chain = ddpm_chain(T, "linear")
    model = LearnedVarianceDDPM(chain, dim=D, hidden=8, layers=1).double()
    mu = torch.tensor([0.5, -0.3], dtype=F64)
    abar = chain.alpha_bar

    def exact(x_i, i):
        ab = abar[i][:, None]
        x0_hat = mu + ab.sqrt() * s**2 / (ab * s**2 + 1 - ab) * (x_i - ab.sqrt() * mu)
        return (x_i - ab.sqrt() * x0_hat) / (1 - ab).sqrt(), torch.full_like(x_i, -1.0)

    monkeypatch.setattr(model, "forward", exact)
    n = 200_000
    g = torch.Generator().manual_seed(0)
    x0 = mu + s * torch.randn(n, D, dtype=F64, generator=g)
    out = model.hybrid_loss(x0, g)
    ab = abar[1:]
    mmse = D * s**2 * (1 - ab) / (ab * s**2 + 1 - ab)
    snr = ab / (1 - ab)
    bt = chain.posterior_variance()
    steps = (0.5 * (snr[:-1] - snr[1:]) * mmse[1:]).sum()
    decoder = 0.5 * D * math.log(2 * math.pi * float(bt[1])) + float(mmse[0]) / (2 * float(bt[1]))
    expected = (float(steps) + decoder) / (D * math.log(2.0))
    se = float(out.l_vlb.std()) / math.sqrt(n)
    assert abs(float(out.l_vlb.mean()) - expected) < 4 * se, (float(out.l_vlb.mean()), expected, se)
    assert 4 * se < 0.2 * abs(expected)  # precise enough that a missing T, ln 2 (x0.69) or 1/D would fail
    torch.testing.assert_close(out.loss - out.l_simple, (T / 1000) * (out.l_vlb / T))


def test_cosine_clip_conventions() -> None:
    """Seed 001 clips the cosine betas to [1e-4, 0.9999] (the default, unchanged); Nichol & Dhariwal cap at
    0.999 with no floor (beta_clip="nichol_dhariwal")."""
    import difflab.processes.discrete as discrete

    T, s = 1000, 0.008
    i = torch.arange(T + 1, dtype=F64)
    f = torch.cos(((i / T + s) / (1 + s)) * math.pi / 2) ** 2
    raw = 1 - f[1:] / f[:-1]
    torch.testing.assert_close(discrete.cosine_betas(T), raw.clamp(1e-4, 0.9999), rtol=1e-10, atol=1e-15)
    nd = discrete.cosine_betas(T, beta_clip="nichol_dhariwal")
    torch.testing.assert_close(nd, torch.clamp(raw, max=0.999), rtol=1e-10, atol=1e-15)
    assert float(nd[0]) == pytest.approx(4.1e-5, rel=0.02) and float(nd[-1]) == 0.999
    chain = ddpm_chain(T, "cosine", beta_clip="nichol_dhariwal")
    torch.testing.assert_close(chain.betas, nd)
