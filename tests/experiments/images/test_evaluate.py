"""Image evaluation against independently known values: quantized samples score the FID/KID/IS floor,
the prior mismatch of a DDPM chain (seed 001's T axis), the pre-clip gradient-norm record."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from difflab.data.images import load_image_data
from difflab.experiments.images.bpd import discrete_bpd, likelihood_process, pf_ode_bpd, prior_mismatch
from difflab.experiments.images.config import ImageEvalConfig
from difflab.experiments.images.evaluate import sample_quality
from difflab.experiments.images.train import grad_norm_summary
from difflab.experiments.toy2d.config import TrainConfig
from difflab.experiments.training.trainer import Trainer
from difflab.processes import build_process

LEVELS = 17  # the bundled digits: grey levels 0..16


class _RandomFeatures(nn.Module):
    """A fixed random ReLU feature map with 10 logits: any fixed network serves for these identities."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(64, 32, generator=g) / 8.0, requires_grad=False)
        self.v = nn.Parameter(torch.randn(32, 10, generator=g) / 4.0, requires_grad=False)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.relu(x.reshape(x.shape[0], -1) @ self.w)
        return f, f @ self.v


@pytest.fixture(scope="module")
def digits():
    return load_image_data("digits", None, "train").images, load_image_data("digits", None, "test").images


def _jittered(x: torch.Tensor, frac: float) -> torch.Tensor:
    """x plus uniform noise of +-frac of a half bin: still nearest to its own grey level if frac < 1."""
    half = 1.0 / (LEVELS - 1)
    g = torch.Generator().manual_seed(5)
    return x + (torch.rand(x.shape, generator=g, dtype=x.dtype) * 2 - 1) * frac * half


def test_samples_on_the_data_grid_score_exactly_the_floor(digits):
    reference, heldout = digits
    net = _RandomFeatures()
    # a "model" that reproduces the held-out images up to sub-bin noise: once rounded to the grid it *is*
    # the held-out set, so FID, KID and IS equal the floor exactly
    q = sample_quality(net, reference, heldout, _jittered(heldout, 0.9), levels=LEVELS, seed=0, kid_subsets=5)
    assert q["fid"] == pytest.approx(q["fid_floor"], abs=1e-9)
    assert q["kid"] == pytest.approx(q["kid_floor"], abs=1e-12)
    assert q["is"] == pytest.approx(q["is_floor"], abs=1e-9)
    assert q["levels"] == LEVELS
    assert q["fid_eps_fallback"] is False and q["fid_floor_eps_fallback"] is False
    # test of the test: without rounding (a grid so fine it is the identity here) the same samples are
    # off the floor by far more than the 1e-9 above (about 2% of it for this feature map) -- the defect of
    # unquantized samples that this wiring removes
    fine = 2**20
    raw = sample_quality(net, reference, heldout, _jittered(heldout, 0.9), levels=fine, seed=0, kid_subsets=5)
    assert raw["fid"] - raw["fid_floor"] > 1e-2 * raw["fid_floor"] > 1e-4


def test_prior_mismatch_of_a_linear_chain_against_the_closed_form():
    # independent: alpha_bar_T = prod(1 - beta_i), beta = linspace(1e-4, 0.02, T) (seed 001, Ho et al.)
    for T, scale in [(100, 1.0), (100, 10.0), (500, 1.0)]:
        betas = np.linspace(1e-4 * scale, 0.02 * scale, T)
        abar = float(np.prod(1.0 - betas))
        p = build_process("ddpm", T=T, schedule="linear", beta_start=1e-4 * scale, beta_end=0.02 * scale)
        m = prior_mismatch(p, torch.ones(4, 1, 8, 8))  # |x| = 1: KL per dim = -1/2 log(1 - abar)
        assert m["terminal_snr"] == pytest.approx(abar / (1 - abar), rel=1e-9)
        assert m["prior_kl_bpd"] == pytest.approx(-0.5 * math.log(1 - abar) / math.log(2), rel=1e-9)
    # the audit's figures: T = 100 unscaled ends at SNR 0.57, prior KL 0.23 nats/dim; scaled by 1000/T: ~0
    m = prior_mismatch(build_process("ddpm", T=100, schedule="linear"), torch.ones(2, 3))
    assert m["terminal_snr"] == pytest.approx(0.571, abs=1e-3)
    assert m["prior_kl_bpd"] * math.log(2) == pytest.approx(0.226, abs=1e-3)
    scaled = build_process("ddpm", T=100, schedule="linear", beta_start=1e-3, beta_end=0.2)
    assert prior_mismatch(scaled, torch.ones(2, 3))["terminal_snr"] < 1e-4


class _Quadratic(nn.Module):
    def __init__(self, w0: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w0.clone())


def _objective(model, x0, generator=None):
    # per-example loss c . w with c = (3, 4) for every example: grad = (3, 4), norm exactly 5 at every step
    c = torch.tensor([3.0, 4.0], dtype=torch.float64)
    loss = (model.w * c).sum().expand(x0.shape[0])
    return SimpleNamespace(loss=loss, t=torch.full((x0.shape[0],), 0.5))


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_the_recorded_gradient_norm_is_the_pre_clip_norm(clip):
    cfg = TrainConfig(
        steps=6, batch_size=4, lr=0.0, log_every=3, checkpoint_every=0, warmup=0, grad_clip=clip
    )
    model = _Quadratic(torch.zeros(2, dtype=torch.float64))
    h = Trainer(model, _objective, torch.zeros(8, 2), cfg, 6).train()
    assert h.steps == [3, 6]
    # 5 = |(3, 4)|, whether or not clipping at 1 then shrinks the update
    assert h.grad_norm == pytest.approx([5.0, 5.0], rel=1e-12)
    assert h.grad_norm_max == pytest.approx([5.0, 5.0], rel=1e-12)


