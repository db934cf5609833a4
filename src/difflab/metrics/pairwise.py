"""Pairwise-distance machinery shared by the sample metrics: float64 (n, d) inputs, default generators,
subsampling without replacement, and squared distances in row blocks of at most ``CHUNK_ELEMS`` entries."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

#: Maximum number of pairwise entries held at once by the chunked kernels (32 MiB in float64).
CHUNK_ELEMS = 1 << 22



def as_f64(x: Tensor | np.ndarray) -> Tensor:
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.ndim != 2:
        raise ValueError(f"expected samples of shape (n, d), got {tuple(x.shape)}")
    return x


def default_generator(generator: torch.Generator | None, seed: int = 0) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(seed)


def subsample(x: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` rows of x without replacement (x itself when it has at most n rows)."""
    if x.shape[0] <= n:
        return x
    return x[torch.randperm(x.shape[0], generator=default_generator(generator))[:n]]


def sqdist_blocks(a: Tensor, b: Tensor, chunk_elems: int | None = None) -> Iterator[tuple[int, Tensor]]:
    """Yield (row offset, |a_i - b_j|^2 for a block of rows of a), at most ``chunk_elems`` entries each
    (default ``CHUNK_ELEMS``). Uses |a|^2 + |b|^2 - 2 a.b (clamped at 0): absolute error ~1e-16 |a|^2."""
    chunk_elems = CHUNK_ELEMS if chunk_elems is None else chunk_elems
    b_sq = (b * b).sum(1)
    rows = max(1, chunk_elems // max(1, b.shape[0]))
    for start in range(0, a.shape[0], rows):
        block = a[start : start + rows]
        sq = (block * block).sum(1)[:, None] + b_sq[None, :] - 2.0 * block @ b.T
        yield start, sq.clamp_min_(0.0)


__all__ = ["CHUNK_ELEMS", "as_f64", "default_generator", "sqdist_blocks", "subsample"]
