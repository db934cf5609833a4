"""2D toy data sets: shapes, z-scoring, disjoint deterministic splits, exact scaled densities."""

from __future__ import annotations

import math

import pytest
import torch

from difflab.data.gaussian import GaussianMixture
from difflab.data.toy2d import TOY2D, Toy2D, make_toy2d
from difflab.registry import UnknownNameError

NAMES = ["cluster", "ring", "swiss_roll", "waves", "mixture8", "gaussian"]
LAW_NAMES = ["cluster", "mixture8", "gaussian", "swiss_roll"]  # a Gaussian-mixture law (the oracle)
SQRT3 = math.sqrt(3.0)  # waves' x is uniform on [0, 1]: scaled, on [-sqrt 3, sqrt 3]


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
    assert d.density is not None and (d.law is None or d.density is d.law)
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
    if name in ("cluster", "mixture8"):
        torch.testing.assert_close(law.covariance(), torch.eye(2, dtype=torch.float64), atol=1e-12, rtol=0)
    elif name == "gaussian":  # correlation 0.8 / sqrt(2 * 0.5) survives per-dimension scaling
        assert law.covariance()[0, 1].item() == pytest.approx(0.8)


def _grid(lim: float, m: int, x_lim: float | None = None) -> tuple[torch.Tensor, float]:
    """Cell midpoints of an m x m grid on [-x_lim, x_lim] x [-lim, lim] (x_lim defaults to lim), and the
    cell area."""
    x_lim = lim if x_lim is None else x_lim
    ex = torch.linspace(-x_lim, x_lim, m + 1, dtype=torch.float64)
    ey = torch.linspace(-lim, lim, m + 1, dtype=torch.float64)
    mx, my = 0.5 * (ex[1:] + ex[:-1]), 0.5 * (ey[1:] + ey[:-1])
    gx, gy = torch.meshgrid(mx, my, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1), float((ex[1] - ex[0]) * (ey[1] - ey[0]))


@pytest.mark.parametrize("name", NAMES)
def test_scaled_density_integrates_to_one(sets: dict[str, Toy2D], name: str) -> None:
    density = sets[name].density
    assert density is not None
    # waves: the grid's x range is the support, so the hard edges fall on cell boundaries
    # swiss_roll (4096 components of std 0.075): 300 cells a side, the midpoint rule still exact to ~1e-10
    pts, area = _grid(6.0, 300 if name == "swiss_roll" else 600, SQRT3 if name == "waves" else None)
    assert float(density.log_prob(pts).exp().sum() * area) == pytest.approx(1.0, abs=2e-4)


def _histogram_gap(d: Toy2D, x: torch.Tensor) -> tuple[float, float]:
    """(max |z|, total variation) between the histogram of x and the exact bin probabilities of d's
    density (midpoint rule on 6 x 6 cells inside each of 25 x 25 bins on [-2.5, 2.5]^2; waves: x bins on
    its support)."""
    assert d.density is not None
    lim, bins, sub = 2.5, 25, 6
    x_lim = SQRT3 if d.name == "waves" else lim
    n = x.shape[0]
    counts = torch.histogramdd(x, bins=[bins, bins], range=[-x_lim, x_lim, -lim, lim]).hist.reshape(-1)
    pts, area = _grid(lim, bins * sub, x_lim)
    dens = d.density.log_prob(pts).exp().reshape(bins, sub, bins, sub)
    prob = (dens.sum((1, 3)) * area).reshape(-1)
    expected = n * prob
    z = (counts.double() - expected) / (expected + 1.0).sqrt()
    return float(z.abs().max()), 0.5 * float((counts.double() / n - prob).abs().sum())


@pytest.mark.parametrize("name", ["cluster", "mixture8", "ring", "swiss_roll", "waves"])
def test_scaled_density_matches_histogram(sets: dict[str, Toy2D], name: str) -> None:
    d = sets[name]
    z, tv = _histogram_gap(d, torch.cat([d.train, d.test]).double())
    assert z < 5.0 and tv < 0.03


