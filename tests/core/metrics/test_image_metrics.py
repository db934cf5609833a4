"""Tests for difflab.metrics.images (FID / KID / IS) and difflab.models.classifier (the feature network)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from difflab.data.images import ImageData, load_image_data
from difflab.metrics.images import (
    ImageMetrics,
    InceptionFeatures,
    compute_image_metrics,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_score_from_logits,
    kid_from_features,
)
from difflab.models.classifier import FeatureClassifier, load_or_train_classifier, train_classifier


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small models run faster single-threaded (and do not suffer when the 2 CPU cores are shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):  # numpy / scipy BLAS
        yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------ FID


def test_feature_statistics() -> None:
    f = np.array([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]])
    mu, cov = feature_statistics(torch.from_numpy(f))
    np.testing.assert_allclose(mu, [3.0, 2.0])
    np.testing.assert_allclose(cov, [[4.0, 2.0], [2.0, 4.0]])  # unbiased (N - 1)
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(f[:1])


def test_frechet_distance_closed_forms() -> None:
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    d = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]]))
    assert d == pytest.approx(9.0 + 1.0, rel=1e-12)
    # diagonal: ||dmu||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1.0 + 4.0 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0.0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # general non-commuting covariances: Tr (c1 c2)^{1/2} = Tr (c1^{1/2} c2 c1^{1/2})^{1/2}
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    c1, c2 = m1 @ m1.T + 0.1 * np.eye(5), m2 @ m2.T + 0.1 * np.eye(5)
    w, v = np.linalg.eigh(c1)
    s1 = v @ np.diag(np.sqrt(w)) @ v.T
    tr_sqrt = np.sqrt(np.linalg.eigvalsh(s1 @ c2 @ s1)).sum()
    expected = np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
    assert frechet_distance(np.zeros(5), c1, np.zeros(5), c2) == pytest.approx(expected, rel=1e-8)
    # symmetric
    assert frechet_distance(np.zeros(5), c2, np.zeros(5), c1) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_singular_covariance() -> None:
    # rank-1 covariances (as from fewer samples than dimensions): must stay finite and ~ closed form
    u = np.array([1.0, 2.0, 0.0, 0.0])
    c = np.outer(u, u)
    d = frechet_distance(np.zeros(4), c, np.ones(4), c)
    assert np.isfinite(d) and d == pytest.approx(4.0, abs=1e-3)


def test_fid_self_is_zero_and_shift_matches_closed_form() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 16)) @ rng.normal(size=(16, 16))
    mu, cov = feature_statistics(x)
    assert abs(fid_from_features(x, x)) < 1e-6 * np.trace(cov)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-6 * np.trace(cov)
    # equal covariances, shifted means: FID -> ||dmu||^2 (up to sampling error)
    n, shift = 40_000, np.array([1.0, 0.5, 0.0, -0.5])
    a = rng.normal(size=(n, 4))
    b = rng.normal(size=(n, 4)) + shift
    fid = fid_from_features(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    assert fid > 0
    assert fid == pytest.approx(float(shift @ shift), abs=0.05)
    # same distribution, independent samples: small
    assert 0 <= fid_from_features(a, rng.normal(size=(n, 4))) < 0.01


# ------------------------------------------------------------------------------------------------ KID


def _naive_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    m, d = len(x), x.shape[1]

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return float((u @ v / d + 1.0) ** 3)

    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return sxx / (m * (m - 1)) + syy / (m * (m - 1)) - 2 * sxy / m**2


def test_kid_matches_naive_unbiased_mmd() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 3)) + 0.3
    kid, std = kid_from_features(x, y, subsets=3, subset_size=50)  # subset = whole set (m = 7)
    assert kid == pytest.approx(_naive_mmd2(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)  # every "subset" is the full (permuted) set


def test_kid_same_vs_shifted() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
    kid, std = kid_from_features(a, b, subsets=30, subset_size=300, seed=0)
    assert std > 0 and abs(kid) < 3 * std
    kid_s, std_s = kid_from_features(a, b + 1.0, subsets=30, subset_size=300, seed=0)
    assert kid_s > 0 and kid_s > 10 * std_s and kid_s > 100 * abs(kid)
    # deterministic given the seed
    assert kid_from_features(a, b, subsets=5, subset_size=100, seed=3) == kid_from_features(
        a, b, subsets=5, subset_size=100, seed=3
    )


# ------------------------------------------------------------------------------------------------ IS


def test_inception_score_values() -> None:
    k, n = 5, 1000
    confident = 30.0 * torch.nn.functional.one_hot(torch.arange(n) % k, k).double()
    score, std = inception_score_from_logits(confident, splits=10)
    assert score == pytest.approx(k, rel=1e-6) and std < 1e-6
    constant = np.tile(np.array([[2.0, -1.0, 0.5, 0.0, 3.0]]), (n, 1))
    score, std = inception_score_from_logits(constant, splits=10)
    assert score == pytest.approx(1.0, abs=1e-12) and std < 1e-12
    # hand-computed: p(y|x) in {(.9, .1), (.1, .9)}, p(y) = (.5, .5)
    logits = np.log(np.array([[0.9, 0.1], [0.1, 0.9]]))
    kl = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert inception_score_from_logits(logits, splits=1)[0] == pytest.approx(math.exp(kl), rel=1e-12)
    with pytest.raises(ValueError, match="split"):
        inception_score_from_logits(logits, splits=3)


# ------------------------------------------------------------------------------------------------ classifier


@pytest.fixture(scope="module")
def digits() -> tuple[ImageData, ImageData]:
    return load_image_data("digits", None, "train"), load_image_data("digits", None, "test")


@pytest.fixture(scope="module")
def digits_classifier(digits: tuple[ImageData, ImageData]) -> tuple[FeatureClassifier, float, float]:
    train, test = digits
    start = time.perf_counter()
    model, acc = train_classifier(train.images, train.labels, test.images, test.labels, epochs=3, seed=0)
    return model, acc, time.perf_counter() - start


def test_classifier_trains_on_digits(digits_classifier: tuple[FeatureClassifier, float, float]) -> None:
    model, acc, seconds = digits_classifier
    assert acc > 0.85
    assert seconds < 20
    assert not model.training
    x = torch.zeros(4, 1, 8, 8)
    assert model(x).shape == (4, 10) and model.features(x).shape == (4, 128)
    f, logits = model.features_and_logits(x)
    torch.testing.assert_close(logits, model(x))
    assert (f >= 0).all()  # post-ReLU features


def test_classifier_shapes() -> None:
    for c, s in ((1, 28), (3, 32), (1, 7)):
        m = FeatureClassifier(c, s, num_classes=10, feature_dim=32)
        assert m(torch.zeros(2, c, s, s)).shape == (2, 10)
        assert m.features(torch.zeros(2, c, s, s)).shape == (2, 32)


def test_load_or_train_classifier_caches(tmp_path: Path, digits: tuple[ImageData, ImageData],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    train, test = digits
    small_train = (train.images[:400], train.labels[:400])
    small_test = (test.images[:100], test.labels[:100])
    m1, acc1 = load_or_train_classifier("digits", small_train, small_test, tmp_path, epochs=1)
    files = list(tmp_path.glob("classifier_digits_*.pt"))
    assert len(files) == 1
    assert "trained" in capsys.readouterr().out
    m2, acc2 = load_or_train_classifier("digits", small_train, small_test, tmp_path, epochs=1)
    assert "loaded cached" in capsys.readouterr().out and acc2 == acc1
    assert m1.name == m2.name == "digits"
    for (k1, v1), (k2, v2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    # different data -> different cache key
    other = (train.images[400:800], train.labels[400:800])
    load_or_train_classifier("digits", other, small_test, tmp_path, epochs=1, verbose=False)
    assert len(list(tmp_path.glob("classifier_digits_*.pt"))) == 2
    # ImageData accepted directly; more epochs -> another key
    load_or_train_classifier("digits", ImageData(*small_train, "digits", "train"), test, tmp_path, epochs=2,
                             verbose=False)
    assert len(list(tmp_path.glob("classifier_digits_*.pt"))) == 3


def test_compute_image_metrics(digits: tuple[ImageData, ImageData],
                               digits_classifier: tuple[FeatureClassifier, float, float]) -> None:
    train, test = digits
    model = digits_classifier[0]
    model.name = "digits"
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(359, 1, 8, 8, generator=gen) * 2 - 1
    good = compute_image_metrics(model, test.images, train.images[:359], batch_size=100, kid_subsets=20,
                                 kid_subset_size=200)
    bad = compute_image_metrics(model, test.images, noise, batch_size=100, kid_subsets=20,
                                kid_subset_size=200)
    assert set(good) == {"fid", "kid", "kid_std", "is", "is_std", "n_real", "n_fake", "feature"}
    assert good["feature"] == "classifier:digits" and good["n_real"] == 359 and good["n_fake"] == 359
    assert bad["fid"] > 5 * good["fid"] > 0
    assert bad["kid"] > 5 * max(good["kid"], 0.0) and bad["kid"] > 3 * bad["kid_std"]
    assert good["is"] > 5.0 > bad["is"]  # real digits are confidently spread over ~10 classes
    # consistent with the feature-level functions
    f_real = model.features(test.images).double()
    f_fake = model.features(train.images[:359]).double()
    assert good["fid"] == pytest.approx(fid_from_features(f_real, f_fake), rel=1e-6)
    # ImageMetrics caches real features and gives identical numbers
    metrics = ImageMetrics(model, batch_size=100)
    again = metrics.compute(test.images, train.images[:359], kid_subsets=20, kid_subset_size=200)
    assert again == good
    cached = metrics._real_feats
    metrics.compute(test.images, noise, kid_subsets=2, kid_subset_size=50)
    assert metrics._real_feats is cached


# ------------------------------------------------------------------------------------------------ Inception


def test_inception_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no internet") as info:
        InceptionFeatures.from_file(tmp_path / "pt_inception-2015-12-05.pt")
    assert "pt_inception-2015-12-05.pt" in str(info.value)


class _FakeInception(nn.Module):
    """Stands in for the TorchScript Inception: same call signature, trivial maths."""

    def forward(self, x: Tensor, return_features: bool = False, no_output_bias: bool = False) -> Tensor:
        f = x.mean(dim=(2, 3)) / 255.0
        if return_features:
            return f
        return torch.softmax(10.0 * f, dim=1)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_inception_wrapper_plumbing(tmp_path: Path) -> None:
    path = tmp_path / "fake_inception.pt"
    torch.jit.save(torch.jit.script(_FakeInception()), str(path))
    net = InceptionFeatures.from_file(path)
    x = torch.linspace(-1, 1, 2 * 64).reshape(2, 1, 8, 8)
    feats = net.features(x)
    assert feats.shape == (2, 3)  # grey repeated to 3 channels
    expected = ((x + 1) * 127.5).mean(dim=(1, 2, 3)) / 255.0
    torch.testing.assert_close(feats[:, 0], expected)
    out = compute_image_metrics(net, torch.rand(40, 3, 8, 8) * 2 - 1, torch.rand(30, 3, 8, 8) * 2 - 1,
                                kid_subsets=5, kid_subset_size=20, feature_name="inception")
    assert out["feature"] == "inception" and out["is"] >= 1.0 and np.isfinite(out["fid"])
