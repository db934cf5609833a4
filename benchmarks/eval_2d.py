"""Benchmark: where one 2D run's evaluation spends its time, and what the float32 network saves.

Trains (or loads, from ``--run``) the default study's mixture8 eps/NELBO arm and times, on one thread, in one
process, each part of :func:`difflab.experiments.toy2d.evaluate.evaluate_run` and of a learning-curve point,
with the network evaluated in float64 (the whole model cast, the behaviour before) and in float32 (the
precision it was trained in; the diffusion arithmetic stays float64). Prints seconds, the float64 / float32
ratio and the change of every recorded metric, so a speed-up that moves a number is seen in the same run.
Nothing is asserted.

    python benchmarks/eval_2d.py [--run RUN_DIR] [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from difflab.experiments.study.spec import apply_overrides, expand, load_study
from difflab.experiments.toy2d.curves import curve_evaluator
from difflab.experiments.toy2d.evaluate import NoGradDenoiser, likelihood_metrics, sample_metrics
from difflab.experiments.toy2d.run import load_trained, run_experiment


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def trained_run(steps: int) -> str:
    """A run directory of the default study's mixture8 eps/NELBO arm trained for ``steps`` steps."""
    from difflab.cli import BUILTIN_STUDIES

    study = apply_overrides(
        load_study("default", BUILTIN_STUDIES), [f"train.steps={steps}", "eval.curve_points=0"]
    )
    (spec,) = [s for s in expand(study) if s.run_id == "mixture8__eps__nelbo__s0"]
    run_dir = os.path.join(tempfile.mkdtemp(prefix="difflab-eval-bench-"), "run")
    run_experiment(spec.config, run_dir)
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finished toy2d run directory (default: train one)")
    parser.add_argument("--steps", type=int, default=300, help="training steps when no --run is given")
    args = parser.parse_args()
    torch.set_num_threads(1)
    parts, model, _ = load_trained(args.run or trained_run(args.steps), finished=True)
    rows: dict[str, dict[torch.dtype, float]] = {}
    metrics: dict[torch.dtype, dict[str, float]] = {}
    for dtype in (torch.float64, torch.float32):
        den = NoGradDenoiser(model, network_dtype=dtype)
        lik, t_lik = _timed(lambda: likelihood_metrics(parts, den))  # noqa: B023
        (smp, _), t_smp = _timed(lambda: sample_metrics(parts, den))  # noqa: B023
        evaluate = curve_evaluator(parts)
        _, t_curve = _timed(lambda: evaluate(model))  # noqa: B023 (the curve always uses the default dtype)
        rows.setdefault("likelihood (NELBO + PF-ODE NLL)", {})[dtype] = t_lik
        rows.setdefault("samples + sample metrics", {})[dtype] = t_smp
        rows.setdefault("one curve point", {})[dtype] = t_curve
        metrics[dtype] = {k: v for k, v in {**lik, **smp}.items() if isinstance(v, float)}
    print(f"{'part':34s} {'float64 s':>10s} {'float32 s':>10s} {'ratio':>7s}")
    for name, t in rows.items():
        t64, t32 = t[torch.float64], t[torch.float32]
        print(f"{name:34s} {t64:10.2f} {t32:10.2f} {t64 / t32:7.2f}")
    print("\nmetric changes, float32 network - float64 network:")
    for key in sorted(metrics[torch.float64]):
        a, b = metrics[torch.float64][key], metrics[torch.float32].get(key, float("nan"))
        print(f"  {key:24s} {a:12.6g} -> {b:12.6g}  (diff {b - a:+.2e})")


if __name__ == "__main__":
    main()
