"""Tests for the VAE-family baselines (difflab.baselines): Gumbel-softmax, categorical / Gaussian /
hierarchical VAEs (ELBO <= exact log-likelihood on tractable cases), diagnostics and the training loop."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from difflab.baselines import (
    CategoricalVAE,
    GaussianVAE,
    HierarchicalVAE,
    bits_per_dim,
    contingency_table,
    exponential_tau_schedule,
    gumbel_softmax_sample,
    mode_category_purity,
    nats_per_dim,
    train_vae,
)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest and robust to a busy machine
    yield
    torch.set_num_threads(n_threads)


def ring_mixture(n: int, K: int, g: torch.Generator, radius: float = 10.0, std: float = 0.5):
    """Seed-003 data: K Gaussian modes on a circle of radius 10, z-scored; returns (x, mode labels)."""
    modes = torch.randint(K, (n,), generator=g)
    angle = 2 * math.pi * modes.double() / K
    x = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    x = x + std * torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = (x - x.mean(0)) / x.std(0)
    return x.float(), modes


# ------------------------------------------------------------------------------------------------------
# Gumbel-softmax
# ------------------------------------------------------------------------------------------------------
def test_gumbel_softmax_gradient_finite_and_simplex():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, -1.0, 0.5, -30.0]] * 64, requires_grad=True)
    w = torch.randn(64, 4, generator=g)
    for hard in (False, True):
        y = gumbel_softmax_sample(logits, 0.5, g, hard=hard)
        assert torch.allclose(y.sum(-1), torch.ones(64), atol=1e-6)
        assert (y >= -1e-7).all()
        if hard:
            assert torch.all((y.detach() == 0) | (y.detach() == 1))
        (grad,) = torch.autograd.grad((y * w).sum(), logits)
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0


def test_gumbel_softmax_approaches_one_hot_as_tau_falls():
    g = torch.Generator().manual_seed(1)
    # A confident encoder's logits (a clear favourite). With near-uniform logits the gap between the two
    # largest perturbed logits has O(1) density at 0, so E[1 - max_i y_i] ~ tau * ln 2 (~0.035 at tau=0.05).
    logits = torch.tensor([5.0, 2.0, 0.0, -2.0, -3.0, 1.0, 0.5, -1.0]).expand(20000, -1)
    cold = gumbel_softmax_sample(logits, 0.05, g).max(dim=-1).values.mean().item()
    hot = gumbel_softmax_sample(logits, 5.0, g).max(dim=-1).values.mean().item()
    # near-uniform random logits: still one-hot in the limit
    logits_flat = torch.randn(20000, 8, generator=g)
    colder = gumbel_softmax_sample(logits_flat, 0.01, g).max(dim=-1).values.mean().item()
    print(f"mean max-coordinate: tau=0.05 {cold:.4f}, tau=5 {hot:.4f}; flat logits tau=0.01 {colder:.4f}")
    assert cold > 0.99
    assert hot < 0.4
    assert colder > 0.99
    taus = [5.0, 1.0, 0.3, 0.1, 0.05]
    means = [gumbel_softmax_sample(logits_flat, t, g).max(dim=-1).values.mean().item() for t in taus]
    assert all(a < b for a, b in itertools.pairwise(means))


def test_gumbel_max_frequencies_match_softmax():
    g = torch.Generator().manual_seed(2)
    n = 20000
    logits = torch.tensor([1.0, 0.0, -0.5, 2.0, -2.0])
    y = gumbel_softmax_sample(logits.expand(n, -1), 1.0, g)
    counts = torch.bincount(y.argmax(-1), minlength=5).double()
    expected = n * torch.softmax(logits.double(), -1)
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    # df = 4: P(chi2 > 23.5) ~ 1e-4
    assert chi2 < 23.5, chi2
    assert torch.allclose(counts / n, expected / n, atol=0.012)


# ------------------------------------------------------------------------------------------------------
# Categorical VAE: exact ELBO <= exact log-likelihood
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("decoder", "learn_prior"), [("table", False), ("table", True), ("mlp", False), ("mlp", True)]
)
def test_categorical_elbo_exact_below_loglik(decoder, learn_prior):
    model = CategoricalVAE(
        num_categories=8, hidden=32, layers=2, decoder=decoder, learn_prior=learn_prior
    ).double()
    if learn_prior:
        with torch.no_grad():
            model.prior_logits.copy_(torch.randn(8, dtype=torch.float64))
    g = torch.Generator().manual_seed(3)
    x = 1.5 * torch.randn(500, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        elbo = model.elbo_exact(x)
        ll = model.log_likelihood(x)
        # the gap is exactly KL(q(c|x) || p(c|x))
        log_q = torch.log_softmax(model.encoder_logits(x), -1)
        log_post = torch.log(model.posterior_probs(x))
        kl_post = (log_q.exp() * (log_q - log_post)).sum(-1)
    assert elbo.shape == ll.shape == (500,)
    assert (elbo <= ll + 1e-6).all()
    assert torch.allclose(ll - elbo, kl_post, atol=1e-8)


def test_categorical_loglik_matches_mixture_and_sampling():
    model = CategoricalVAE(num_categories=4, hidden=16, layers=1, learn_prior=True)
    with torch.no_grad():
        model.prior_logits.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5]))
        model.means.copy_(torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0], [0.0, -3.0]]))
        model.logvars.copy_(torch.log(torch.tensor([[0.1, 0.2], [0.3, 0.1], [0.2, 0.2], [0.1, 0.4]])))
    mean, logvar = model.component_params()
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=model.prior_logits.detach()),
        torch.distributions.Independent(torch.distributions.Normal(mean, torch.exp(0.5 * logvar)), 1),
    )
    g = torch.Generator().manual_seed(4)
    x, c = model.sample(20000, g, return_categories=True)
    with torch.no_grad():
        assert torch.allclose(model.log_likelihood(x), mix.log_prob(x), atol=1e-4)
    freq = torch.bincount(c, minlength=4).float() / 20000
    assert torch.allclose(freq, torch.softmax(model.prior_logits.detach(), -1), atol=0.015)
    assert torch.allclose(x[c == 1].mean(0), torch.tensor([0.0, 3.0]), atol=0.03)
    # the exact posterior recovers the generating category for these well-separated components
    assert (model.assign(x, use_posterior=True) == c).float().mean() > 0.999


# ------------------------------------------------------------------------------------------------------
# Gaussian VAE with a linear decoder: exact marginal N(b, W W^T + diag s^2)
# ------------------------------------------------------------------------------------------------------
def _correlated_data(n: int, g: torch.Generator) -> torch.Tensor:
    A = torch.tensor([[1.0, 0.8], [0.0, 0.5]], dtype=torch.float64)
    return torch.randn(n, 2, generator=g, dtype=torch.float64) @ A + torch.tensor(
        [0.3, -0.2], dtype=torch.float64
    )


def _mc_elbo_with_se(model, x: torch.Tensor, g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example MC ELBO over ``n`` single-sample draws and its standard error."""
    vals = model.elbo(x.repeat(n, 1), g, n_samples=1).reshape(n, x.shape[0])
    return vals.mean(0), vals.std(0) / math.sqrt(n)


