"""Samplers driven by exact denoisers: contracts, exact equivalences, law recovery and convergence order."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from difflab.data.gaussian import GaussianMixture
from difflab.processes import Process, build_process, ddpm_chain
from difflab.registry import UnknownNameError
from difflab.samplers import (
    GRIDS,
    SAMPLERS,
    get_sampler,
    posterior_coefficients,
    prior_sample,
    sample_ancestral,
    sample_ddim,
    sample_euler_maruyama,
    sample_pc,
    time_grid,
)
from difflab.samplers.grids import grid_coefficients
from difflab.samplers.sde import langevin_step

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: intra-op threads only add overhead (and thrash on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _processes() -> dict[str, Process]:
    return {
        "trig_vp": build_process("trig_vp"),
        "linear_vp": build_process("linear_vp"),
        "ou": build_process("ou"),
        "ve": build_process("ve"),
        "ddpm": ddpm_chain(100, "linear"),
    }


PROCESSES = _processes()


def _rot(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]], dtype=F64)


def _cov(l1: float, l2: float, theta: float) -> torch.Tensor:
    r = _rot(theta)
    return r @ torch.diag(torch.tensor([l1, l2], dtype=F64)) @ r.T


def mixture_3() -> GaussianMixture:
    """3 modes, weights (0.5, 0.3, 0.2), means within +-2, anisotropic rotated covariances; ~ unit scale."""
    return GaussianMixture(
        torch.tensor([0.5, 0.3, 0.2], dtype=F64),
        torch.tensor([[-1.5, -0.5], [1.5, -0.5], [0.0, 1.8]], dtype=F64),
        torch.stack([_cov(0.25, 0.04, 0.5), _cov(0.09, 0.16, -0.3), _cov(0.2, 0.05, 1.2)]),
    )


class Counter:
    """Wrap a denoiser, counting calls and checking the (x_t, t) contract."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.calls = 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == F64 and t.shape == (x_t.shape[0],)
        self.calls += 1
        return self.denoiser(x_t, t)


# --- grids -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pname", list(PROCESSES))
def test_grids_monotone_endpoints(pname: str) -> None:
    p = PROCESSES[pname]
    for kind in GRIDS:
        if kind == "discrete" and pname != "ddpm":
            with pytest.raises(ValueError, match="DiscreteChain"):
                time_grid(p, 4, kind)
            continue
        for steps in (1, 2, 7, 50):
            g = time_grid(p, steps, kind)
            assert g.dtype == F64 and g.shape == (steps + 1,)
            assert bool((g[1:] < g[:-1]).all())
            if kind != "discrete":
                assert g[0].item() == p.t_max and g[-1].item() == p.t_min
        if kind == "uniform_logsnr":
            lam = p.logsnr(time_grid(p, 20, kind))
            torch.testing.assert_close(
                torch.diff(lam), torch.full((20,), float(lam[1] - lam[0]), dtype=F64), rtol=0, atol=1e-8
            )
        if kind == "uniform_t":
            torch.testing.assert_close(
                torch.diff(time_grid(p, 8, kind)),
                torch.full((8,), (p.t_min - p.t_max) / 8, dtype=F64),
                rtol=0,
                atol=1e-15,
            )


def test_discrete_grid_respacing() -> None:
    chain = ddpm_chain(1000, "linear")
    full = time_grid(chain, 999, "discrete")
    assert torch.equal(full, torch.arange(1000, 0, -1, dtype=F64) / 1000)
    for steps in (1, 9, 10, 250, 998):
        idx = time_grid(chain, steps, "discrete") * 1000
        assert torch.equal(idx, idx.round()) and idx[0] == 1000 and idx[-1] == 1
        assert idx.unique().numel() == steps + 1
    assert torch.equal(time_grid(chain, 9, "discrete") * 1000, torch.arange(1000, 0, -111, dtype=F64))
    with pytest.raises(ValueError, match="steps <= T - 1"):
        time_grid(chain, 1000, "discrete")
    with pytest.raises(ValueError, match="steps"):
        time_grid(chain, 0, "uniform_t")
    with pytest.raises(UnknownNameError, match="uniform_logsnr"):
        time_grid(chain, 10, "leading")
    with pytest.raises(UnknownNameError, match="ancestral"):
        get_sampler("dpm_solver")


