"""MLP backbone for low-dimensional data (seed 000's 2D model: 7 hidden layers of 512, ReLU)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from difflab.models.embeddings import SinusoidalEmbedding

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}
CONDITIONINGS = ("film", "concat")


class MLP(nn.Module):
    """(x_t, t) -> tensor shaped like x_t. No diffusion math: what the output means is the objective's.

    Time enters in one of three ways:

    - ``time_embed=False``: t is one extra scalar input (seed 000's default 2D model);
    - ``conditioning="concat"``: a sinusoidal embedding of t (through a linear layer) is concatenated with x_t
      (seed 000's ``t_embed``);
    - ``conditioning="film"`` (default): x_t enters the first layer alone and the embedding scales and shifts
      every hidden layer, h <- act(h (1 + gamma(t)) + beta(t)), gamma and beta linear in the embedding and
      zero at initialisation
      (feature-wise linear modulation, Perez et al. 2018; the scale-shift of Dhariwal & Nichol 2021).

    ``out_dim`` (default ``dim``) widens the output, e.g. for a mean and a variance head.

    Why FiLM is the default: on whitened data the v target is uncorrelated with x_t (Cov(v, x_t) =
    alpha sigma - sigma alpha = 0), so a network near its linear regime gets no first-order signal for v; with
    32 embedding inputs beside 2 data inputs, the concatenating MLP's hidden units barely see x_t at
    initialisation and v-prediction stalled at its trivial loss (measured: 0.998 vs 0.869 with FiLM and
    0.88 with raw t, 3x128 MLP, 1500 steps, mixture8), while eps-prediction learned with all three. In the
    default study (2000 steps) every target under NELBO weighting then reached KL < 0.06 nats on mixture8.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        layers: int = 4,
        time_embed: bool = True,
        embed_dim: int = 32,
        activation: str = "silu",
        conditioning: str = "film",
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        if layers < 1 or hidden < 1:
            raise ValueError("need layers >= 1 and hidden >= 1")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; valid: {', '.join(CONDITIONINGS)}")
        self.dim = dim
        self.act = ACTIVATIONS[activation]()
        self.film = time_embed and conditioning == "film"
        self.embed: nn.Module | None = None
        in_dim = dim + 1
        if time_embed:
            self.embed = nn.Sequential(SinusoidalEmbedding(embed_dim), nn.Linear(embed_dim, embed_dim))
            in_dim = dim if self.film else dim + embed_dim
        self.layers = nn.ModuleList(nn.Linear(in_dim if i == 0 else hidden, hidden) for i in range(layers))
        self.modulation = nn.ModuleList()
        if self.film:
            for _ in range(layers):
                mod = nn.Linear(embed_dim, 2 * hidden)  # from the embedding: cheap next to hidden^2
                nn.init.zeros_(mod.weight)
                nn.init.zeros_(mod.bias)
                self.modulation.append(mod)
        self.out = nn.Linear(hidden, dim if out_dim is None else out_dim)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        t = t.to(x_t.dtype)
        if self.film:
            emb = self.act(self.embed(t))  # type: ignore[misc]
            h = x_t
            for layer, mod in zip(self.layers, self.modulation, strict=True):
                scale, shift = mod(emb).chunk(2, dim=1)
                h = self.act(torch.addcmul(shift, layer(h), 1.0 + scale))  # layer(h) (1 + scale) + shift
            return self.out(h)
        cond = self.embed(t) if self.embed is not None else t[:, None]
        h = torch.cat([x_t, cond.to(x_t.dtype)], dim=1)
        for layer in self.layers:
            h = self.act(layer(h))
        return self.out(h)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
