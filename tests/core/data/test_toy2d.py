"""2D toy data sets: shapes, z-scoring, disjoint deterministic splits, exact scaled densities."""

from __future__ import annotations

import math

import pytest
import torch

from difflab.data.gaussian import GaussianMixture
from difflab.data.toy2d import TOY2D, Toy2D, make_toy2d
from difflab.registry import UnknownNameError

NAMES = ["cluster", "ring", "swiss_roll", "waves", "mixture8", "gaussian"]
LAW_NAMES = ["cluster", "mixture8", "gaussian"]


@pytest.fixture(scope="module")
def sets() -> dict[str, Toy2D]:
    return {name: make_toy2d(name, n_train=40_000, n_test=10_000, seed=3) for name in NAMES}


def test_registry_names_and_unknown() -> None:
    assert set(TOY2D) == set(NAMES)
    with pytest.raises(UnknownNameError, match=r"cluster.*gaussian.*mixture8.*ring.*swiss_roll.*waves"):
        make_toy2d("moons", 10, 10)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtype_zscored(sets: dict[str, Toy2D], name: str) -> None:
    d = sets[name]
    assert d.name == name
    assert d.train.shape == (40_000, 2) and d.test.shape == (10_000, 2)
    assert d.train.dtype == torch.float32 and d.test.dtype == torch.float32
    x = torch.cat([d.train, d.test]).double()
    # n = 50,000: s.e. of the mean is 0.0045, of the std <= ~0.006 (heavier for the bimodal sets)
    assert x.mean(0).abs().max() < 0.025
    assert (x.std(0) - 1).abs().max() < 0.025
    assert (d.law is not None) == (name in LAW_NAMES)
    assert (d.modes is not None) == (name in {"cluster", "mixture8"})


@pytest.mark.parametrize("name", NAMES)
def test_disjoint_and_deterministic(name: str) -> None:
    a = make_toy2d(name, n_train=4000, n_test=1000, seed=11)
    b = make_toy2d(name, n_train=4000, n_test=1000, seed=11)
    c = make_toy2d(name, n_train=4000, n_test=1000, seed=12)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)
    both = torch.cat([a.train, a.test])
    assert torch.unique(both, dim=0).shape[0] == both.shape[0]  # no duplicated rows at all


