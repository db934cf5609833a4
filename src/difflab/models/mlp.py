"""MLP backbone for low-dimensional data (seed 000's 2D model: 7 hidden layers of 512, ReLU)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from difflab.models.embeddings import SinusoidalEmbedding

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


class MLP(nn.Module):
    """(x_t, t) -> tensor shaped like x_t. No diffusion math: what the output means is the objective's.

    With ``time_embed`` the time passes through a sinusoidal embedding and a linear layer and is concatenated
    with x_t (seed 000's ``t_embed``); without it, t is one extra scalar input (seed 000's default model).
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        layers: int = 4,
        time_embed: bool = True,
        embed_dim: int = 32,
        activation: str = "silu",
    ) -> None:
        super().__init__()
        if layers < 1 or hidden < 1:
            raise ValueError("need layers >= 1 and hidden >= 1")
        act = ACTIVATIONS[activation]
        self.dim = dim
        if time_embed:
            self.embed: nn.Module | None = nn.Sequential(
                SinusoidalEmbedding(embed_dim), nn.Linear(embed_dim, embed_dim)
            )
            in_dim = dim + embed_dim
        else:
            self.embed = None
            in_dim = dim + 1
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Linear(in_dim if i == 0 else hidden, hidden), act()]
        blocks.append(nn.Linear(hidden, dim))
        self.body = nn.Sequential(*blocks)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        t = t.to(x_t.dtype)
        temb = self.embed(t) if self.embed is not None else t[:, None]
        return self.body(torch.cat([x_t, temb.to(x_t.dtype)], dim=1))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
