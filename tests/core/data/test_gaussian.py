"""The Gaussian-mixture oracle (difflab.data.gaussian) against independent computations.

* score_t(x) = grad_x log p_t(x) by autograd of the closed-form log-density (1e-10);
* Tweedie: E[x0 | x_t] = (x_t + sigma_t^2 grad log p_t(x_t)) / alpha_t (Efron 2011; Kingma et al. 2021);
* p_0 integrates to 1 (2-D quadrature); samples have .mean() / .covariance();
* affine(): the law of y = (x - shift) / scale has log p_y(y) = log p_x(shift + scale y) + sum log scale;
* MMSE: Monte-Carlo E|x0 - D(x_t)|^2 of the Bayes denoiser = mmse_at(alpha, sigma) (3 standard errors).
"""

from __future__ import annotations

import math

import pytest
import torch

from difflab.data.gaussian import GaussianMixture, eight_mode_mixture
from difflab.processes import build_process, ddpm_chain

F64 = torch.float64
PROCESSES = {
    "trig_vp": build_process("trig_vp"),
    "linear_vp": build_process("linear_vp"),
    "ou": build_process("ou"),
    "ve": build_process("ve"),
    "sub_vp": build_process("sub_vp"),
    "ddpm": ddpm_chain(100, "cosine"),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: intra-op threads only add overhead (and thrash on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def mixture_2d() -> GaussianMixture:
    means = torch.tensor([[1.5, 0.0], [-1.0, 1.2], [-0.5, -1.4]], dtype=F64)
    covs = torch.stack(
        [
            torch.tensor([[0.3**2, 0.02], [0.02, 0.2**2]], dtype=F64),
            0.25**2 * torch.eye(2, dtype=F64),
            torch.tensor([[0.35**2, -0.03], [-0.03, 0.25**2]], dtype=F64),
        ]
    )
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), means, covs)


def mixture_3d() -> GaussianMixture:
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(4, 3, 3, dtype=F64, generator=gen)
    covs = A @ A.transpose(-1, -2) * 0.2 + 0.05 * torch.eye(3, dtype=F64)
    means = 2 * torch.randn(4, 3, dtype=F64, generator=gen)
    return GaussianMixture(torch.tensor([1.0, 2.0, 3.0, 4.0]), means, covs)


MIXTURES = {"2d": mixture_2d, "3d": mixture_3d, "8mode": lambda: eight_mode_mixture(radius=4.0, std=0.5)}


