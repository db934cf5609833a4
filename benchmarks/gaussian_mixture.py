"""Speed of the Gaussian-mixture closed forms: the axis-aligned fast path against the general eigenbasis path.

Usage::

    python benchmarks/gaussian_mixture.py [--n 2000] [--repeat 5]

For mixture8 (8 components) and swiss_roll (its 4096-node quadrature, ``difflab.data.toy2d``), z-scored, it
times ``log_prob`` at t = 0 and the Bayes denoiser at one (alpha, sigma) for a batch of n points (what one
step of an oracle sampler asks for), once with the fast path and once with it switched off on the same
object, and prints the seconds and the ratio general / fast (higher is better), with the largest difference
of the two results (rounding only).
"""

from __future__ import annotations

import argparse
import time

import torch

from difflab.data.toy2d import make_toy2d


def _best(fn, repeat: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    assert out is not None
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    x = torch.randn(args.n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    print(f"n = {args.n}, threads = {torch.get_num_threads()}, best of {args.repeat}")
    header = f"{'law':12s} {'K':>5s} {'call':10s} {'fast s':>9s} {'general s':>10s}"
    print(f"{header} {'ratio':>7s} {'max diff':>9s}")
    for name in ("mixture8", "swiss_roll"):
        law = make_toy2d(name, 0, 0).law
        assert law is not None
        calls = {
            "log_prob": lambda law=law: law.log_prob_at(x),
            "denoise": lambda law=law: law.denoise_at(x, 0.8, 0.6),
        }
        for call, fn in calls.items():
            law._diagonal = True
            fast, a = _best(fn, args.repeat)
            law._diagonal = False
            general, b = _best(fn, args.repeat)
            law._diagonal = True
            diff = float((a - b).abs().max())
            print(
                f"{name:12s} {law.num_components:5d} {call:10s} {fast:9.4f} {general:10.4f} "
                f"{general / fast:7.1f} {diff:9.1e}"
            )


if __name__ == "__main__":
    main()
