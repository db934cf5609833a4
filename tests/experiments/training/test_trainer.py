"""The trainer: exact resume, common random numbers across arms, divergence recorded, EMA, schedules."""

import math

import torch

from difflab.experiments.toy2d.config import TrainConfig
from difflab.experiments.training.trainer import EMA, Trainer, lr_factor
from difflab.models.mlp import MLP
from difflab.objectives import build_objective
from difflab.parameterization import TargetDenoiser
from difflab.processes import TrigVP


def _setup(target="eps", weighting="nelbo", seed=0, lr=2e-3, steps=40):
    torch.manual_seed(123)
    process = TrigVP()
    net = MLP(2, 32, 2, embed_dim=8)
    den = TargetDenoiser(net, process, target)
    obj = build_objective(process, target=target, weighting=weighting)
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(
        steps=steps,
        batch_size=64,
        lr=lr,
        seed=seed,
        log_every=10,
        checkpoint_every=20,
        warmup=5,
        time_bins=10,
    )
    return den, obj, x, cfg


def test_resume_is_exact(tmp_path):
    den, obj, x, cfg = _setup()
    Trainer(den, obj, x, cfg, cfg.steps).train()
    full = [p.detach().clone() for p in den.parameters()]

    den2, obj2, x2, _ = _setup()
    run_dir = str(tmp_path)
    t1 = Trainer(den2, obj2, x2, cfg, cfg.steps, run_dir)
    assert t1.train(until=20).status == "running"  # interrupted at step 20, checkpoint written
    den3, obj3, x3, _ = _setup()
    den3.net.layers[0].weight.data.add_(1.0)  # garbage that the checkpoint must overwrite
    t2 = Trainer(den3, obj3, x3, cfg, cfg.steps, run_dir)
    assert t2.maybe_resume() and t2.step == 20
    h = t2.train()
    assert h.status == "finished" and t2.step == cfg.steps
    for a, b in zip(full, den3.parameters(), strict=True):
        assert torch.equal(a, b)
    # loss-by-time bins count every example exactly once
    assert int(h.time_bin_count.sum()) == cfg.steps * cfg.batch_size


def test_common_random_numbers_across_arms():
    den_a, obj_a, x, cfg = _setup("eps", "nelbo")
    den_b, obj_b, _, _ = _setup("x0", "weighted")
    ta, tb = Trainer(den_a, obj_a, x, cfg, 3), Trainer(den_b, obj_b, x, cfg, 3)
    for step in range(3):
        assert torch.equal(ta.batch_indices(step), tb.batch_indices(step))
    ta.train()
    tb.train()
    assert torch.equal(ta.history.time_bin_count, tb.history.time_bin_count)  # same t draws


def test_divergence_is_recorded_not_raised():
    den, obj, x, cfg = _setup(lr=1e30)
    x = x * 1e30
    h = Trainer(den, obj, x, cfg, cfg.steps).train()
    assert h.status == "diverged"
    assert h.diverged_at is not None and 0 <= h.diverged_at < cfg.steps


def test_ema_and_lr_schedule():
    net = torch.nn.Linear(1, 1, bias=False)
    net.weight.data.fill_(0.0)
    ema = EMA(net, decay=0.5)
    net.weight.data.fill_(1.0)
    ema.update(net, step=1000)  # decay = 0.5 after warm-up
    assert math.isclose(float(ema.params[0]), 0.5)
    assert lr_factor(0, 100, 10, "cosine") == 0.1
    assert lr_factor(10, 100, 10, "cosine") == 1.0
    assert abs(lr_factor(100, 100, 10, "cosine")) < 1e-12
    assert math.isclose(lr_factor(55, 100, 10, "cosine"), 0.5, abs_tol=1e-12)
