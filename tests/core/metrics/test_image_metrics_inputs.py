"""Image-metric inputs (issue 9, item 5's core half and the FID fallback): quantize samples to the data's
grid before features, and make the FID's eps * I fallback visible."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from difflab.metrics.images import (
    FIDFallbackWarning,
    ImageMetrics,
    fid_from_features,
    frechet_distance,
    quantize,
)


def test_quantize_rounds_to_the_grid() -> None:
    grid = torch.linspace(-1, 1, 17)
    step = 2 / 16
    x = torch.tensor([-1.3, -1.0, -1 + 0.49 * step, -1 + 0.51 * step, 0.0, 0.3, 1.0, 1.7])
    expected = torch.tensor([-1.0, -1.0, -1.0, -1 + step, 0.0, grid[(grid - 0.3).abs().argmin()], 1.0, 1.0])
    torch.testing.assert_close(quantize(x, 17), expected)
    torch.testing.assert_close(quantize(grid, 17), grid)  # the grid is fixed
    k = torch.arange(256, dtype=torch.float64)
    torch.testing.assert_close(quantize(k / 127.5 - 1 + 0.3 / 127.5, 256), k / 127.5 - 1)  # 8-bit grid
    with pytest.raises(ValueError):
        quantize(x, 1)


class _RandomFeatures(nn.Module):
    """Random features plus one that is 1 exactly on the 17-level grid (a stand-in for a classifier that
    only ever saw on-grid images)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(64, 8)

    def features(self, x):
        on_grid = torch.cos(2 * torch.pi * (x.flatten(1) + 1) / (2 / 16)).mean(1, keepdim=True)
        return torch.cat([torch.tanh(3 * self.lin(x.flatten(1))), on_grid], 1)

    def forward(self, x):
        return None


def test_quantized_copy_of_real_set_scores_the_floor() -> None:
    """Held-out images on the 17-level grid, jittered within +-0.45 bin (as a sampler's continuous output):
    unquantized they score above the floor (the classifier sees off-grid values); quantized they are the
    held-out set again and score the floor exactly."""
    g = torch.Generator().manual_seed(0)
    levels = 17
    grid = torch.linspace(-1, 1, levels)
    ref = grid[torch.randint(0, levels, (600, 1, 8, 8), generator=g)]
    held = grid[torch.randint(0, levels, (600, 1, 8, 8), generator=g)]
    jitter = (torch.rand(held.shape, generator=g) - 0.5) * 0.9 * (2 / (levels - 1))
    fake = held + jitter
    metrics = ImageMetrics(_RandomFeatures(), batch_size=200)
    floor = metrics.compute(ref, held, kid_subsets=5, kid_subset_size=200)["fid"]
    raw = metrics.compute(ref, fake, kid_subsets=5, kid_subset_size=200)["fid"]
    fixed = metrics.compute(ref, quantize(fake, levels), kid_subsets=5, kid_subset_size=200)["fid"]
    assert fixed == pytest.approx(floor, rel=1e-9, abs=1e-12)
    assert raw > floor + 0.05 * abs(floor), (raw, floor)


def test_fid_fallback_warns_and_is_recorded(monkeypatch) -> None:
    import difflab.metrics.images as images

    sqrtm = images.scipy.linalg.sqrtm
    calls = []

    def singular_once(a):  # the first square root is not finite, as for a too singular product
        calls.append(1)
        return np.full_like(a, np.nan) if len(calls) == 1 else sqrtm(a)

    u = np.array([1.0, 2.0, 0.0, 0.0])
    c = np.outer(u, u)
    monkeypatch.setattr(images.scipy.linalg, "sqrtm", singular_once)
    with pytest.warns(FIDFallbackWarning):
        d, info = frechet_distance(np.zeros(4), c, np.ones(4), c, return_info=True)
    assert info == {"fid_eps_fallback": True} and d == pytest.approx(4.0, abs=1e-3)
    monkeypatch.setattr(images.scipy.linalg, "sqrtm", sqrtm)
    f = np.random.default_rng(0).normal(size=(200, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FIDFallbackWarning)
        d, info = fid_from_features(f, f + 1.0, return_info=True)
    assert info == {"fid_eps_fallback": False} and d == pytest.approx(4.0, rel=1e-9)
    m = ImageMetrics(_RandomFeatures(), batch_size=50)
    x = torch.rand(30, 1, 8, 8) * 2 - 1
    m.compute(x, x.flip(0), kid_subsets=2, kid_subset_size=10)
    assert m.last_fid_eps_fallback is False
    calls.clear()
    monkeypatch.setattr(images.scipy.linalg, "sqrtm", singular_once)
    with pytest.warns(FIDFallbackWarning):
        m.compute(x, x.flip(0), kid_subsets=2, kid_subset_size=10)
    assert m.last_fid_eps_fallback is True