def test_bad_grid_rejected() -> None:
    p = PROCESSES["trig_vp"]
    gm = mixture_3()
    x = torch.zeros(4, 2, dtype=F64)
    for bad in ([0.5], [0.2, 0.5], [0.5, 0.5, 0.1], [0.9, float("nan")]):
        with pytest.raises(ValueError):
            sample_ancestral(gm.denoiser(p), p, x, torch.tensor(bad, dtype=F64))


# --- contract over every sampler x grid x process ------------------------------------------------------


def _variants() -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = [(name, {}) for name in SAMPLERS]
    out += [("ddim", {"eta": 0.5}), ("pc", {"n_corrector": 2, "per_example": True})]
    return out


@pytest.mark.parametrize("pname", list(PROCESSES))
@pytest.mark.parametrize(("name", "opts"), _variants())
def test_sampler_contract(name: str, opts: dict, pname: str) -> None:
    p = PROCESSES[pname]
    spec = SAMPLERS[name]
    gm = mixture_3()
    kinds = list(GRIDS) if pname == "ddpm" else ["uniform_t", "uniform_logsnr"]
    stochastic = spec.stochastic or opts.get("eta", 0) > 0
    for kind in kinds:
        for steps in (1, 6):
            grid = time_grid(p, steps, kind)
            for dtype in (F64, torch.float32):
                x_T = prior_sample(p, (16, 2), torch.Generator().manual_seed(3), dtype)
                den = Counter(gm.denoiser(p))
                seen: list[tuple[int, float]] = []
                out = spec.fn(
                    den,
                    p,
                    x_T,
                    grid,
                    generator=torch.Generator().manual_seed(7),
                    callback=lambda i, t, x, seen=seen: seen.append((i, t)),
                    **opts,
                )
                assert out.shape == x_T.shape and out.dtype == dtype
                assert bool(torch.isfinite(out).all())
                assert den.calls == spec.nfe(steps, **opts)
                assert [i for i, _ in seen] == list(range(steps))
                assert [t for _, t in seen] == grid[1:].tolist()
                again = spec.fn(den, p, x_T, grid, generator=torch.Generator().manual_seed(7), **opts)
                assert torch.equal(out, again)  # determinism under a seeded generator
                other = spec.fn(den, p, x_T, grid, generator=torch.Generator().manual_seed(8), **opts)
                # EDM Alg. 2 churns only below sigma~(t_max): a one-step grid from t_max has no churn
                one_step_edm = name == "edm_stochastic" and steps == 1
                assert torch.equal(out, other) != (stochastic and not one_step_edm)
            raw = spec.fn(
                gm.denoiser(p), p, x_T, grid, generator=torch.Generator(), denoise_final=False, **opts
            )
            assert raw.shape == x_T.shape and bool(torch.isfinite(raw).all())


def test_nfe_formulas() -> None:
    assert SAMPLERS["ancestral"].nfe(10) == 11
    assert SAMPLERS["ddim"].nfe(10, denoise_final=False) == 10
    assert SAMPLERS["ode_heun"].nfe(18) == 37
    assert SAMPLERS["pc"].nfe(10) == 21 and SAMPLERS["pc"].nfe(10, n_corrector=3) == 41


def test_prior_sample() -> None:
    p = PROCESSES["ve"]
    x = prior_sample(p, (40000, 2), torch.Generator().manual_seed(0), torch.float32)
    assert x.dtype == torch.float32
    assert abs(float(x.std()) / p.prior_std - 1) < 0.01  # 5 sigma of the std estimate
    assert p.prior_std == pytest.approx(math.sqrt(1 + 50.0**2))