def _check_bounds(
    model, x: torch.Tensor, g: torch.Generator, label: str, iwae_upper_tol: float = 0.02
) -> None:
    """ELBO <= IWAE <= exact log p(x) within MC error.

    ``E[IWAE_K] <= log p(x)`` holds exactly, but a single realisation can overshoot when the importance
    weights are heavy-tailed (a poor, randomly initialised encoder whose q(z|x) is much narrower than the
    posterior gives weights of infinite variance); ``iwae_upper_tol`` allows for that.
    """
    with torch.no_grad():
        exact = model.log_likelihood_exact(x)
        elbo, se = _mc_elbo_with_se(model, x, g, 2000)
        elbo_api = model.elbo(x, g, n_samples=2000)
        iwae = model.log_likelihood_is(x, g, n_importance=2000)
        iwae_small = model.log_likelihood_is(x, g, n_importance=5)
    print(
        f"{label}: exact {exact.mean():.4f}  IWAE(2000) {iwae.mean():.4f}  IWAE(5) {iwae_small.mean():.4f}  "
        f"ELBO {elbo.mean():.4f}"
    )
    # API ELBO agrees with the independent MC estimate
    assert torch.allclose(elbo_api, elbo, atol=6 * se.max().item() + 1e-3)
    # ELBO <= log p(x), per example, within MC error
    assert (elbo <= exact + 4 * se + 1e-3).all()
    # averaged over the batch the gap is clearly resolved
    assert elbo.mean() < exact.mean() + 4 * se.mean() / math.sqrt(x.shape[0])
    # ELBO <= IWAE(K) <= log p(x) (batch means; IWAE is a stochastic lower bound, biased low)
    assert iwae.mean() <= exact.mean() + iwae_upper_tol
    assert iwae.mean() >= elbo.mean() - 0.01
    assert iwae_small.mean() <= iwae.mean() + 0.02
    # with many samples the IWAE estimate closes most of the ELBO gap
    gap = (exact - elbo).mean()
    if gap > 0.02:
        assert (exact - iwae).mean() < 0.5 * gap


