"""The MLP backbone: each time conditioning gives a function of (x_t, t), FiLM starts as a plain MLP in x."""

import pytest
import torch

from difflab.models.mlp import MLP


@pytest.mark.parametrize(("time_embed", "conditioning"), [(True, "film"), (True, "concat"), (False, "film")])
def test_output_depends_on_x_and_t(time_embed, conditioning):
    torch.manual_seed(0)
    net = MLP(2, 32, 3, time_embed=time_embed, conditioning=conditioning)
    if conditioning == "film":  # FiLM modulation starts at zero: give it weights so t matters
        for mod in net.modulation:
            torch.nn.init.normal_(mod.weight, std=0.5)
    x = torch.randn(64, 2)
    t1, t2 = torch.full((64,), 0.1), torch.full((64,), 0.9)
    out = net(x, t1)
    assert out.shape == x.shape
    assert (net(x, t2) - out).abs().mean() > 1e-3
    assert (net(x + 0.5, t1) - out).abs().mean() > 1e-3


def test_film_starts_time_independent_and_unknown_conditioning():
    torch.manual_seed(0)
    net = MLP(2, 16, 2)
    x = torch.randn(8, 2)
    assert torch.equal(net(x, torch.full((8,), 0.2)), net(x, torch.full((8,), 0.7)))
    with pytest.raises(ValueError, match="film, concat"):
        MLP(2, 16, 2, conditioning="add")


def test_v_prediction_learns_with_film():
    """v is uncorrelated with x_t on whitened data; the default MLP must still learn it (it stalled with
    concatenated embeddings: see the MLP docstring)."""
    from difflab.data.toy2d import make_toy2d

    torch.manual_seed(0)
    X = make_toy2d("mixture8", 20000, 100, 0).train
    net = MLP(2, 64, 3)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(400):
        x0 = X[torch.randint(0, len(X), (256,), generator=g)]
        t = torch.rand(256, generator=g) * 0.3
        a, s = torch.cos(0.5 * torch.pi * t)[:, None], torch.sin(0.5 * torch.pi * t)[:, None]
        eps = torch.randn(x0.shape, generator=g)
        loss = ((net(a * x0 + s * eps, t) - (a * eps - s * x0)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-100:]) / 100 < 0.9  # a zero prediction scores ~1.0 (E|v|^2 = 1)
