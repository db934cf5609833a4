"""Speed of the Gaussian-mixture closed forms: the matrix-product fast paths against the general path.

Usage::

    python benchmarks/gaussian_mixture.py [--n 2000] [--repeat 5]

For mixture8 (8 components) and swiss_roll (its 4096-node quadrature, ``difflab.data.toy2d``), z-scored, it
times ``log_prob`` at t = 0 and the Bayes denoiser at one (alpha, sigma) for a batch of n points (what one
step of an oracle sampler asks for), once with the fast path and once with it switched off on the same
object, and prints the seconds and the ratio general / fast (higher is better), with the largest difference
of the two results (rounding only). A third law, ``ring_rank1``, is a quadrature of the ring set (2 x 2048
rank-one components N(c + 4u, 0.04 u u^T), not axis-aligned, valid for logsnr <= 8), timed at logsnr 4: its
fast path is the full-precision one (``FAST_FULL_MAX_DIM``).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import difflab.data.gaussian as gaussian
from difflab.data.gaussian import GaussianMixture
from difflab.data.toy2d import make_toy2d


def _ring_rank1(nodes: int = 2048) -> GaussianMixture:
    theta = 2 * math.pi * torch.arange(nodes, dtype=torch.float64) / nodes
    u = torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    centres = [torch.tensor([c, 0.0], dtype=torch.float64) for c in (0.0, 5.0)]
    means = torch.cat([c + 4.0 * u for c in centres])
    covs = (0.04 * u[:, :, None] * u[:, None, :]).repeat(2, 1, 1)
    return GaussianMixture(torch.ones(2 * nodes), means, covs, max_logsnr=8.0)


def _set_fast(law: GaussianMixture, diagonal: bool, on: bool) -> None:
    law._diagonal = diagonal and on
    gaussian.FAST_FULL_MAX_DIM = 8 if on else 0


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
    a4 = math.sqrt(1 / (1 + math.exp(-4.0)))
    laws = {name: make_toy2d(name, 0, 0).law for name in ("mixture8", "swiss_roll")}
    laws["ring_rank1"] = _ring_rank1()
    for name, law in laws.items():
        assert law is not None
        diagonal = law._diagonal
        if diagonal:
            calls = {
                "log_prob": lambda law=law: law.log_prob_at(x),
                "denoise": lambda law=law: law.denoise_at(x, 0.8, 0.6),
            }
        else:  # a quadrature of degenerate components has no density at t = 0
            calls = {
                "log_prob": lambda law=law: law.log_prob_at(x, a4, math.sqrt(1 - a4**2)),
                "denoise": lambda law=law: law.denoise_at(x, a4, math.sqrt(1 - a4**2)),
            }
        for call, fn in calls.items():
            _set_fast(law, diagonal, True)
            fast, a = _best(fn, args.repeat)
            _set_fast(law, diagonal, False)
            general, b = _best(fn, args.repeat)
            _set_fast(law, diagonal, True)
            diff = float((a - b).abs().max())
            print(
                f"{name:12s} {law.num_components:5d} {call:10s} {fast:9.4f} {general:10.4f} "
                f"{general / fast:7.1f} {diff:9.1e}"
            )


if __name__ == "__main__":
    main()
