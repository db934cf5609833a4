"""Time embeddings for backbones."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """Fourier features of a scalar time (Vaswani et al. 2017; Ho et al. 2020 use it on the step index).

    emb(t) = [sin(s t w_k), cos(s t w_k)],  w_k = exp(-log(10000) k / (half - 1)),  k = 0..half-1,
    with t in [0, 1] multiplied by ``scale`` (default 1000, the DDPM step-index range) so that continuous
    time keeps the resolution of integer steps. Time is never cast to an integer (seed 000's image model
    lost its time input that way).
    """

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"embedding dim must be an even number >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = float(scale)
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        arg = (self.scale * t.to(self.freqs.dtype))[:, None] * self.freqs[None]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