# --- exact equivalences ---------------------------------------------------------------------------------


def test_posterior_coefficients_match_ho_eq7() -> None:
    """q(x_{t-1} | x_t, x0) on a DDPM chain: mean coefficients and beta_tilde of Ho et al. eq. 7."""
    chain = ddpm_chain(100, "cosine")
    coefs = grid_coefficients(chain, chain.grid.tolist())
    ab, beta = chain.alpha_bar, chain.betas
    beta_tilde = chain.posterior_variance()
    for i in range(2, chain.T + 1):
        c_xt, c_x0, var = posterior_coefficients(coefs[i], coefs[i - 1])
        assert c_x0 == pytest.approx(float(ab[i - 1].sqrt() * beta[i - 1] / (1 - ab[i])), rel=1e-12)
        assert c_xt == pytest.approx(
            float((1 - beta[i - 1]).sqrt() * (1 - ab[i - 1]) / (1 - ab[i])), rel=1e-12
        )
        assert var == pytest.approx(float(beta_tilde[i - 1]), rel=1e-12)


def _ho_algorithm_2(
    chain, denoiser, x_T: torch.Tensor, g: torch.Generator, start: int, stop: int
) -> torch.Tensor:
    """Ho et al. (2020) Algorithm 2 by hand from the betas, i = start..stop (>= 1); eps_theta from x0_hat."""
    beta, ab = chain.betas, chain.alpha_bar
    x = x_T
    for i in range(start, stop - 1, -1):
        t = torch.full((x.shape[0],), i / chain.T, dtype=F64)
        eps_hat = (x - ab[i].sqrt() * denoiser(x, t)) / (1 - ab[i]).sqrt()
        z = torch.randn(x.shape, generator=g, dtype=x.dtype) if i > 1 else torch.zeros_like(x)
        sigma = chain.posterior_variance()[i - 1].sqrt()
        x = (x - beta[i - 1] / (1 - ab[i]).sqrt() * eps_hat) / (1 - beta[i - 1]).sqrt() + sigma * z
    return x


def test_ancestral_is_ho_algorithm_2() -> None:
    chain = ddpm_chain(100, "linear")
    den = mixture_3().denoiser(chain)
    x_T = prior_sample(chain, (256, 2), torch.Generator().manual_seed(0))
    # one step i = 57 -> 56, same noise
    grid = torch.tensor([57 / 100, 56 / 100], dtype=F64)
    ours = sample_ancestral(
        den, chain, x_T, grid, generator=torch.Generator().manual_seed(1), denoise_final=False
    )
    ho = _ho_algorithm_2(chain, den, x_T, torch.Generator().manual_seed(1), 57, 57)
    assert (ours - ho).abs().max().item() < 1e-12
    # the whole chain T -> 0 on the full grid: T - 1 stochastic steps, then the deterministic i = 1 step
    # is the final denoising
    full = time_grid(chain, chain.T - 1, "discrete")
    ours = sample_ancestral(den, chain, x_T, full, generator=torch.Generator().manual_seed(2))
    ho = _ho_algorithm_2(chain, den, x_T, torch.Generator().manual_seed(2), chain.T, 1)
    assert (ours - ho).abs().max().item() < 1e-12


