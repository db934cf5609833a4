"""Tests for difflab.models.unet: shapes, continuous-time dependence, determinism."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from difflab.models.unet import UNet, timestep_embedding


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models run far faster single-threaded (and do not suffer when the 2 CPU cores are shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _small(in_channels: int, image_size: int, **kw: object) -> UNet:
    opts: dict[str, object] = {"channels": 16, "channel_mults": (1, 2), "num_res_blocks": 1,
                               "attn_resolutions": (image_size // 2,), "image_size": image_size}
    opts.update(kw)
    return UNet(in_channels, **opts)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("in_channels", "size", "mults", "attn"),
    [
        (1, 8, (1, 2), (4,)),
        (1, 28, (1, 2, 2), (14,)),
        (1, 28, (1, 2, 2, 2), (16, 8)),
        (3, 32, (1, 2, 2), (16,)),
    ],
)
def test_output_shape(in_channels: int, size: int, mults: tuple[int, ...], attn: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = UNet(in_channels, channels=16, channel_mults=mults, num_res_blocks=1, attn_resolutions=attn,
                 image_size=size)
    x = torch.randn(3, in_channels, size, size)
    out = model(x, torch.rand(3))
    assert out.shape == x.shape
    # final conv is zero-initialised: a fresh model outputs exactly zero
    assert torch.count_nonzero(out) == 0
    if attn:
        assert any(type(m).__name__ == "AttnBlock" for m in model.down.modules())


def test_odd_size_is_padded_and_cropped() -> None:
    torch.manual_seed(0)
    model = _small(1, 28, channel_mults=(1, 2, 2, 2), attn_resolutions=())
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    x = torch.randn(2, 1, 28, 28)
    out = model(x, torch.tensor([0.3, 0.7]))
    assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all()
    # sizes that are not multiples of 8 at all, non-square
    assert model(torch.randn(2, 1, 13, 22), torch.rand(2)).shape == (2, 1, 13, 22)


def test_output_depends_on_continuous_t() -> None:
    torch.manual_seed(0)
    model = _small(1, 8).eval()
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    x = torch.randn(4, 1, 8, 8)
    a = model(x, torch.full((4,), 0.1))
    b = model(x, torch.full((4,), 0.9))
    assert (a - b).abs().mean() > 1e-2 * a.abs().mean()
    # times closer than 1/1000 still give different outputs (no rounding / casting to integers)
    c = model(x, torch.full((4,), 0.1004))
    d = model(x, torch.full((4,), 0.1006))
    assert (c - d).abs().max() > 1e-6
    # scalar t broadcasts; float64 t (as produced by difflab processes) is accepted
    torch.testing.assert_close(model(x, torch.tensor(0.1)), a)
    torch.testing.assert_close(model(x, torch.full((4,), 0.1, dtype=torch.float64)), a)
    with pytest.raises(TypeError, match="floating"):
        model(x, torch.zeros(4, dtype=torch.long))


def test_time_dependence_after_training_steps() -> None:
    """With the zero-initialised output, a few optimizer steps on a t-dependent target make outputs differ."""
    torch.manual_seed(0)
    model = _small(1, 8, scale_shift=True)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    x = torch.randn(16, 1, 8, 8)
    for _ in range(25):
        t = torch.rand(16)
        target = (2.0 * t - 1.0).view(-1, 1, 1, 1).expand_as(x)
        loss = (model(x, t) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        lo, hi = model(x, torch.full((16,), 0.1)), model(x, torch.full((16,), 0.9))
    assert (hi - lo).mean() > 0.5  # target difference is 1.6; the direction must be right


def test_timestep_embedding_values() -> None:
    t = torch.tensor([0.0, 0.25])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = [math.exp(-math.log(10000.0) * i / 4) for i in range(4)]
    expected = [math.sin(250.0 * f) for f in freqs] + [math.cos(250.0 * f) for f in freqs]
    torch.testing.assert_close(emb[1], torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert timestep_embedding(t, 7).shape == (2, 7)


def test_parameter_count_deterministic() -> None:
    a = UNet(1, channels=16, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8)
    b = UNet(1, channels=16, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8)
    n = a.num_parameters()
    assert n == b.num_parameters() == sum(p.numel() for p in a.parameters())
    assert n == 176_849
    assert f"{n:,}" in a.describe()
    # an attention block at 4x4 with 32 channels adds GN(2*32) + qkv(32*96+96) + proj(32*32+32)
    no_attn = UNet(1, channels=16, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=8)
    n_attn_blocks = 3  # one down, two up (num_res_blocks + 1) at resolution 4
    assert n - no_attn.num_parameters() == n_attn_blocks * (64 + 32 * 96 + 96 + 32 * 32 + 32)
    # same seed -> identical weights and outputs
    torch.manual_seed(1)
    c = _small(1, 8)
    torch.manual_seed(1)
    d = _small(1, 8)
    for p, q in zip(c.parameters(), d.parameters()):
        assert torch.equal(p, q)


def test_gradients_flow_and_dropout() -> None:
    torch.manual_seed(0)
    model = _small(3, 8, dropout=0.1)
    x = torch.randn(2, 3, 8, 8)
    model(x, torch.rand(2)).sum().backward()
    # only the zero-initialised output conv gets a non-zero gradient at init; its weight gradient must be
    assert model.conv_out.weight.grad is not None and model.conv_out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="expected x_t"):
        model(torch.randn(2, 1, 8, 8), torch.rand(2))
