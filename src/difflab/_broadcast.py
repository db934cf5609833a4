"""One helper to broadcast per-example coefficients onto a batch of data.

Every coefficient in difflab (alpha_t, sigma_t, weights, ...) is a tensor of shape ``(B,)``; data are
``(B, *dims)``. :func:`expand_like` reshapes ``(B,)`` to ``(B, 1, ..., 1)`` and casts to the data dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor


def expand_like(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a ``(B,)`` (or scalar) coefficient to broadcast against ``x`` of shape ``(B, *dims)``."""
    coef = torch.as_tensor(coef, device=x.device)
    if coef.ndim == 0:
        return coef.to(x.dtype)
    if coef.ndim != 1 or coef.shape[0] != x.shape[0]:
        raise ValueError(
            f"coefficient of shape {tuple(coef.shape)} does not match batch of shape {tuple(x.shape)}"
        )
    return coef.to(x.dtype).reshape(coef.shape[0], *([1] * (x.ndim - 1)))


def batch_time(t: float | Tensor, x: Tensor) -> Tensor:
    """Return t as a float64 tensor of shape ``(B,)`` for the batch ``x`` (a scalar is repeated)."""
    t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return t


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum over every dimension but the first."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def mean_except_batch(x: Tensor) -> Tensor:
    """Mean over every dimension but the first."""
    return x.reshape(x.shape[0], -1).mean(dim=1)