def test_ddim_matches_discrete_eq12() -> None:
    """One respaced DDIM step vs the discrete form x = sqrt(ab_s) x0 + sqrt(1 - ab_s - s_t^2) eps + s_t z,
    s_t = eta sqrt((1 - ab_s)/(1 - ab_t)) sqrt(1 - ab_t/ab_s) (Song et al. 2021 eq. 12, 16)."""
    chain = ddpm_chain(1000, "linear")
    den = mixture_3().denoiser(chain)
    x = prior_sample(chain, (128, 2), torch.Generator().manual_seed(0))
    i, j, eta = 700, 600, 0.6
    ours = sample_ddim(
        den,
        chain,
        x,
        torch.tensor([i / 1000, j / 1000], dtype=F64),
        generator=torch.Generator().manual_seed(5),
        eta=eta,
        denoise_final=False,
    )
    ab_t, ab_s = chain.alpha_bar[i], chain.alpha_bar[j]
    x0 = den(x, torch.full((128,), i / 1000, dtype=F64))
    eps = (x - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
    s_t = eta * ((1 - ab_s) / (1 - ab_t)).sqrt() * (1 - ab_t / ab_s).sqrt()
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    ref = ab_s.sqrt() * x0 + (1 - ab_s - s_t**2).sqrt() * eps + s_t * z
    assert (ours - ref).abs().max().item() < 1e-12


@pytest.mark.parametrize("pname", ["trig_vp", "ve", "ddpm"])
def test_ddim_eta1_is_ancestral(pname: str) -> None:
    """Pathwise: with the same generator DDIM(eta=1) and ancestral coincide (same mean, variance, noise)."""
    p = PROCESSES[pname]
    den = mixture_3().denoiser(p)
    x_T = prior_sample(p, (512, 2), torch.Generator().manual_seed(0))
    grid = time_grid(p, 30, "uniform_t")
    a = sample_ancestral(den, p, x_T, grid, generator=torch.Generator().manual_seed(4))
    d = sample_ddim(den, p, x_T, grid, generator=torch.Generator().manual_seed(4), eta=1.0)
    assert (a - d).abs().max().item() < 1e-9


def _ancestral_law_gaussian(p: Process, grid: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor):
    """Exact mean and std of ancestral sampling's output for x0 ~ N(mu, diag(sd^2)), x_T ~ N(0, prior_std^2).

    x0_hat = mu + k_t (x_t - alpha_t mu), k_t = alpha_t s^2 / (alpha_t^2 s^2 + sigma_t^2), is affine, so each
    step x_s = a x_t + b + sqrt(v) z maps (mean, var) to (a m + b, a^2 V + v)."""
    coefs = grid_coefficients(p, grid.tolist())
    m, var = torch.zeros_like(mu), torch.full_like(mu, p.prior_std**2)
    for c_t, c_s in itertools.pairwise(coefs):
        c_xt, c_x0, v = posterior_coefficients(c_t, c_s)
        k = c_t.alpha * sd**2 / (c_t.alpha**2 * sd**2 + c_t.sigma**2)
        a = c_xt + c_x0 * k
        m, var = a * m + c_x0 * (mu - k * c_t.alpha * mu), a**2 * var + v
    c = coefs[-1]
    k = c.alpha * sd**2 / (c.alpha**2 * sd**2 + c.sigma**2)  # final denoising
    return mu + k * (m - c.alpha * mu), k * var.sqrt()


def test_ddim_eta1_ancestral_moments_gaussian() -> None:
    """On x0 ~ N(mu, diag(s^2)) DDIM(eta=1) and ancestral (independent seeds, n = 20000, 30 steps) both
    match the exact law of ancestral sampling: mean within 0.02 (MC std <= 0.005), std within 2% (MC std
    0.5%).

    That law is *not* the data law at 30 steps: plugging x0_hat into q(x_s | x_t, x0) drops Var[x0 | x_t], an
    O(1/steps) variance deficit (here std 0.58 instead of 0.70); it vanishes as the grid is refined."""
    mu, sd = torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.7, 1.2], dtype=F64)
    gm = GaussianMixture.gaussian(mu, torch.diag(sd**2))
    p = PROCESSES["linear_vp"]
    grid = time_grid(p, 30, "uniform_logsnr")
    m_exact, sd_exact = _ancestral_law_gaussian(p, grid, mu, sd)
    assert (sd_exact / sd).max().item() < 0.9  # the coarse-grid deficit is real
    for fn, kw, seed in ((sample_ancestral, {}, 10), (sample_ddim, {"eta": 1.0}, 11)):
        g = torch.Generator().manual_seed(seed)
        x = fn(gm.denoiser(p), p, prior_sample(p, (20000, 2), g), grid, generator=g, **kw)
        assert (x.mean(0) - m_exact).abs().max().item() < 0.02
        assert (x.std(0) / sd_exact - 1).abs().max().item() < 0.02
    devs = []
    for steps in (30, 100, 300, 1000):
        m_n, sd_n = _ancestral_law_gaussian(p, time_grid(p, steps, "uniform_logsnr"), mu, sd)
        assert (m_n - mu).abs().max().item() < 1e-4
        devs.append((1 - sd_n / sd).abs().max().item())
    assert devs[-1] < 0.01 and all(0.2 < devs[i + 1] / devs[i] < 0.45 for i in range(3))  # ~ first order