def test_gaussian_vae_linear_bounds_untrained_and_trained():
    g = torch.Generator().manual_seed(5)
    x_train = _correlated_data(1000, g)
    model = GaussianVAE(latent_dim=1, hidden=32, layers=2, linear_decoder=True).double()
    x = x_train[:64]
    _check_bounds(model, x, g, "GaussianVAE untrained")

    # analytic ELBO for the linear decoder:
    # E_q log N(x; W z + b, D) = log N(x; W m + b, D) - 1/2 tr(D^-1 W S W^T)
    with torch.no_grad():
        m, v = model.encode(x)
        W, b = model.decoder.weight, model.decoder.bias
        D = torch.exp(model.decoder_logvar)
        dist = torch.distributions.Independent(torch.distributions.Normal(m @ W.T + b, D.sqrt()), 1)
        rec = dist.log_prob(x) - 0.5 * ((W.square() / D[:, None]) @ v.exp().T).sum(0)
        kl = 0.5 * (v.exp() + m.square() - 1 - v).sum(-1)
        elbo_analytic = rec - kl
        assert (elbo_analytic <= model.log_likelihood_exact(x) + 1e-9).all()
        elbo_mc, se = _mc_elbo_with_se(model, x, g, 4000)
        assert ((elbo_mc - elbo_analytic).abs() <= 5 * se + 1e-6).all()

    hist = train_vae(model, x_train, steps=300, batch_size=256, lr=1e-2, generator=g)
    assert hist["loss"][-1] < hist["loss"][0]
    _check_bounds(model, x, g, "GaussianVAE trained")
    with torch.no_grad():
        # ML for 1-factor PPCA cannot beat the full-covariance Gaussian fit
        cov = torch.cov(x_train.T)
        mle = torch.distributions.MultivariateNormal(x_train.mean(0), cov).log_prob(x_train).mean()
        assert model.log_likelihood_exact(x_train).mean() <= mle + 1e-6
        assert model.log_likelihood_exact(x_train).mean() > mle - 0.1


def test_gaussian_vae_mlp_decoder_runs():
    g = torch.Generator().manual_seed(6)
    model = GaussianVAE(latent_dim=2, hidden=32, layers=2)
    x = torch.randn(32, 2, generator=g)
    with torch.no_grad():
        elbo = model.elbo(x, g, n_samples=64)
        iwae = model.log_likelihood_is(x, g, n_importance=256, chunk_size=100)
    assert elbo.shape == iwae.shape == (32,)
    assert iwae.mean() > elbo.mean()
    assert model.sample(10, g).shape == (10, 2)
    with pytest.raises(ValueError):
        model.log_likelihood_exact(x)


# ------------------------------------------------------------------------------------------------------
# Hierarchical VAE with linear conditionals: exact Gaussian marginal
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("inference", ["bottom_up", "ladder"])
def test_hierarchical_vae_linear_bounds(inference):
    g = torch.Generator().manual_seed(7)
    x_train = _correlated_data(1000, g)
    model = HierarchicalVAE(latent_dims=(2, 2), hidden=32, linear=True, inference=inference).double()
    x = x_train[:32]
    _check_bounds(model, x, g, f"HierarchicalVAE[{inference}] untrained", iwae_upper_tol=0.15)
    # the marginal is also right empirically: sample moments match (mean, cov)
    mean, cov = model.marginal_gaussian()
    xs = model.sample(40000, g)
    assert torch.allclose(xs.mean(0), mean.detach(), atol=0.05)
    assert torch.allclose(torch.cov(xs.T), cov.detach(), atol=0.1)

    hist = train_vae(model, x_train, steps=300, batch_size=256, lr=1e-2, generator=g)
    assert sum(hist["loss"][-20:]) < sum(hist["loss"][:20])
    _check_bounds(model, x, g, f"HierarchicalVAE[{inference}] trained")


def test_hierarchical_vae_nonlinear_runs_and_trains():
    g = torch.Generator().manual_seed(8)
    x, _ = ring_mixture(1000, 4, g)
    model = HierarchicalVAE(latent_dims=(4, 4), hidden=64, inference="ladder")
    with torch.no_grad():
        e0 = model.elbo(x, g, n_samples=8).mean().item()
    train_vae(model, x, steps=200, batch_size=256, lr=3e-3, generator=g)
    with torch.no_grad():
        e1 = model.elbo(x, g, n_samples=8).mean().item()
        iw = model.log_likelihood_is(x[:100], g, n_importance=200).mean().item()
        e1_sub = model.elbo(x[:100], g, n_samples=200).mean().item()
    print(f"HierarchicalVAE[ladder, MLP] ELBO {e0:.3f} -> {e1:.3f}; IWAE(200) {iw:.3f}")
    assert e1 > e0 + 0.2
    assert iw > e1_sub - 0.02
    x_s, z1, z2 = model.sample(16, g, return_latents=True)
    assert x_s.shape == (16, 2) and z1.shape == (16, 4) and z2.shape == (16, 4)
    with pytest.raises(ValueError):
        model.log_likelihood_exact(x)