def diffused_points(gm: GaussianMixture, p, n: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    t = p.t_min + (p.t_max - p.t_min) * torch.rand(n, dtype=F64, generator=gen)
    x_t = p.marginal(gm.sample(n, generator=gen), t, torch.randn(n, gm.dim, dtype=F64, generator=gen))
    return t, x_t


@pytest.mark.parametrize("mixture", list(MIXTURES))
@pytest.mark.parametrize("process_name", list(PROCESSES))
def test_score_is_grad_log_prob(mixture: str, process_name: str) -> None:
    gm, p = MIXTURES[mixture](), PROCESSES[process_name]
    t, x_t = diffused_points(gm, p)
    x = x_t.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(gm.log_prob(x, t, p).sum(), x)
    score = gm.score(x_t, t, p)
    torch.testing.assert_close(score, auto, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mixture", list(MIXTURES))
@pytest.mark.parametrize("process_name", list(PROCESSES))
def test_tweedie(mixture: str, process_name: str) -> None:
    gm, p = MIXTURES[mixture](), PROCESSES[process_name]
    t, x_t = diffused_points(gm, p, seed=1)
    c = p.coefficients(t)
    a, s = c.alpha[:, None], c.sigma[:, None]
    tweedie = (x_t + s**2 * gm.score(x_t, t, p)) / a
    x0_hat = gm.denoiser(p)(x_t, t)
    torch.testing.assert_close(x0_hat, tweedie, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x0_hat, gm.denoise_at(x_t, c.alpha, c.sigma), rtol=1e-14, atol=0)
    # float32 inputs come back in float32
    assert gm.denoiser(p)(x_t.float(), t).dtype == torch.float32


def test_log_prob_integrates_to_one() -> None:
    """Midpoint rule on [-4, 4]^2 (mass outside < 1e-12), also for a diffused p_t."""
    gm = mixture_2d()
    n = 801
    h = 8.0 / n
    centers = -4.0 + h * (torch.arange(n, dtype=F64) + 0.5)
    grid = torch.stack(torch.meshgrid(centers, centers, indexing="ij"), -1).reshape(-1, 2)
    mass = torch.exp(gm.log_prob(grid)).sum() * h * h
    assert abs(float(mass) - 1.0) < 1e-3  # measured |1 - mass| < 1e-9
    p = PROCESSES["trig_vp"]
    mass_t = torch.exp(gm.log_prob(grid, 0.3, p)).sum() * h * h
    assert abs(float(mass_t) - 1.0) < 1e-3


def test_single_gaussian_log_prob_closed_form() -> None:
    mean = torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    A = torch.tensor([[1.0, 0.2, 0.0], [0.0, 0.7, -0.3], [0.1, 0.0, 0.5]], dtype=F64)
    cov = A @ A.T
    gm = GaussianMixture.gaussian(mean, cov)
    x = torch.randn(10, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    ref = torch.distributions.MultivariateNormal(mean, cov).log_prob(x)
    torch.testing.assert_close(gm.log_prob(x), ref, rtol=1e-12, atol=1e-12)
    # diffused: N(alpha mean, alpha^2 cov + sigma^2 I)
    a, s = 0.6, 0.8
    ref_t = torch.distributions.MultivariateNormal(a * mean, a**2 * cov + s**2 * torch.eye(3, dtype=F64))
    torch.testing.assert_close(gm.log_prob_at(x, a, s), ref_t.log_prob(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mixture", list(MIXTURES))
def test_sample_moments(mixture: str) -> None:
    gm = MIXTURES[mixture]()
    n = 200_000
    x, k = gm.sample(n, generator=torch.Generator().manual_seed(5), return_labels=True)
    assert x.shape == (n, gm.dim) and x.dtype == F64 and k.shape == (n,)
    mean, cov = gm.mean(), gm.covariance()
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    assert ((x.mean(0) - mean).abs() < 4 * se_mean).all()
    # cov entry (i, j): s.e. from the empirical spread of the products (x_i - m_i)(x_j - m_j)
    centred = x - mean
    prods = centred[:, :, None] * centred[:, None, :]
    se_cov = prods.std(0) / math.sqrt(n)
    assert ((torch.cov(x.T) - cov).abs() < 4 * se_cov).all(), (torch.cov(x.T) - cov) / se_cov
    # component frequencies
    freq = torch.bincount(k, minlength=gm.num_components).to(F64) / n
    se_w = torch.sqrt(gm.weights * (1 - gm.weights) / n)
    assert ((freq - gm.weights).abs() < 4 * se_w).all()


def test_mean_and_covariance_formulas() -> None:
    gm = mixture_2d()
    w, mu = gm.weights, gm.means
    mean = (w[:, None] * mu).sum(0)
    cov = sum(w[k] * (gm.covs[k] + torch.outer(mu[k] - mean, mu[k] - mean)) for k in range(3))
    torch.testing.assert_close(gm.mean(), mean, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(gm.covariance(), cov, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("mixture", list(MIXTURES))
def test_affine_change_of_variables(mixture: str) -> None:
    gm = MIXTURES[mixture]()
    shift = torch.linspace(-0.5, 0.7, gm.dim, dtype=F64)
    scale = torch.linspace(0.5, 2.0, gm.dim, dtype=F64)
    z = gm.affine(shift, scale)
    y = torch.randn(32, gm.dim, dtype=F64, generator=torch.Generator().manual_seed(1))
    expected = gm.log_prob(shift + scale * y) + torch.log(scale).sum()
    torch.testing.assert_close(z.log_prob(y), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z.mean(), (gm.mean() - shift) / scale, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        z.covariance(), gm.covariance() / torch.outer(scale, scale), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("process_name", ["trig_vp", "linear_vp", "ve"])
@pytest.mark.parametrize("t", [0.1, 0.4, 0.7])
def test_mmse_monte_carlo(process_name: str, t: float) -> None:
    p = PROCESSES[process_name]
    mean = torch.tensor([0.5, -1.0, 0.2], dtype=F64)
    A = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.6, 0.2], [0.4, 0.0, 0.3]], dtype=F64)
    gm = GaussianMixture.gaussian(mean, A @ A.T)
    n = 50_000
    gen = torch.Generator().manual_seed(int(t * 10) + len(process_name))
    x0 = gm.sample(n, generator=gen)
    tt = torch.full((n,), t, dtype=F64)
    x_t = p.marginal(x0, tt, torch.randn(n, 3, dtype=F64, generator=gen))
    err = ((x0 - gm.denoiser(p)(x_t, tt)) ** 2).sum(1)
    c = p.coefficients(torch.tensor(t, dtype=F64))
    mmse = gm.mmse_at(float(c.alpha), float(c.sigma))
    se = float(err.std()) / math.sqrt(n)
    assert abs(float(err.mean()) - mmse) < 3 * se, (float(err.mean()), mmse, se)
    # and a worse denoiser does worse: the Bayes denoiser is the minimiser
    worse = ((x0 - 1.05 * gm.denoiser(p)(x_t, tt)) ** 2).sum(1).mean()
    assert float(worse) > float(err.mean())


def test_mmse_needs_single_gaussian() -> None:
    with pytest.raises(ValueError, match="single Gaussian"):
        mixture_2d().mmse_at(0.5, 0.5)


def test_invalid_mixtures() -> None:
    with pytest.raises(ValueError):
        GaussianMixture(torch.ones(2), torch.zeros(2, 2), torch.eye(2).expand(3, 2, 2))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(-torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
    with pytest.raises(ValueError, match="process"):
        mixture_2d().log_prob(torch.zeros(1, 2), 0.5)


def test_eight_mode_mixture_std_convention() -> None:
    gm = eight_mode_mixture(radius=10.0, std=1.0)
    assert gm.num_components == 8 and gm.dim == 2
    torch.testing.assert_close(gm.means.norm(dim=1), torch.full((8,), 10.0, dtype=F64))
    torch.testing.assert_close(gm.covs, torch.eye(2, dtype=F64).expand(8, 2, 2))  # std 1 -> cov I
    torch.testing.assert_close(gm.mean(), torch.zeros(2, dtype=F64), rtol=0, atol=1e-12)


def _closed_forms(law: GaussianMixture, x, alpha, sigma):
    return law.log_prob_at(x, alpha, sigma), law.score_at(x, alpha, sigma), law.denoise_at(x, alpha, sigma)


@pytest.mark.parametrize(("alpha", "sigma"), [(1.0, 0.0), (0.7, 0.5), (0.999, 0.02)])
@pytest.mark.parametrize("rotated", [False, True])
def test_fast_paths_match_the_general_one(alpha, sigma, rotated, monkeypatch):
    """At one (alpha, sigma) the closed forms take the matrix-product path (axis-aligned components: their
    diagonals; rotated ones: full 2 x 2 precisions); it gives the general eigenbasis path's log p_t, score
    and denoiser to rounding (a per-point alpha, or D past FAST_FULL_MAX_DIM, takes the general path)."""
    import difflab.data.gaussian as gaussian

    g = torch.Generator().manual_seed(0)
    means = 3.0 * torch.randn(50, 2, dtype=torch.float64, generator=g)
    covs = torch.diag_embed(0.05 + torch.rand(50, 2, dtype=torch.float64, generator=g))
    if rotated:
        angle = 2 * math.pi * torch.rand(50, dtype=torch.float64, generator=g)
        rot = torch.stack([torch.cos(angle), -torch.sin(angle), torch.sin(angle), torch.cos(angle)], 1)
        rot = rot.reshape(50, 2, 2)
        covs = rot @ covs @ rot.transpose(1, 2)
    law = GaussianMixture(torch.rand(50, dtype=torch.float64, generator=g) + 0.1, means, covs)
    assert law._diagonal is not rotated
    x = 3.0 * torch.randn(300, 2, dtype=torch.float64, generator=g)
    assert law._fast_parts(x, alpha, sigma) is not None
    assert law._fast_parts(x, torch.linspace(0.5, 0.9, 300), sigma) is None
    fast = _closed_forms(law, x, alpha, sigma)
    monkeypatch.setattr(gaussian, "FAST_FULL_MAX_DIM", 0)
    law._diagonal = False
    assert law._fast_parts(x, alpha, sigma) is None
    slow = _closed_forms(law, x, alpha, sigma)
    for f, s in zip(fast, slow, strict=True):
        torch.testing.assert_close(f, s, rtol=1e-11, atol=1e-11)


def test_degenerate_components_with_a_logsnr_bound() -> None:
    """Rank-one covariances (a point on a curve plus noise along one direction) are allowed only with a
    finite max_logsnr. Their closed forms at sigma > 0 are the limit of positive-definite components: a
    null direction given variance 1e-14 changes log p_t, the score and the denoiser by < 1e-9. Evaluating at
    sigma = 0 or past max_logsnr raises; affine() moves the bound by 2 log min(scale)."""
    g = torch.Generator().manual_seed(1)
    angle = 2 * math.pi * torch.rand(30, dtype=F64, generator=g)
    u = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    means = torch.randn(30, 2, dtype=F64, generator=g)
    rank_one = 0.04 * u[:, :, None] * u[:, None, :]
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture(torch.ones(30), means, rank_one)
    law = GaussianMixture(torch.ones(30), means, rank_one, max_logsnr=8.0)
    normal = torch.stack([-u[:, 1], u[:, 0]], 1)
    near = GaussianMixture(torch.ones(30), means, rank_one + 1e-14 * normal[:, :, None] * normal[:, None, :])
    x = torch.randn(200, 2, dtype=F64, generator=g)
    alpha, sigma = 0.99, math.sqrt(1 - 0.99**2)  # logsnr 3.9
    for a, b in zip(_closed_forms(law, x, alpha, sigma), _closed_forms(near, x, alpha, sigma), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # a plausible slip, the std 0.2 used as the variance, is far outside that tolerance
    wrong = GaussianMixture(torch.ones(30), means, 5.0 * rank_one, max_logsnr=8.0)
    assert float((wrong.log_prob_at(x, alpha, sigma) - law.log_prob_at(x, alpha, sigma)).abs().max()) > 1e-2
    with pytest.raises(ValueError, match="logsnr <= 8"):
        law.log_prob_at(x)  # sigma = 0: the data law itself
    with pytest.raises(ValueError, match="logsnr <= 8"):
        law.score_at(x, 1.0, math.exp(-4.5))  # logsnr 9
    scaled = law.affine(torch.zeros(2), torch.tensor([2.0, 3.0], dtype=F64))
    assert scaled.max_logsnr == pytest.approx(8.0 + 2 * math.log(2.0))
    with pytest.raises(ValueError, match="semi-definite"):
        GaussianMixture(torch.ones(1), torch.zeros(1, 2), -torch.eye(2, dtype=F64)[None], max_logsnr=8.0)
