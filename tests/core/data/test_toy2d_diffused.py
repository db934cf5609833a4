"""The ring and waves quadratures (``Toy2D.diffused``): moments, node convergence, a brute-force convolution
of the exact clean density, and the log-SNR bound of the oracle."""

from __future__ import annotations

import math

import pytest
import torch

from difflab.data import toy2d
from difflab.data.gaussian import GaussianMixture
from difflab.data.toy2d import DIFFUSED_MAX_LOGSNR, TOY2D, make_toy2d, oracle_sets, standardisation

F64 = torch.float64


def _alpha_sigma(logsnr: float) -> tuple[float, float]:
    sigma = 1.0 / math.sqrt(1.0 + math.exp(logsnr))
    return math.sqrt(1.0 - sigma**2), sigma


@pytest.mark.parametrize("name", ["ring", "waves"])
def test_quadrature_has_the_closed_form_moments(name):
    """The scaled quadrature has mean 0 and unit variances, as the closed-form z-scoring says; a radial std
    used as a variance (0.2 for 0.04) moves ring's variances by 1 %."""
    law = make_toy2d(name, 0, 0).diffused
    assert law.max_logsnr == pytest.approx(DIFFUSED_MAX_LOGSNR, abs=1e-12)
    assert law.mean().abs().max() < 1e-12
    assert (law.covariance().diagonal() - 1.0).abs().max() < 1e-9
    if name == "ring":
        _, scale = standardisation("ring")
        right = toy2d._ring_mixture(256, 20.0)
        wrong = GaussianMixture(right.weights, right.means, right.covs * (0.2 / 0.04), max_logsnr=20.0)
        assert (wrong.covariance().diagonal() / scale**2 - 1.0).abs().max() > 5e-3


@pytest.mark.parametrize("name", ["ring", "waves"])
def test_quadrature_converges_in_its_nodes_at_the_bound(name):
    """At the largest allowed log-SNR, log p_t and the score of the shipped node count equal those of 2 x
    the nodes on 500 diffused points; a quarter of the nodes is visibly off (so the test can fail)."""
    shift, scale = standardisation(name)
    raw_bound = toy2d._raw_max_logsnr(name)
    if name == "ring":
        make = lambda k: toy2d._ring_mixture(toy2d.RING_NODES * k // 4, raw_bound)  # noqa: E731
    else:
        make = lambda k: toy2d._waves_mixture(toy2d.WAVES_PANELS * k // 4, toy2d.WAVES_NODES, raw_bound)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    x0 = (TOY2D[name].sample(500, g) - shift) / scale
    a, s = _alpha_sigma(DIFFUSED_MAX_LOGSNR)
    x_t = a * x0 + s * torch.randn(x0.shape, dtype=F64, generator=g)
    ref, shipped, coarse = (make(k).affine(shift, scale) for k in (8, 4, 1))
    lp_ref = ref.log_prob_at(x_t, a, s)
    assert (shipped.log_prob_at(x_t, a, s) - lp_ref).abs().max() < 1e-8
    assert (shipped.score_at(x_t, a, s) - ref.score_at(x_t, a, s)).norm(dim=1).max() < 1e-6 * float(
        ref.score_at(x_t, a, s).norm(dim=1).max()
    )
    assert (coarse.log_prob_at(x_t, a, s) - lp_ref).abs().max() > 1e-5
    with pytest.raises(ValueError, match="quadrature"):
        shipped.log_prob_at(x_t, 1.0, 0.0)


@pytest.mark.parametrize("name", ["ring", "waves"])
def test_quadrature_equals_a_brute_force_convolution(name):
    """p_t(y) = int p_0(x) N(y; alpha x, sigma^2 I) dx by a fine 2D midpoint grid over the exact clean density
    (``Toy2D.density``, independent of the quadrature), at log-SNR 6 on 20 diffused points."""
    d = make_toy2d(name, 0, 0)
    a, s = _alpha_sigma(6.0)
    shift, scale = standardisation(name)
    # the raw support box, mapped to scaled units; the midpoint grid is aligned with waves' hard edges
    lo_raw, hi_raw = ((-4.9, -4.9), (9.9, 4.9)) if name == "ring" else ((0.0, -0.3), (1.0, 1.2))
    lo = (torch.tensor(lo_raw, dtype=F64) - shift) / scale
    hi = (torch.tensor(hi_raw, dtype=F64) - shift) / scale
    n = (1600, 1200) if name == "ring" else (1000, 1500)
    axes = [lo[i] + (hi[i] - lo[i]) * (torch.arange(n[i], dtype=F64) + 0.5) / n[i] for i in range(2)]
    grid = torch.cartesian_prod(*axes)
    cell = float((hi - lo).prod()) / (n[0] * n[1])
    log_w = d.density.log_prob(grid) + math.log(cell)
    keep = log_w > log_w.max() - 40.0
    grid, log_w = grid[keep], log_w[keep]
    g = torch.Generator().manual_seed(1)
    y = a * d.density.sample(20, g) + s * torch.randn(20, 2, dtype=F64, generator=g)
    sq = torch.cdist(y, a * grid).square()
    brute = torch.logsumexp(log_w[None] - 0.5 * sq / s**2, dim=1) - math.log(2 * math.pi * s**2)
    quad = d.diffused.log_prob_at(y, a, s)
    err = float((quad - brute).abs().max())
    assert err < 1e-4, err
    # a law whose noise is doubled in variance along the curve is far off
    q = d.diffused
    wrong = GaussianMixture(q.weights, q.means, 2.0 * q.covs, max_logsnr=q.max_logsnr)
    assert float((wrong.log_prob_at(y, a, s) - brute).abs().max()) > 1e-2


def test_oracle_sets_and_the_logsnr_bound():
    from difflab.experiments.toy2d.build import check_names
    from difflab.experiments.toy2d.config import ConfigError
    from difflab.experiments.toy2d.run import validate_config

    assert oracle_sets() == sorted(TOY2D)
    base = {
        "data": {"name": "ring"},
        "model": {"name": "oracle"},
        "process": {"name": "trig_vp", "options": {"logsnr_min": -9.0, "logsnr_max": 10.0}},
    }
    check_names(validate_config(base))
    too_far = {**base, "process": {"name": "trig_vp", "options": {"logsnr_min": -9.0, "logsnr_max": 12.0}}}
    with pytest.raises(ConfigError, match=r"log-SNR 10\.5"):
        check_names(validate_config(too_far))
    mixture = {**too_far, "data": {"name": "mixture8"}}
    check_names(validate_config(mixture))  # an exact mixture has no bound
