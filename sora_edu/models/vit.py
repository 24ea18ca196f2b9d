"""Vision Transformer: "An Image is Worth 16x16 Words" (Dosovitskiy et al., arXiv 2010.11929).

An image is cut into patches, each patch becomes a token, and a stack of pre-norm
transformer blocks mixes them; a classifier reads the mean token. The blocks here are
reused by every transformer in the course (ViViT, NaViT, DiT, the text encoder).

Layouts: image ``(B, C, H, W)``; tokens ``(B, N, D)``; attention weights ``(B, heads, N, N)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ..patches import PatchEmbed, grid_size, sincos_2d


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``scaled_dot_product_attention``; on the CPU its half-precision inputs are computed in
    fp32, autocast or not: PyTorch's CPU flash-attention backward is 3.6-4.5x slower in bf16
    than in fp32 (forward + backward 30.0 vs 6.6 ms for 64 x 4 heads x 80 tokens;
    ``benchmarks/attention.py``), and a bf16-mixed step keeps bf16 everywhere else. Output in
    ``q``'s dtype."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    dtype = q.dtype
    q, k, v = (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t for t in (q, k, v))
    with torch.autocast("cpu", enabled=False):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).to(dtype)


class Attention(nn.Module):
    """Multi-head self-attention. ``forward`` uses ``scaled_dot_product_attention`` (the
    fused fast path); ``weights=True`` computes the same thing by hand and also returns
    the attention map, for pictures and for the test that the two agree.

    ``mask``: bool, broadcastable to ``(B, heads, N, N)``, True = may attend.
    ``qk_norm`` normalises queries and keys (stabler in half precision; Open-Sora uses it).
    """

    def __init__(self, dim: int, heads: int = 4, qk_norm: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        head_dim = dim // heads
        self.q_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, weights: bool = False):
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if weights:
            scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, heads, N, N)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            attn = scores.softmax(dim=-1)
            out = attn @ v
        else:
            out = attend(q, k, v, mask)
        out = self.proj(rearrange(out, "b h n d -> b n (h d)"))
        return (out, attn) if weights else out


class Mlp(nn.Sequential):
    def __init__(self, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        hidden = int(dim * mlp_ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                         nn.Linear(hidden, dim), nn.Dropout(dropout))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

    ``dropout`` regularises the residual branches (small data: ViT's paper used 0.1).
    """

    def __init__(self, dim: int, heads: int = 4, mlp_ratio: float = 4.0, qk_norm: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qk_norm)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, weights: bool = False):
        if weights:
            a, attn = self.attn(self.norm1(x), mask, weights=True)
            x = x + self.drop(a)
            return x + self.mlp(self.norm2(x)), attn
        x = x + self.drop(self.attn(self.norm1(x), mask))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small ViT classifier for ``(B, C, H, W)`` images of any size the patch divides.

    Positions are fixed 2D sin-cos features of the patch grid (computed for the input's
    size, so the same model runs at other resolutions); the image representation is
    the mean of the final tokens (as in later ViT work; a CLS token works the same).
    """

    def __init__(self, num_classes: int = 10, patch_size: int = 2, in_channels: int = 1, dim: int = 64,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0, qk_norm: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed = PatchEmbed(patch_size, in_channels, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qk_norm, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens plus positions: ``(B, h*w, dim)``."""
        h, w = grid_size(x.shape[-2:], self.patch_size)
        tokens = self.embed(x)
        return tokens + sincos_2d(h, w, tokens.shape[-1]).to(tokens)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled image features ``(B, dim)``."""
        tokens = self.tokens(x)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, C, H, W)`` -> logits ``(B, num_classes)``."""
        return self.head(self.features(x))

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of every layer, each ``(B, heads, N, N)``."""
        tokens, maps = self.tokens(x), []
        for block in self.blocks:
            tokens, attn = block(tokens, weights=True)
            maps.append(attn)
        return maps