def test_pc_without_corrector_is_euler_maruyama() -> None:
    p = PROCESSES["ou"]
    den = mixture_3().denoiser(p)
    x_T = prior_sample(p, (64, 2), torch.Generator().manual_seed(0))
    grid = time_grid(p, 20, "uniform_logsnr")
    a = sample_pc(den, p, x_T, grid, generator=torch.Generator().manual_seed(1), n_corrector=0)
    b = sample_euler_maruyama(den, p, x_T, grid, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_langevin_corrector_relaxes_to_p_t() -> None:
    """At fixed t, repeated corrector steps (snr 0.16) move N(0, 4 v) to p_t = N(0, v): the unadjusted
    Langevin stationary variance for a Gaussian is v / (1 - eps/(2v)) ~ v (1 + snr^2) here
    (eps ~ 2 snr^2 v)."""
    gm = GaussianMixture.gaussian(torch.zeros(1, dtype=F64), torch.eye(1, dtype=F64) * 0.5)
    p = PROCESSES["trig_vp"]
    c = grid_coefficients(p, [0.4])[0]
    v = c.alpha**2 * 0.5 + c.sigma**2
    g = torch.Generator().manual_seed(0)
    x = 2.0 * math.sqrt(v) * torch.randn(20000, 1, dtype=F64, generator=g)
    for _ in range(150):
        x = langevin_step(gm.denoiser(p), x, c, snr=0.16, alpha_i=1.0, generator=g, per_example=False)
    assert float(x.var()) / v == pytest.approx(1 + 0.16**2, abs=0.04)


@pytest.mark.parametrize("per_example", [False, True])
def test_langevin_step_matches_hand_computation(per_example: bool) -> None:
    """One corrector step against score_sde's formula by hand: z ~ N(0, I) (the same draws), score s from
    x0_hat, eps = 2 alpha_i (snr ||z|| / ||s||)^2 (batch means of the per-example norms, or per example),
    x' = x + eps s + sqrt(2 eps) z. The stationary-variance test above cannot tell eps from eps/2 or 2 eps
    (var/v = 1.032, 1.023, 1.056); here both perturbations miss by far more than the tolerance."""
    gm = mixture_3()
    p = PROCESSES["trig_vp"]
    c = grid_coefficients(p, [0.3])[0]
    x = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    snr, alpha_i = 0.16, 0.9
    out = langevin_step(
        gm.denoiser(p), x, c, snr=snr, alpha_i=alpha_i, generator=torch.Generator().manual_seed(4),
        per_example=per_example,
    )
    z = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    alpha, sigma = float(c.alpha), float(c.sigma)
    score = (alpha * gm.denoise_at(x, alpha, sigma) - x) / sigma**2
    zn, sn = z.norm(dim=1), score.norm(dim=1)
    if not per_example:
        zn, sn = zn.mean(), sn.mean()
    eps = 2 * alpha_i * (snr * zn / sn) ** 2
    if per_example:
        eps = eps.reshape(-1, 1)

    def by_hand(e):
        return x + e * score + torch.sqrt(2 * e) * z

    torch.testing.assert_close(out, by_hand(eps), rtol=1e-10, atol=1e-12)
    for wrong in (0.5 * eps, 2.0 * eps):  # test of the test: a halved or doubled step size is caught
        assert (out - by_hand(wrong)).abs().max().item() > 1e-3


# --- law recovery on a 2D mixture with the exact denoiser -------------------------------------------------

MIXTURE_CASES = [
    # sampler, options, process, grid, steps   (NFE: spec.nfe(steps))
    ("ancestral", {}, "ddpm1000", "discrete", 250),
    ("ddim", {}, "linear_vp", "uniform_t", 200),
    ("euler_maruyama", {}, "ve", "uniform_logsnr", 200),
    ("pc", {}, "ve", "uniform_logsnr", 100),
    ("ode_euler", {}, "trig_vp", "uniform_logsnr", 200),
    ("ode_heun", {}, "trig_vp", "uniform_t", 50),
    ("dpmpp_2m", {}, "trig_vp", "karras", 50),
    ("edm_heun", {}, "linear_vp", "karras", 50),
    ("edm_stochastic", {}, "ve", "karras", 100),
]


def test_mixture_cases_cover_every_sampler() -> None:
    assert {case[0] for case in MIXTURE_CASES} == set(SAMPLERS)


@pytest.mark.parametrize(("name", "opts", "pname", "kind", "steps"), MIXTURE_CASES)
def test_recovers_mixture(name: str, opts: dict, pname: str, kind: str, steps: int) -> None:
    """n = 20000 samples, each assigned to its most responsible mode. Tolerances: weights 0.02 (MC std
    <= 0.0035), per-mode mean 0.05 (MC std of a mean <= 0.01; measured errors <= 0.02); per-mode covariance
    relative: the eigenvalues of Sigma_j^{-1/2} Cov_j Sigma_j^{-1/2} within 4 sqrt(2/n_j) (sampling) + 0.07
    (discretisation, hard assignment) of 1 (measured 0.887-1.107; reverse noise variance x1.3 gives
    1.22-1.40 and fails, see the test below)."""
    gm = mixture_3()
    p = ddpm_chain(1000, "linear") if pname == "ddpm1000" else PROCESSES[pname]
    g = torch.Generator().manual_seed(0)
    x_T = prior_sample(p, (20000, 2), g)
    x = SAMPLERS[name].fn(gm.denoiser(p), p, x_T, time_grid(p, steps, kind), generator=g, **opts)
    assert_recovers_mixture_3(x, gm)


def assert_recovers_mixture_3(x: torch.Tensor, gm: GaussianMixture) -> None:
    k = gm.responsibilities_at(x, 1.0, 0.0).argmax(1)
    weights = torch.bincount(k, minlength=3).to(F64) / x.shape[0]
    assert (weights - gm.weights).abs().max().item() < 0.02
    for j in range(3):
        xj = x[k == j]
        assert (xj.mean(0) - gm.means[j]).abs().max().item() < 0.05
        white = torch.linalg.inv(torch.linalg.cholesky(gm.covs[j]))
        ratios = torch.linalg.eigvalsh(white @ torch.cov(xj.T) @ white.T)
        assert (ratios - 1).abs().max().item() < 4 * math.sqrt(2 / xj.shape[0]) + 0.07, (j, ratios)


def test_recovery_check_catches_minor_axis_error() -> None:
    """Test of the test: exact mixture samples pass; the same samples with each mode's minor-axis variance
    x1.3 (0.04 -> 0.052: within the old 0.06 absolute tolerance) fail."""
    gm = mixture_3()
    x, k = gm.sample(20000, torch.Generator().manual_seed(11), return_labels=True)
    assert_recovers_mixture_3(x, gm)
    u = gm.evecs[k][:, :, 0]  # minor eigenvector of each sample's mode (eigh sorts ascending)
    d = x - gm.means[k]
    wrong = x + (math.sqrt(1.3) - 1) * (d * u).sum(1, keepdim=True) * u
    with pytest.raises(AssertionError):
        assert_recovers_mixture_3(wrong, gm)


@pytest.mark.parametrize("name", ["euler_maruyama", "pc"])
def test_recovery_check_catches_30_percent_noise_error(monkeypatch, name: str) -> None:
    """Test of the test: reverse noise variance x1.3 (a 30% error on every axis, 0.012 on the 0.04 minor
    eigenvalue, which the old 0.06 absolute tolerance let through) must fail the per-mode check."""
    import difflab.samplers.sde as sde

    noise_like = sde.noise_like
    monkeypatch.setattr(sde, "noise_like", lambda x, g: math.sqrt(1.3) * noise_like(x, g))
    case = next(c for c in MIXTURE_CASES if c[0] == name)
    with pytest.raises(AssertionError):
        test_recovers_mixture(*case)


# --- convergence order of the deterministic samplers on Gaussian data ---------------------------------------

ORDER_CASES = [
    ("trig_vp", "uniform_t", (8, 16, 32, 64)),
    ("ou", "uniform_logsnr", (8, 16, 32, 64)),
    ("linear_vp", "uniform_logsnr", (16, 32, 64, 128)),
    ("ve", "uniform_logsnr", (32, 64, 128, 256)),
]


def _flow_errors(pname: str, kind: str, steps: tuple[int, ...]) -> dict[str, list[float]]:
    """Max error at t_min against the exact PF-ODE flow for x0 ~ N(mu, diag(s^2)): the standardized coordinate
    z = (x_t - alpha_t mu) / sqrt(alpha_t^2 s^2 + sigma_t^2) is constant along the flow."""
    mu, sd = torch.tensor([0.7, -0.4], dtype=F64), torch.tensor([0.5, 1.3], dtype=F64)
    gm = GaussianMixture.gaussian(mu, torch.diag(sd**2))
    p = PROCESSES[pname]
    c_T, c_0 = p.coefficients(p.t_max), p.coefficients(p.t_min)
    z = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    x_T = c_T.alpha * mu + (c_T.alpha**2 * sd**2 + c_T.sigma**2).sqrt() * z
    exact = c_0.alpha * mu + (c_0.alpha**2 * sd**2 + c_0.sigma**2).sqrt() * z
    errs: dict[str, list[float]] = {}
    for name in ("ode_euler", "ode_heun", "ddim"):
        errs[name] = []
        for n in steps:
            x = SAMPLERS[name].fn(gm.denoiser(p), p, x_T, time_grid(p, n, kind), denoise_final=False)
            errs[name].append((x - exact).abs().max().item())
    return errs


@pytest.mark.parametrize(("pname", "kind", "steps"), ORDER_CASES)
def test_ode_convergence_order(pname: str, kind: str, steps: tuple[int, ...]) -> None:
    """Error ratio per doubling of steps: Euler and DDIM(eta=0) ~ 1/2 (in [0.4, 0.6]), Heun ~ 1/4 (in
    [0.18, 0.32])."""
    errs = _flow_errors(pname, kind, steps)
    bounds = {"ode_euler": (0.4, 0.6), "ddim": (0.4, 0.6), "ode_heun": (0.18, 0.32)}
    for name, (lo, hi) in bounds.items():
        e = errs[name]
        ratios = [e[i + 1] / e[i] for i in range(len(e) - 1)]
        assert all(lo <= r <= hi for r in ratios), (name, e, ratios)
    # at equal NFE (2n + 1 vs 2n + 1) Heun beats Euler by a wide margin
    assert errs["ode_heun"][-2] < 0.5 * errs["ode_euler"][-1]