@pytest.mark.parametrize("name", ["ring", "waves"])
def test_histogram_check_fails_a_doubled_noise(
    sets: dict[str, Toy2D], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above rejects a plausible wrong density: the radial (ring) or vertical (waves) noise with
    twice its standard deviation."""
    from difflab.data import toy2d

    normal = toy2d._normal_log_pdf
    monkeypatch.setattr(toy2d, "_normal_log_pdf", lambda x, mean, std: normal(x, mean, 2.0 * std))
    d = sets[name]
    z, tv = _histogram_gap(d, torch.cat([d.train, d.test]).double())
    assert z > 5.0 and tv > 0.03


def test_swiss_roll_quadrature_is_converged() -> None:
    """The 4096-node quadrature of the swiss roll's continuous mixture agrees with 4 x as many nodes, at
    t = 0 and diffused; 256 panels are visibly coarser (so the comparison can tell)."""
    from difflab.data.toy2d import SWISS_ROLL_NODES, SWISS_ROLL_PANELS, _swiss_roll_mixture

    d = make_toy2d("swiss_roll", 0, 2000, seed=1)
    x = d.test.double() * d.scale + d.shift
    ref = _swiss_roll_mixture(4 * SWISS_ROLL_PANELS, SWISS_ROLL_NODES)
    law = _swiss_roll_mixture(SWISS_ROLL_PANELS, SWISS_ROLL_NODES)
    coarse = _swiss_roll_mixture(SWISS_ROLL_PANELS // 4, SWISS_ROLL_NODES)
    assert float((law.log_prob(x) - ref.log_prob(x)).abs().max()) < 1e-11
    assert float((law.log_prob_at(x, 0.9, 0.3) - ref.log_prob_at(x, 0.9, 0.3)).abs().max()) < 1e-11
    assert float((coarse.log_prob(x) - ref.log_prob(x)).abs().max()) > 1e-9


def test_closed_form_moments_match_a_large_draw() -> None:
    """ring's and waves' closed-form mean and standard deviation (module doc) against 10^6 draws."""
    from difflab.data.toy2d import REFERENCE_SEED, REFERENCE_SIZE, standardisation

    for name in ("ring", "waves", "swiss_roll"):
        shift, scale = standardisation(name)
        ref = TOY2D[name].sample(REFERENCE_SIZE, torch.Generator().manual_seed(REFERENCE_SEED))
        z = (ref - shift) / scale  # s.e. of the mean 0.001, of the std under 0.002
        assert float(z.mean(0).abs().max()) < 0.004
        assert float((z.std(0) - 1.0).abs().max()) < 0.004


def test_waves_entropy_in_closed_form(sets: dict[str, Toy2D]) -> None:
    """An independent check of the waves density: its entropy is that of U(0, 1) (zero) plus that of the
    two well-separated (10 sigma) Gaussians in y, log 2 + (1/2) log(2 pi e 0.03^2), less log(s_x s_y) for
    the z-scoring; the mean -log p of 50,000 points agrees within 4 s.e."""
    d = sets["waves"]
    assert d.density is not None
    logp = d.density.log_prob(torch.cat([d.train, d.test]).double())
    h = math.log(2.0) + 0.5 * math.log(2 * math.pi * math.e * 0.03**2) - float(d.scale.log().sum())
    assert abs(float(-logp.mean()) - h) < 4 * float(logp.std()) / math.sqrt(logp.numel())


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


@pytest.mark.parametrize("name", NAMES)
def test_fresh_samples_follow_the_scaled_law(sets: dict[str, Toy2D], name: str) -> None:
    d = sets[name]
    assert d.density is not None
    assert isinstance(d.law, GaussianMixture) == (name in LAW_NAMES)
    fresh = d.sample_fresh(20_000, torch.Generator().manual_seed(5))
    assert fresh.dtype == torch.float64 and fresh.shape == (20_000, 2)
    # the mean log-density of fresh and of training points agree (same law), within ~4 s.e.
    lf, lt = d.density.log_prob(fresh), d.density.log_prob(d.train.double())
    se = math.sqrt(lf.var() / lf.numel() + lt.var() / lt.numel())
    assert abs(float(lf.mean() - lt.mean())) < 4 * se
