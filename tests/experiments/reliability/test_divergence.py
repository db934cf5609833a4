"""Issue 11 item 4: divergence detected before it becomes NaN, a result (not a crash), and never sampled.

The detector (:meth:`Trainer._diverged`): the loss smoothed by m_k = 0.95 m_{k-1} + 0.05 l_k staying above
100 x its running minimum for ``window = min(50, max(5, total // 10))`` steps, or a non-finite loss or
gradient norm. The synthetic losses below make the expected step computable by hand.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

from difflab.cli import main
from difflab.experiments.toy2d import evaluate as toy_eval
from difflab.experiments.training.trainer import Trainer

from .conftest import snapshot, write_tiny


@dataclass(frozen=True)
class Settings:
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    ema: float = 0.9
    time_bins: int = 4
    seed: int = 0
    batch_size: int = 8
    warmup: int = 0
    lr_schedule: str = "constant"
    grad_clip: float = 0.0
    log_every: int = 10
    checkpoint_every: int = 0


class Scripted(nn.Module):
    """A one-parameter 'denoiser' whose objective returns a scripted loss per step."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))


def scripted_objective(losses):
    """objective(model, x0, generator): per-example loss ``losses[k] * (1 + 0 * w)`` at the k-th call."""
    calls = iter(losses)

    def objective(model, x0, generator=None):
        value = next(calls)
        loss = torch.full((x0.shape[0],), float(value)) * (1.0 + 0.0 * model.w)
        return SimpleNamespace(loss=loss, t=torch.rand(x0.shape[0], generator=generator))

    return objective


def _trainer(losses, total, run_dir=None, **overrides):
    settings = Settings(**overrides)
    return Trainer(Scripted(), scripted_objective(losses), torch.zeros(64, 2), settings, total, run_dir)


def test_finite_blow_up_is_divergence_at_its_first_step():
    # 1.0 for 30 steps, then 1e4 (finite, as lr = 10 gives): m_30 = 0.95 + 0.05e4 = 500.95 > 100 x 1, so the
    # excursion starts at step 30; the window is min(50, max(5, 200 // 10)) = 20 steps: stop at step 49
    trainer = _trainer([1.0] * 30 + [1e4] * 170, total=200)
    h = trainer.train()
    assert (h.status, h.diverged_at, trainer.step) == ("diverged", 30, 49)
    assert "above 100 x its minimum 1 for 20 steps" in h.divergence_reason


def test_the_ratio_is_100():
    """A test of the test: a sustained 50x jump (m -> 50 < 100) is not divergence; a sustained 200x jump is,
    from the step where m_j = 1 + 199 (1 - 0.95^j) first exceeds 100: j = 14 (0.95^13 = 0.513,
    0.95^14 = 0.488), i.e. step 30 + 13 = 43. A detector with ratio 10 would flag the 50x run; one with
    ratio 150 would flag the 200x run only at j = 27 (step 56)."""
    assert _trainer([1.0] * 30 + [50.0] * 170, total=200).train().status == "finished"
    h = _trainer([1.0] * 30 + [200.0] * 170, total=200).train()
    assert (h.status, h.diverged_at) == ("diverged", 43)


def test_non_finite_gradient_with_finite_loss():
    class Kink(Scripted):
        pass

    def objective(model, x0, generator=None):
        loss = torch.sqrt(model.w**2).expand(x0.shape[0])  # loss 0 at w = 0; d/dw = 0 / 0 = nan
        return SimpleNamespace(loss=loss, t=torch.rand(x0.shape[0], generator=generator))

    trainer = Trainer(Kink(), objective, torch.zeros(64, 2), Settings(), 100)
    h = trainer.train()
    assert (h.status, h.diverged_at) == ("diverged", 0)
    assert h.divergence_reason.startswith("non-finite gradient norm")


def test_a_noisy_normal_run_is_not_flagged():
    """Heavy-tailed noise: log-normal (sigma 1) around a decreasing trend plus 2% spikes of 30x."""
    g = torch.Generator().manual_seed(0)
    n = 2000
    trend = torch.linspace(0, math.log(0.05), n).exp()
    noise = torch.exp(torch.randn(n, generator=g))
    spikes = torch.where(torch.rand(n, generator=g) < 0.02, 30.0, 1.0)
    h = _trainer((trend * noise * spikes).tolist(), total=n).train()
    assert h.status == "finished" and h.diverged_at is None


