"""A compact DDPM-style UNet backbone mapping ``(x_t, t) -> tensor of the same shape as x_t``.

The architecture follows Ho et al. (2020, "Denoising Diffusion Probabilistic Models") / the improved-DDPM
UNet: a sinusoidal embedding of the continuous time ``t in [0, 1]`` (scaled by 1000 so that the frequencies
match the usual 1000-step integer embedding, but *never* rounded), an MLP ``Linear-SiLU-Linear``, residual
blocks ``GroupNorm-SiLU-Conv`` into which the time embedding is added (or applied as a scale/shift),
multi-head self-attention at chosen resolutions, strided-conv downsampling, nearest-neighbour upsampling and
skip connections. Inputs whose spatial size is not a multiple of ``2 ** (len(channel_mults) - 1)`` (e.g. 28x28
MNIST with four levels) are padded internally (replicate) and cropped back.

There is no diffusion math here: what the output means (noise, x0, velocity, score, ...) is up to the
objective that trains it. The final convolution is zero-initialised, so a fresh model outputs zeros.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNet", "timestep_embedding"]

TIME_SCALE = 1000.0


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, scale: float = TIME_SCALE) -> Tensor:
    """Sinusoidal embedding of continuous times.

    ``emb(t) = [sin(s t w_0), ..., sin(s t w_{h-1}), cos(s t w_0), ..., cos(s t w_{h-1})]`` with
    ``w_i = max_period ** (-i / h)``, ``h = dim // 2``, ``s = scale`` (Vaswani et al. 2017; Ho et al. 2020).
    An odd ``dim`` is zero-padded by one column.

    Args:
        t: float tensor ``(B,)``.
    Returns:
        float32 tensor ``(B, dim)``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.to(torch.float32) * scale)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResBlock(nn.Module):
    """Residual block: ``h = Conv(SiLU(GN(x)))``; ``h = GN(h + Linear(SiLU(emb)))`` (or
    ``GN(h) * (1 + scale) + shift``); ``h = Conv(Dropout(SiLU(h)))``; returns ``skip(x) + h``."""

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int, scale_shift: bool
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip: nn.Module = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(F.silu(emb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the ``H*W`` positions with a pre-GroupNorm and a residual connection."""

    def __init__(self, channels: int, num_heads: int, groups: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, d)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """DDPM-style UNet ``(x_t (B,C,H,W), t (B,) in [0,1]) -> (B,C,H,W)``.

    Args:
        in_channels: image channels (also the output channels).
        channels: base width; level ``i`` has ``channels * channel_mults[i]`` channels.
        channel_mults: width multipliers, one per resolution level (``len - 1`` downsamplings).
        num_res_blocks: residual blocks per level on the way down (``+1`` on the way up).
        attn_resolutions: (internal, i.e. padded) spatial sizes at which self-attention is applied.
        dropout: dropout inside residual blocks.
        image_size: nominal input size, used only to place attention blocks; other sizes still work.
        time_embed_dim: width of the time-embedding MLP (default ``4 * channels``).
        groups: GroupNorm groups (reduced to ``gcd(groups, width)`` where needed).
        num_heads: attention heads.
        scale_shift: use FiLM-style ``GN(h) * (1 + scale) + shift`` instead of adding the embedding.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        image_size: int = 32,
        time_embed_dim: int | None = None,
        groups: int = 8,
        num_heads: int = 1,
        scale_shift: bool = False,
    ) -> None:
        super().__init__()
        if not channel_mults:
            raise ValueError("channel_mults must not be empty")
        self.in_channels = in_channels
        self.channels = channels
        self.channel_mults = tuple(int(m) for m in channel_mults)
        self.num_res_blocks = num_res_blocks
        self.attn_resolutions = tuple(int(r) for r in attn_resolutions)
        self.image_size = image_size
        self.factor = 2 ** (len(self.channel_mults) - 1)
        emb_dim = time_embed_dim or 4 * channels
        self.time_embed_dim = emb_dim

        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)

        res = self._padded(image_size)
        ch = channels
        skip_chs = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(self.channel_mults):
            out_ch = channels * mult
            for _ in range(num_res_blocks):
                blocks = nn.ModuleList([ResBlock(ch, out_ch, emb_dim, dropout, groups, scale_shift)])
                if res in self.attn_resolutions:
                    blocks.append(AttnBlock(out_ch, num_heads, groups))
                self.down.append(blocks)
                ch = out_ch
                skip_chs.append(ch)
            if level != len(self.channel_mults) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skip_chs.append(ch)
                res //= 2

        self.mid = nn.ModuleList(
            [
                ResBlock(ch, ch, emb_dim, dropout, groups, scale_shift),
                AttnBlock(ch, num_heads, groups),
                ResBlock(ch, ch, emb_dim, dropout, groups, scale_shift),
            ]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(self.channel_mults))):
            out_ch = channels * mult
            for i in range(num_res_blocks + 1):
                blocks = nn.ModuleList(
                    [ResBlock(ch + skip_chs.pop(), out_ch, emb_dim, dropout, groups, scale_shift)]
                )
                ch = out_ch
                if res in self.attn_resolutions:
                    blocks.append(AttnBlock(ch, num_heads, groups))
                if level != 0 and i == num_res_blocks:
                    blocks.append(Upsample(ch))
                    res *= 2
                self.up.append(blocks)
        assert not skip_chs

        self.norm_out = _norm(ch, groups)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _padded(self, size: int) -> int:
        return -(-size // self.factor) * self.factor

    @staticmethod
    def _run(blocks: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for block in blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return h

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Map ``x_t`` ``(B, C, H, W)`` and continuous times ``t`` ``(B,)`` (or scalar) to the same shape."""
        if x_t.ndim != 4 or x_t.shape[1] != self.in_channels:
            raise ValueError(f"expected x_t of shape (B, {self.in_channels}, H, W), got {tuple(x_t.shape)}")
        t = torch.as_tensor(t, device=x_t.device)
        if not torch.is_floating_point(t):
            raise TypeError(f"t must be a floating-point tensor of continuous times in [0, 1], got {t.dtype}")
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"t must have shape ({x_t.shape[0]},), got {tuple(t.shape)}")

        H, W = x_t.shape[-2:]
        ph, pw = self._padded(H) - H, self._padded(W) - W
        if ph or pw:
            x_t = F.pad(x_t, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")

        emb = self.time_mlp(timestep_embedding(t, self.channels).to(x_t.dtype))
        h = self.conv_in(x_t)
        skips = [h]
        for blocks in self.down:
            h = self._run(blocks, h, emb)
            skips.append(h)
        h = self._run(self.mid, h, emb)
        for blocks in self.up:
            h = self._run(blocks, torch.cat([h, skips.pop()], dim=1), emb)
        out = self.conv_out(F.silu(self.norm_out(h)))

        if ph or pw:
            out = out[:, :, ph // 2 : ph // 2 + H, pw // 2 : pw // 2 + W]
        return out

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (all, or only those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def describe(self) -> str:
        """One-line summary including the parameter count."""
        return (
            f"UNet(in_channels={self.in_channels}, channels={self.channels}, mults={self.channel_mults}, "
            f"res_blocks={self.num_res_blocks}, attn={self.attn_resolutions}, image_size={self.image_size}, "
            f"time_embed_dim={self.time_embed_dim}): {self.num_parameters():,} parameters"
        )