# ------------------------------------------------------------------------------------------------------
# Diagnostics
# ------------------------------------------------------------------------------------------------------
def test_contingency_table_and_purity():
    modes = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    cats = torch.tensor([1, 1, 0, 2, 2, 1, 1, 1, 3])
    T = contingency_table(modes, cats, 3, 4)
    expected = torch.tensor([[1, 2, 0, 0], [0, 0, 2, 0], [0, 3, 0, 1]])
    assert torch.equal(T, expected)
    s = mode_category_purity(T)
    assert s["purity"] == pytest.approx(7 / 9)
    # modes 0 and 2 share majority category 1; only mode 1 (2 points) has a unique one
    assert s["unique_majority_fraction"] == pytest.approx(2 / 9)
    assert s["num_distinct_majorities"] == 2
    assert not s["one_to_one"]
    assert 0 < s["nmi"] < 1

    # a permutation is a perfect one-to-one map
    g = torch.Generator().manual_seed(9)
    m = torch.randint(8, (4000,), generator=g)
    perm = torch.randperm(8, generator=g)
    s = mode_category_purity(contingency_table(m, perm[m], 8, 8))
    assert s["purity"] == 1.0 and s["one_to_one"] and s["nmi"] == pytest.approx(1.0)
    # independent labels: NMI ~ 0; collapsed onto one category: NMI = 0
    s = mode_category_purity(contingency_table(m, torch.randint(8, (4000,), generator=g), 8, 8))
    assert s["nmi"] < 0.02
    s = mode_category_purity(contingency_table(m, torch.zeros_like(m), 8, 8))
    assert s["nmi"] == pytest.approx(0.0) and s["num_distinct_majorities"] == 1
    with pytest.raises(ValueError):
        contingency_table(m, perm[m], 7, 8)


def test_unit_helpers_and_tau_schedule():
    assert nats_per_dim(4.0, 2) == 2.0
    assert bits_per_dim(2 * math.log(2.0), 2) == pytest.approx(1.0)
    sched = exponential_tau_schedule(1.0, 0.3, 101)
    assert sched(0) == pytest.approx(1.0)
    assert sched(100) == pytest.approx(0.3)
    assert sched(50) == pytest.approx(math.sqrt(0.3))


# ------------------------------------------------------------------------------------------------------
# Short training run of the categorical VAE on a well-separated mixture (seed 003's question)
# ------------------------------------------------------------------------------------------------------
def test_categorical_vae_training_improves_elbo():
    g = torch.Generator().manual_seed(10)
    K = 8
    x, modes = ring_mixture(4000, K, g)
    model = CategoricalVAE(num_categories=K, hidden=64, layers=2)
    with torch.no_grad():
        elbo0 = model.elbo_exact(x).mean().item()
    steps = 800
    hist = train_vae(model, x, steps=steps, batch_size=256, lr=3e-3, generator=g, tau_schedule=(1.0, 0.3))
    assert len(hist["loss"]) == steps
    assert hist["tau"][0] == pytest.approx(1.0) and hist["tau"][-1] == pytest.approx(0.3)
    assert model.tau == pytest.approx(0.3)
    with torch.no_grad():
        elbo1 = model.elbo_exact(x).mean().item()
        ll1 = model.log_likelihood(x).mean().item()
        assert (model.elbo_exact(x) <= model.log_likelihood(x) + 1e-4).all()
    table = contingency_table(modes, model.assign(x), K, K)
    summary = mode_category_purity(table)
    print(f"\nCategoricalVAE ELBO (exact) {elbo0:.3f} -> {elbo1:.3f} nats/example; log p(x) {ll1:.3f}")
    print("mode x category contingency table:\n", table)
    print("summary:", summary)
    assert elbo1 > elbo0 + 1.0
    assert int(table.sum()) == x.shape[0]
    assert torch.equal(table.sum(1), torch.bincount(modes, minlength=K))
    assert 0.0 <= summary["nmi"] <= 1.0
    assert model.sample(100, g).shape == (100, 2)