def test_gradient_spike_ratio():
    h = SimpleNamespace(grad_norm=[1.0, 2.0, 1.0, 3.0, 1.0], grad_norm_max=[1.5, 2.5, 40.0, 3.5, 1.2])
    s = grad_norm_summary(h)
    assert s == {"grad_norm_max": 40.0, "grad_norm_median": 1.0, "grad_spike_ratio": 40.0}
    assert grad_norm_summary(SimpleNamespace(grad_norm=[], grad_norm_max=[])) == {}


class _ExactDenoiser(nn.Module):
    """E[x0 | x_t] of images whose pixels are i.i.d. uniform on the LEVELS grey levels of [-1, 1]:
    per pixel a softmax over the levels (so the data's entropy is exactly log2 LEVELS bits/dim)."""

    def __init__(self, process) -> None:
        super().__init__()
        self.process = process
        self.levels = torch.linspace(-1.0, 1.0, LEVELS, dtype=torch.float64)
        self.unused = nn.Parameter(torch.zeros(()))  # pf_ode_bpd switches parameter gradients off

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self.process.coefficients(t.to(torch.float64).detach().cpu())
        shape = (-1,) + (1,) * (x.ndim - 1)
        a, s = c.alpha.reshape(shape).to(x), c.sigma.reshape(shape).to(x)
        logits = -0.5 * ((x[..., None] - a[..., None] * self.levels) / s[..., None]) ** 2
        return (torch.softmax(logits, -1) * self.levels).sum(-1)


def _discrete_images(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    grey = torch.linspace(-1, 1, LEVELS, dtype=torch.float64)
    return grey[torch.randint(0, LEVELS, (n, 1, 8, 8), generator=g)]


def test_likelihood_endpoint_in_half_bins():
    p = build_process("trig_vp")
    q = likelihood_process(p, LEVELS, 1.5)
    # sigma/alpha at the new t_min is 1.5 half-bins = 1.5 / 16; the original process is untouched
    assert float(q.sigma(q.t_min) / q.alpha(q.t_min)) == pytest.approx(1.5 / (LEVELS - 1), rel=1e-9)
    assert p.t_min == 1e-4 and likelihood_process(p, LEVELS, 0.0) is p
    chain = build_process("ddpm", T=100, schedule="linear")
    assert likelihood_process(chain, LEVELS, 1.0) is chain  # its ELBO is over its own steps
    assert likelihood_process(chain, LEVELS, 1.0, chain=True).t_min > chain.t_min


def test_exact_denoiser_of_discrete_images_scores_their_entropy():
    """Both bits/dim figures of the images pipeline, at the default settings (bpd_levels = 1000, lower
    endpoint sigma = 1.5 half-bins, a 10-step Heun PF-ODE), for the exact denoiser of 17-level data: within
    0.2 of log2 17 = 4.087 (measured: ELBO 4.12, PF-ODE 4.13; dopri5 4.14)."""
    x = _discrete_images(16)
    base = build_process("trig_vp")
    assert ImageEvalConfig().bpd_sigma_min == 1.5
    p = likelihood_process(base, LEVELS, 1.5)
    g = torch.Generator().manual_seed(1)
    elbo = discrete_bpd(_ExactDenoiser(p), p, x, levels=LEVELS, mc_steps=0, T=1000, batch=16, generator=g)
    assert abs(float(elbo.mean()) - math.log2(LEVELS)) < 0.2
    ode, _ = pf_ode_bpd(
        _ExactDenoiser(p), p, x, levels=LEVELS, solver="heun", steps=10, rtol=1e-4, batch=16, generator=g
    )
    assert abs(float(ode.mean()) - math.log2(LEVELS)) < 0.2
    # test of the test: at the process's own endpoint (sigma = 0.0025 half-bins) the same exact model's
    # PF-ODE figure explodes -- dequantized points fall between the spikes it puts on each level
    exact = _ExactDenoiser(base)
    bad, _ = pf_ode_bpd(exact, base, x, levels=LEVELS, solver="heun", steps=10, rtol=0, batch=16, generator=g)
    assert float(bad.mean()) > 1000


def test_a_pf_ode_figure_worse_than_uniform_on_the_grid_is_withheld():
    from difflab.experiments.images.bpd import untrusted_pf_ode

    assert untrusted_pf_ode(2.34, LEVELS) == {"bpd_pf_ode_untrusted": False}
    out = untrusted_pf_ode(904.7, LEVELS)  # the quick preset's eps arm
    assert out["bpd_pf_ode_untrusted"] and out["bpd_pf_ode_raw"] == 904.7 and math.isnan(out["bpd_pf_ode"])
    assert untrusted_pf_ode(math.log2(LEVELS) + 1e-9, LEVELS)["bpd_pf_ode_untrusted"]
