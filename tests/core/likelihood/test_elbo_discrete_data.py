"""Discrete-ELBO bits/dim of discrete data with the exact denoiser, for every process (issue 9, item 1).

Data: 1-D uniform on the 256 levels of [-1, 1] (entropy exactly 8 bits/dim). The exact Bayes denoiser of
discrete data is E[x0 | x_t] = sum_k softmax_k(-(x_t - alpha l_k)^2 / 2 sigma^2) l_k (the zero-width limit
of a mixture of near-deltas; a finite width w adds ~1/2 nat per unit log-SNR wherever sigma/alpha < w).
With the ``discretized`` decoder the NELBO is a discrete NLL, so a perfect model must score ~8 bits/dim.
"""

from __future__ import annotations

import math

import pytest
import torch

from difflab.data.gaussian import GaussianMixture
from difflab.likelihood.discrete_elbo import _levels, discrete_nelbo
from difflab.processes import build_process

LEVELS = torch.linspace(-1.0, 1.0, 256, dtype=torch.float64)
ENTROPY_BITS = 8.0
B = 200


def delta_denoiser(process):
    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = process.coefficients(t.to(torch.float64).cpu())
        a, s = c.alpha[:, None], c.sigma[:, None]
        logits = -0.5 * ((x_t.to(torch.float64) - a * LEVELS[None]) / s) ** 2
        return (torch.softmax(logits, 1) @ LEVELS)[:, None].to(x_t.dtype)

    return denoise


def _x0() -> torch.Tensor:
    return LEVELS[torch.randint(0, 256, (B,), generator=torch.Generator().manual_seed(0))][:, None]


def _bpd(process, T, **kw) -> tuple[float, float]:
    r = discrete_nelbo(
        delta_denoiser(process),
        process,
        _x0(),
        decoder="discretized",
        T=T,
        generator=torch.Generator().manual_seed(1),
        **kw,
    )
    b = r.bits_per_dim()
    return float(b.mean()), float(b.std()) / math.sqrt(B)


def test_delta_denoiser_is_the_near_delta_mixture_limit() -> None:
    p = build_process("trig_vp")
    mix = GaussianMixture.isotropic(torch.ones(256), LEVELS[:, None], 1e-9).denoiser(p)
    x = torch.linspace(-1.1, 1.1, 301, dtype=torch.float64)[:, None]
    for t in (p.t_min, 0.01, 0.3, 0.9):
        tt = torch.full((301,), t, dtype=torch.float64)
        torch.testing.assert_close(delta_denoiser(p)(x, tt), mix(x, tt), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "name, options, T",
    [
        ("trig_vp", {}, 1000),
        ("linear_vp", {}, 1000),
        ("ou", {}, 1000),
        ("sub_vp", {}, 1000),
        ("ve", {}, 1000),
        ("ddpm", {}, 1000),  # the chain's continuous interpolation with T explicit levels
    ],
)
def test_exact_denoiser_scores_the_entropy(name, options, T) -> None:
    # uniform-in-t levels gave (B = 300): trig_vp 31.4 +- 7.4, linear_vp 84.2 +- 5.7, sub_vp 8.50, ou 8.19
    mean, se = _bpd(build_process(name, **options), T)
    assert abs(mean - ENTROPY_BITS) < 0.2, (mean, se)
    assert mean > ENTROPY_BITS - 3 * se - 0.02  # an upper bound on the discrete NLL, up to noise


def test_chain_grid_is_a_valid_bound() -> None:
    """On a chain's own grid (T = None) the levels are the chain's: a looser but valid bound (~8.65 here)."""
    mean, se = _bpd(build_process("ddpm"), None)
    assert ENTROPY_BITS - 3 * se < mean < ENTROPY_BITS + 1.0


def test_levels_are_uniform_in_logsnr_with_exact_endpoints() -> None:
    p = build_process("trig_vp")
    t = _levels(p, 50)
    assert float(t[0]) == p.t_min and float(t[-1]) == p.t_max
    lam = p.logsnr(t)
    d = lam[1:] - lam[:-1]
    torch.testing.assert_close(d, torch.full_like(d, float(d.mean())), rtol=1e-7, atol=0)
    torch.testing.assert_close(_levels(p, 50, "t"), torch.linspace(p.t_min, p.t_max, 50, dtype=torch.float64))
    with pytest.raises(ValueError, match="spacing"):
        _levels(p, 50, "sqrt")
