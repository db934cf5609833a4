"""Where the learned-variance DDPM baseline of ``score-sde-gmm`` loses likelihood, by training budget.

For each budget (steps), trains the preset's ``lv_ddpm`` run and splits its discrete NELBO (nats/dim, 1000
held-out points of ``mixture8``) into the prior term, L_0 (the decoder), the first reverse step i = T, and the
rest; then the same chain with the exact Bayes eps of the data law and (a) the model's learned variance,
(b) the fixed posterior variance beta_tilde, (c) the fixed beta. (a) near the true NLL means the variance head
is trained and the gap is the mean's eps error. Prints the figures; nothing is asserted.

    python benchmarks/lv_ddpm_terms.py [STEPS ...]        (default: 2000 8000)
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable

import torch

from difflab.cli import BUILTIN_STUDIES
from difflab.data.toy2d import make_toy2d
from difflab.experiments.study.spec import expand, load_study
from difflab.experiments.toy2d.baselines import build_baseline, train_lv_ddpm
from difflab.experiments.toy2d.run import validate_config

Predict = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def nelbo_terms(model, x0: torch.Tensor, predict: Predict, seed: int = 5) -> dict[str, float]:
    """The discrete NELBO per dimension and its parts, one x_i draw per step (fixed generator)."""
    g = torch.Generator().manual_seed(seed)
    x0 = x0.double()
    B, D = x0.shape
    abar_T = float(model.chain.alpha_bar[-1])
    prior = 0.5 * ((1 - abar_T) + abar_T * x0.square() - 1 - math.log(1 - abar_T)).sum(-1)
    per = []
    for step in range(1, model.T + 1):
        i = torch.full((B,), step, dtype=torch.long)
        x_i = model.q_sample(x0, i, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        eps_hat, v = predict(x_i, i)
        per.append(model.vlb_terms(x0, x_i, i, eps_hat.double(), v.double()))
    terms = torch.stack(per)  # (T, B)
    total = (prior + terms.sum(0)) / D
    return {
        "nelbo": float(total.mean()),
        "se": float(total.std() / math.sqrt(B)),
        "L0": float(terms[0].mean() / D),
        "L_T": float(terms[-1].mean() / D),
        "rest": float(terms[1:-1].sum(0).mean() / D),
    }


def report_budget(spec, steps: int) -> None:
    """Train the preset's lv_ddpm run for ``steps`` steps and print its NELBO split and the exact-eps rows."""
    raw = copy.deepcopy(spec.config)
    raw["train"]["steps"] = steps
    config = validate_config(raw)
    d = config.data
    data = make_toy2d(d.name, d.n_train, d.n_test, d.seed)
    torch.manual_seed(config.train.seed)
    model = build_baseline(config, 2)
    start = time.perf_counter()
    train_lv_ddpm(model, data.train.float(), config)
    seconds = time.perf_counter() - start
    model = model.double().eval()
    bayes = data.law.denoiser(model.chain)

    def exact(x_i: torch.Tensor, i: torch.Tensor, v_of: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        x0_hat = bayes(x_i, i.double() / model.T)
        eps = (x_i - model._coef("sqrt_abar", i, x_i) * x0_hat) / model._coef("sqrt_1m_abar", i, x_i)
        return eps, v_of(x_i, i)

    rows = {
        "model": model,
        "exact eps, model variance": lambda a, i: exact(a, i, lambda a, i: model(a, i)[1]),
        "exact eps, beta_tilde": lambda a, i: exact(a, i, lambda a, i: -torch.ones_like(a)),
        "exact eps, beta": lambda a, i: exact(a, i, lambda a, i: torch.ones_like(a)),
    }
    x = data.test[:1000]
    nll = float(-data.law.log_prob(x.double()).mean() / 2)
    print(f"steps {steps} (trained in {seconds:.0f} s), nats/dim, true NLL on these points {nll:.4f}")
    with torch.no_grad():
        for name, predict in rows.items():
            r = nelbo_terms(model, x, predict)
            print(f"  {name:28s} " + "  ".join(f"{k} {v:.4f}" for k, v in r.items()), flush=True)


def main() -> None:
    budgets = [int(a) for a in sys.argv[1:]] or [2000, 8000]
    torch.set_num_threads(2)
    (spec,) = [s for s in expand(load_study("score-sde-gmm", BUILTIN_STUDIES)) if s.run_id == "lv_ddpm"]
    for steps in budgets:
        report_budget(spec, steps)


if __name__ == "__main__":
    main()