@pytest.mark.parametrize("name", LAW_NAMES)
def test_scaled_law_moments(sets: dict[str, Toy2D], name: str) -> None:
    law = sets[name].law
    assert law is not None
    torch.testing.assert_close(law.mean(), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(law.covariance().diagonal(), torch.ones(2, dtype=torch.float64))
    if name != "gaussian":
        torch.testing.assert_close(law.covariance(), torch.eye(2, dtype=torch.float64), atol=1e-12, rtol=0)
    else:  # correlation 0.8 / sqrt(2 * 0.5) survives per-dimension scaling
        assert law.covariance()[0, 1].item() == pytest.approx(0.8)


def _grid(lim: float, m: int) -> tuple[torch.Tensor, float]:
    edges = torch.linspace(-lim, lim, m + 1, dtype=torch.float64)
    mid = 0.5 * (edges[1:] + edges[:-1])
    gx, gy = torch.meshgrid(mid, mid, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1), float(edges[1] - edges[0])


@pytest.mark.parametrize("name", LAW_NAMES)
def test_scaled_density_integrates_to_one(sets: dict[str, Toy2D], name: str) -> None:
    law = sets[name].law
    assert law is not None
    pts, h = _grid(6.0, 600)
    assert float(law.log_prob(pts).exp().sum() * h * h) == pytest.approx(1.0, abs=2e-4)


@pytest.mark.parametrize("name", ["cluster", "mixture8"])
def test_scaled_density_matches_histogram(sets: dict[str, Toy2D], name: str) -> None:
    d = sets[name]
    assert d.law is not None
    x = torch.cat([d.train, d.test]).double()
    n, lim, bins, sub = x.shape[0], 2.5, 25, 6
    counts = torch.histogramdd(x, bins=[bins, bins], range=[-lim, lim, -lim, lim]).hist.reshape(-1)
    # exact bin probabilities: midpoint rule on sub x sub cells inside each bin
    pts, h = _grid(lim, bins * sub)
    dens = d.law.log_prob(pts).exp().reshape(bins, sub, bins, sub)
    prob = (dens.sum((1, 3)) * h * h).reshape(-1)
    expected = n * prob
    z = (counts.double() - expected) / (expected + 1.0).sqrt()
    assert z.abs().max() < 5.0
    assert 0.5 * float((counts.double() / n - prob).abs().sum()) < 0.03


def test_seed_definitions_in_raw_units() -> None:
    g = torch.Generator().manual_seed(0)
    raw = {name: make_toy2d(name, 0, 0).sample_fresh(50_000, g) for name in NAMES}
    unscale = {name: make_toy2d(name, 0, 0) for name in NAMES}
    r = {k: v * unscale[k].scale + unscale[k].shift for k, v in raw.items()}
    # ring: left of x = -1 only the ring centred at (0, 0) lives; its radius is N(4, 0.2^2)
    ring = r["ring"]
    rad = ring[ring[:, 0] < -1.0].norm(dim=1)
    assert 0.19 < rad.numel() / ring.shape[0] < 0.23  # (1/2) (1 - acos(1/4) / pi) = 0.21
    assert float(rad.mean()) == pytest.approx(4.0, abs=0.01)
    assert float(rad.std()) == pytest.approx(0.2, abs=0.01)
    # waves: x in [0, 1]; y - 0.3 sin(6 pi x) in {0.3, 0.6} + N(0, 0.03^2)
    w = r["waves"]
    assert float(w[:, 0].min()) >= 0.0 and float(w[:, 0].max()) <= 1.0
    resid = w[:, 1] - 0.3 * torch.sin(6 * math.pi * w[:, 0])
    resid = resid - torch.where(resid > 0.45, 0.6, 0.3)
    assert float(resid.std()) == pytest.approx(0.03, rel=0.03)
    # swiss roll: |x| ~ t in [1.5 pi, 4.5 pi], blurred by N(0, 0.5^2) noise
    t = r["swiss_roll"].norm(dim=1)
    assert float(t.quantile(0.001)) > 1.5 * math.pi - 2.0 and float(t.quantile(0.999)) < 4.5 * math.pi + 2.0
    # mixture8: modes at radius 10, std 1 (a standard deviation)
    m8 = make_toy2d("mixture8", 0, 0)
    assert m8.modes is not None and m8.law is not None
    assert (m8.modes * m8.scale).norm(dim=1).tolist() == pytest.approx([10.0] * 8)
    torch.testing.assert_close(
        m8.law.covs * m8.scale[0] ** 2, torch.eye(2, dtype=torch.float64).expand(8, 2, 2)
    )
    # cluster: 4 modes at (+-5, +-5), std 1, equal weights
    cl = make_toy2d("cluster", 0, 0)
    assert cl.modes is not None and cl.mode_weights is not None
    assert sorted((cl.modes * cl.scale).abs().reshape(-1).tolist()) == pytest.approx([5.0] * 8)
    assert cl.mode_weights.tolist() == pytest.approx([0.25] * 4)


@pytest.mark.parametrize("name", LAW_NAMES)
def test_fresh_samples_follow_the_scaled_law(sets: dict[str, Toy2D], name: str) -> None:
    d = sets[name]
    assert isinstance(d.law, GaussianMixture)
    fresh = d.sample_fresh(20_000, torch.Generator().manual_seed(5))
    assert fresh.dtype == torch.float64 and fresh.shape == (20_000, 2)
    # the mean log-density of fresh and of training points agree (same law), within ~4 s.e.
    lf, lt = d.law.log_prob(fresh), d.law.log_prob(d.train.double())
    se = math.sqrt(lf.var() / lf.numel() + lt.var() / lt.numel())
    assert abs(float(lf.mean() - lt.mean())) < 4 * se