def test_a_lucky_first_batch_does_not_set_the_minimum():
    """A heavy-tailed loss whose first batches happen to be 200x below its typical level (the x0 / NELBO
    image arm: 8381 at the start, ~1e6 after) trains; the minimum is taken once the EMA has seen 20 steps."""
    h = _trainer([1.0] * 3 + [200.0] * 297, total=300).train()
    assert h.status == "finished" and h.diverged_at is None
    # test of the test: without the burn-in (minimum from the first step) the same run is "diverged"
    t = _trainer([1.0] * 3 + [200.0] * 297, total=300)
    t.divergence_burn_in = 1
    assert t.train().status == "diverged"
    # and a real blow-up after the burn-in is still caught at its first step
    h = _trainer([1.0] * 40 + [1e4] * 60, total=100).train()
    assert (h.status, h.diverged_at) == ("diverged", 40)


def test_a_blow_up_at_the_end_of_a_short_run_is_divergence():
    h = _trainer([1.0] * 6 + [1e4] * 4, total=10).train()  # window 5 never completes; 4 steps in excursion
    assert (h.status, h.diverged_at) == ("diverged", 6)


def test_detector_state_resumes_exactly(tmp_path):
    losses = [1.0] * 30 + [1e4] * 170
    a = _trainer(losses, 200, str(tmp_path), checkpoint_every=10)
    a.train(until=40)  # interrupted inside the excursion
    b = _trainer(losses[40:], 200, str(tmp_path), checkpoint_every=10)
    assert b.maybe_resume() and b.step == 40
    h = b.train()
    assert (h.status, h.diverged_at, b.step) == ("diverged", 30, 49)


def test_lr_10_diverges_and_cannot_be_sampled_or_evaluated(tmp_path, capsys):
    cfg = write_tiny(tmp_path / "c.toml")
    run = tmp_path / "run"
    sets = ["--set", "train.lr=10", "--set", "train.steps=30", "--set", "train.log_every=10"]
    assert main(["train", str(cfg), "--out", str(run), *sets, "--set", "train.checkpoint_every=10"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "diverged" and 0 <= result["diverged_at"] < 30
    before = snapshot(run)
    for command in (["sample", str(run), "--n", "5", "--steps", "2"], ["evaluate", str(run)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"the run diverged at step {result['diverged_at']}" in err and "nothing to sample" in err
    assert snapshot(run) == before  # no all-NaN samples file


def test_evaluate_of_an_unfinished_run(trained, capsys):
    _, run = trained
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["history"]["status"], state["step"] = "running", 2
    torch.save(state, run / "checkpoint.pt")
    before = snapshot(run)
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "the run is unfinished (step 2 of 4)" in err and "rerun `difflab train`" in err
    assert snapshot(run) == before
    assert main(["sample", str(run), "--n", "5", "--steps", "2"]) == 0  # sampling it is allowed, and said
    assert "(an unfinished run: step 2 of 4)" in capsys.readouterr().out


def test_non_finite_samples_are_not_written(trained, capsys, monkeypatch):
    import numpy as np

    from difflab.experiments.toy2d import run as toy_run

    _, run = trained
    monkeypatch.setattr(toy_run, "draw_samples", lambda *a, **k: (np.full((5, 2), np.nan), 3))
    before = snapshot(run)
    assert main(["sample", str(run), "--n", "5", "--steps", "2"]) == 2
    assert "5 of 5 samples are not finite" in capsys.readouterr().err
    assert snapshot(run) == before


def test_pf_ode_nll_work_is_bounded(trained, monkeypatch):
    """A stiff field gives a 'did not converge' record instead of spinning (here: a budget of 2 steps)."""
    import dataclasses

    from difflab.experiments.toy2d.run import load_trained

    _, run = trained
    parts, model, _ = load_trained(str(run))
    den = toy_eval.NoGradDenoiser(model)
    ev = dataclasses.replace(parts.config.eval, nll=True, n_nll=8, nll_rtol=1e-5)
    parts.config = dataclasses.replace(parts.config, eval=ev)
    monkeypatch.setattr(toy_eval, "NLL_MAX_STEPS", 2)
    metrics = toy_eval.likelihood_metrics(parts, den)
    assert math.isnan(metrics["nll"]) and metrics["nll_status"].startswith("did not converge")
    monkeypatch.setattr(toy_eval, "NLL_MAX_STEPS", 2000)
    assert math.isfinite(toy_eval.likelihood_metrics(parts, den)["nll"])


def test_checkpoint_records_divergence(tmp_path):
    trainer = _trainer([1.0] * 30 + [1e4] * 100, total=130, run_dir=str(tmp_path))
    trainer.train()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["history"]["status"] == "diverged" and state["history"]["diverged_at"] == 30
