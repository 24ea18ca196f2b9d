"""The diffusion transformer (DiT) and its spacetime version over video latents.

DiT ("Scalable Diffusion Models with Transformers", Peebles & Xie, arXiv 2212.09748)
replaces the U-Net by a plain transformer over latent patches and compares four ways
of feeding it the condition (the noise level ``t`` and a class or text):

* ``"in_context"``: the condition becomes extra tokens in the sequence;
* ``"cross_attn"``: every block cross-attends to the condition tokens;
* ``"adaln"``: the condition vector regresses each LayerNorm's scale and shift;
* ``"adaln_zero"``: the same plus a per-channel *gate* on each residual branch,
  initialised to zero, so every block starts as the identity (the paper's best).

The **spacetime DiT** is what Sora's report describes: a video's latent is cut into
spacetime patches (:class:`~sora_edu.patches.TubeletEmbed`), each patch is a token with a
fixed 3D sin-cos position computed for the grid at hand, so one model takes any (T, H, W)
latent the patch divides. Attention is ``"full"`` over all spacetime tokens, or
``"factorised"`` (Latte, arXiv 2401.03048): blocks alternate between attending within a
frame and attending across time at one place (cheaper at long lengths).
Text conditions it twice, as in PixArt-alpha and W.A.L.T (arXiv 2312.06662): the pooled
text joins ``t`` in the adaLN vector, and the per-token text is cross-attended.

Layouts: latents ``x (B, C, T, H, W)``; times ``t (B,)`` float; conditions ``None``,
class labels ``(B,)`` long (``num_classes`` = the null label), or text
``{"ids": (B, L) long, "mask": (B, L) bool}`` (the empty prompt is the null text).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ..diffusion.embedding import TimestepEmbedder
from ..patches import TubeletEmbed, grid_coords, grid_size, patch_tuple, sincos_coords, unpatchify
from .text import TextEncoder, text_inputs
from .vit import Attention, Mlp, attend

CONDITIONINGS = ("in_context", "cross_attn", "adaln", "adaln_zero")
# Widths, depths and heads: the toy CPU model, then DiT's S / B / L / XL (arXiv 2212.09748, Table 1).
SIZES: dict[str, dict[str, int]] = {
    "toy": {"dim": 128, "depth": 6, "heads": 4},
    "S": {"dim": 384, "depth": 12, "heads": 6},
    "B": {"dim": 768, "depth": 12, "heads": 12},
    "L": {"dim": 1024, "depth": 24, "heads": 16},
    "XL": {"dim": 1152, "depth": 28, "heads": 16},
}
ATTENTIONS = ("full", "factorised")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x (B, N, D) * (1 + scale) + shift`` with per-sample ``(B, D)`` vectors."""
    return x * (1 + scale[:, None]) + shift[:, None]


class CrossAttention(nn.Module):
    """Queries from the video tokens ``x (B, N, D)``, keys and values from ``context (B, L,
    D)``; ``mask (B, L)`` bool, True = a real context token."""

    def __init__(self, dim: int, heads: int = 4, qk_norm: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q = self.q_norm(rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads))
        k, v = rearrange(self.kv(context), "b l (two h d) -> two b h l d", two=2, h=self.heads)
        out = attend(q, self.k_norm(k), v, None if mask is None else mask[:, None, None, :])
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class DiTBlock(nn.Module):
    """One DiT block with the given ``conditioning``, optionally with cross-attention to a
    context (``cross_attention=True``; always on for ``"cross_attn"``).

    ``forward(x (B, N, D), c (B, D), context (B, L, D) | None, context_mask (B, L) | None,
    groups, mask)``: ``groups`` reshapes the sequence for attention only, e.g. ``"b (t s) d ->
    (b t) s d"`` for attention within frames (and back); ``mask`` (bool, broadcastable to
    ``(B, heads, N, N)``) hides padded keys from self-attention (in-context text).
    """

    def __init__(self, dim: int, heads: int = 4, mlp_ratio: float = 4.0, conditioning: str = "adaln_zero",
                 cross_attention: bool = False, qk_norm: bool = False) -> None:
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        self.conditioning = conditioning
        adaptive = conditioning.startswith("adaln")
        # Under adaLN the norms' affine parameters come from the condition instead.
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=not adaptive, eps=1e-6)
        self.attn = Attention(dim, heads, qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=not adaptive, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        self.cross = None
        if cross_attention or conditioning == "cross_attn":
            self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
            self.cross = CrossAttention(dim, heads, qk_norm)
        if adaptive:
            chunks = 6 if conditioning == "adaln_zero" else 4
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, chunks * dim))
            # Zero: scales and shifts start at 0 (plain LayerNorm) and, for adaLN-Zero, the
            # gates too, so the block starts as the identity.
            nn.init.zeros_(self.adaLN_modulation[-1].weight)
            nn.init.zeros_(self.adaLN_modulation[-1].bias)
        if self.cross is not None and conditioning == "adaln_zero":
            # The cross-attention branch joins the identity-at-init rule: zero output projection.
            nn.init.zeros_(self.cross.proj.weight)
            nn.init.zeros_(self.cross.proj.bias)

    def _attend(self, h: torch.Tensor, groups: tuple[str, str, dict] | None, mask: torch.Tensor | None = None) -> torch.Tensor:
        if groups is None:
            return self.attn(h, mask)
        split, merge, sizes = groups
        return rearrange(self.attn(rearrange(h, split, **sizes)), merge, **sizes)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, groups=None, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditioning == "adaln_zero":
            shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        elif self.conditioning == "adaln":
            shift1, scale1, shift2, scale2 = self.adaLN_modulation(c).chunk(4, dim=-1)
            gate1 = gate2 = None
        h = self.norm1(x)
        if self.conditioning.startswith("adaln"):
            h = modulate(h, shift1, scale1)
        h = self._attend(h, groups, mask)
        x = x + (gate1[:, None] * h if self.conditioning == "adaln_zero" else h)
        if self.cross is not None and context is not None:
            x = x + self.cross(self.norm_cross(x), context, context_mask)
        h = self.norm2(x)
        if self.conditioning.startswith("adaln"):
            h = modulate(h, shift2, scale2)
        h = self.mlp(h)
        return x + (gate2[:, None] * h if self.conditioning == "adaln_zero" else h)


class FinalLayer(nn.Module):
    """Norm (adaptive under adaLN), then a zero-initialised linear map to patch values (DiT
    zero-initialises it too: the untrained model predicts 0, a safe start for every target)."""

    def __init__(self, dim: int, out: int, adaptive: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=not adaptive, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim)) if adaptive else None
        self.linear = nn.Linear(dim, out)
        for layer in [self.linear] + ([self.adaLN_modulation[-1]] if adaptive else []):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        if self.adaLN_modulation is not None:
            shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
            h = modulate(h, shift, scale)
        return self.linear(h)


class SpacetimeDiT(nn.Module):
    """A DiT over spacetime patches of video latents ``(B, C, T, H, W)``; ``T = 1`` is an image.

    Args:
        in_channels: latent channels ``C``.
        patch_size: ``(pt, ph, pw)`` spacetime patch; the latent's ``(T, H, W)`` must be
            multiples of it (any such size works: positions are computed per grid).
        dim, depth, heads, mlp_ratio: transformer width, blocks, heads, MLP expansion.
        conditioning: one of :data:`CONDITIONINGS` (DiT's four variants).
        attention: ``"full"`` spacetime attention or ``"factorised"`` (space, time, space, ...).
        num_classes: class-conditional with this many classes (plus a null label), or None.
        vocab_size: text-conditional with a :class:`~sora_edu.models.text.TextEncoder` over
            this vocabulary (trained jointly), or None. At most one of the two.
        text_dim, text_depth: the text encoder's width and depth.
        text_cross_attention: cross-attend to the text tokens (else pooled text in adaLN only).
        head: ``"linear"`` (DiT: each token's output is a linear map to its patch) or
            ``"conv"`` (U-ViT, arXiv 2209.12152: the linear map gives ``head_channels``
            features per latent position, then two 3x3 convolutions that also see the noisy
            input ``x_t`` smooth patch seams and carry the noise through; negligible FLOPs).
        qk_norm: normalise queries and keys (stabler in bf16, as Open-Sora found).
        extra_channels: input channels beyond the latent's (the output keeps ``in_channels``):
            notebook 09's frame conditioning feeds the given frames' mask this way.
        activation_checkpointing: recompute each block's activations in the backward pass
            instead of storing them (~1/3 more compute, a fraction of the memory: for L/XL sizes).
    """

    def __init__(self, in_channels: int = 8, patch_size: Sequence[int] = (1, 2, 2), dim: int = 128, depth: int = 6,
                 heads: int = 4, mlp_ratio: float = 4.0, conditioning: str = "adaln_zero", attention: str = "full",
                 num_classes: int | None = None, vocab_size: int | None = None, text_dim: int = 128,
                 text_depth: int = 2, text_cross_attention: bool = True, head: str = "linear", head_channels: int = 32,
                 qk_norm: bool = False, extra_channels: int = 0, activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.extra_channels = extra_channels
        self.activation_checkpointing = activation_checkpointing
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        if conditioning == "in_context" and attention == "factorised":
            raise ValueError("in-context conditioning needs full attention (condition tokens belong to no frame)")
        if num_classes is not None and vocab_size is not None:
            raise ValueError("condition on classes or on text, not both")
        self.in_channels, self.dim, self.conditioning, self.attention = in_channels, dim, conditioning, attention
        self.patch_size = patch_tuple(tuple(patch_size), 3)
        self.num_classes = num_classes
        self.embed = TubeletEmbed(self.patch_size, in_channels + extra_channels, dim)
        self.t_embed = TimestepEmbedder(dim)
        self.label_embed = nn.Embedding(num_classes + 1, dim) if num_classes is not None else None
        self.text = None
        # Text is cross-attended under adaLN (cross_attn attends to it anyway; in-context has it in the sequence).
        cross = vocab_size is not None and text_cross_attention and conditioning.startswith("adaln")
        self.text_tokens = None
        if vocab_size is not None:
            self.text = TextEncoder.of_width(vocab_size, text_dim, text_depth)
            if cross or not conditioning.startswith("adaln"):  # per-token text is used (else pooled only)
                self.text_tokens = nn.Linear(text_dim, dim)
            self.text_pooled = nn.Sequential(nn.Linear(text_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(
            DiTBlock(dim, heads, mlp_ratio, conditioning, cross_attention=cross, qk_norm=qk_norm) for _ in range(depth))
        if head not in ("linear", "conv"):
            raise ValueError(f"head must be 'linear' or 'conv', got {head!r}")
        out = in_channels if head == "linear" else head_channels
        self.final = FinalLayer(dim, math.prod(self.patch_size) * out, conditioning.startswith("adaln"))
        self.head = None
        if head == "conv":
            self.head = nn.Sequential(nn.Conv3d(head_channels + in_channels + extra_channels, head_channels, (1, 3, 3), padding=(0, 1, 1)),
                                      nn.SiLU(), nn.Conv3d(head_channels, in_channels, (1, 3, 3), padding=(0, 1, 1)))
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)
        self._positions: dict[tuple[int, int, int], torch.Tensor] = {}

    # --- pieces -----------------------------------------------------------------------------

    @property
    def size_multiple(self) -> int:
        """Latent height and width must be multiples of this: whole patches both ways."""
        return math.lcm(*self.patch_size[1:])

    def positions(self, t: int, h: int, w: int) -> torch.Tensor:
        """Fixed 3D sin-cos positions ``(t*h*w, dim)`` of a patch grid (cached per grid)."""
        key = (t, h, w)
        if key not in self._positions:
            self._positions[key] = sincos_coords(grid_coords(t, h, w), self.dim)
        return self._positions[key]

    def check_latents(self, x: torch.Tensor) -> tuple[int, int, int]:
        channels = self.in_channels + self.extra_channels
        if x.ndim != 5 or x.shape[1] != channels:
            extra = f" (+{self.extra_channels} conditioning)" if self.extra_channels else ""
            raise ValueError(f"expected latents (B, {self.in_channels}{extra}, T, H, W), got shape {tuple(x.shape)}")
        return grid_size(x.shape[-3:], self.patch_size)

    def condition(self, t: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``c (B, D)`` for adaLN and the condition tokens ``(B, L, D)`` with their mask:
        the time token first, then the class token or the text tokens."""
        c = self.t_embed(t)
        tokens, mask = [c[:, None]], [torch.ones(len(t), 1, dtype=torch.bool, device=t.device)]
        if self.label_embed is not None:
            if cond is None or not isinstance(cond, torch.Tensor) or cond.shape != t.shape:
                raise ValueError(f"this DiT is class-conditional: expected labels (B,) = {tuple(t.shape)}, got "
                                 f"{type(cond).__name__ if not isinstance(cond, torch.Tensor) else tuple(cond.shape)}")
            y = self.label_embed(cond)
            c = c + y
            tokens.append(y[:, None])
            mask.append(mask[0])
        elif self.text is not None:
            ids, text_mask = text_inputs(cond, "DiT")
            words, pooled = self.text(ids, text_mask)
            c = c + self.text_pooled(pooled)
            if self.text_tokens is not None:
                tokens.append(self.text_tokens(words))
                mask.append(text_mask)
        elif cond is not None:
            raise ValueError("this DiT is unconditional: pass cond=None")
        return c, torch.cat(tokens, dim=1), torch.cat(mask, dim=1)

    # --- forward ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None, attention_maps: bool = False):
        """``x (B, C, T, H, W)``, ``t (B,)``, ``cond`` -> prediction of the same shape as ``x``."""
        gt, gh, gw = self.check_latents(x)
        if t.ndim != 1 or len(t) != len(x):
            raise ValueError(f"expected times t (B,) = ({len(x)},), got shape {tuple(t.shape)}")
        h = self.embed(x) + self.positions(gt, gh, gw).to(x.device, x.dtype)
        c, ctx, ctx_mask = self.condition(t, cond)
        n = h.shape[1]
        if self.conditioning == "in_context":
            h = torch.cat([ctx, h], dim=1)
            # Condition tokens attend to everything real; padding is never attended.
            key_mask = torch.cat([ctx_mask, torch.ones(len(h), n, dtype=torch.bool, device=h.device)], dim=1)
        text_ctx, text_mask = None, None
        if self.conditioning == "cross_attn":
            text_ctx, text_mask = ctx, ctx_mask
        elif self.text is not None and self.blocks[0].cross is not None:
            text_ctx, text_mask = ctx[:, 1:], ctx_mask[:, 1:]
        mask = key_mask[:, None, None, :] if self.conditioning == "in_context" else None
        maps = []
        for i, block in enumerate(self.blocks):
            groups = self._groups(i, gt, gh, gw)
            if attention_maps:
                maps.append(self._attention_map(block, h, c, groups, mask))
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                h = checkpoint(block, h, c, text_ctx, text_mask, groups, mask, use_reentrant=False)
            else:
                h = block(h, c, text_ctx, text_mask, groups, mask)
        h = h[:, -n:]
        out = unpatchify(self.final(h, c), self.patch_size, x.shape[-3:])
        if self.head is not None:
            out = self.head(torch.cat([out, x], dim=1))
        return (out, maps) if attention_maps else out

    def _groups(self, i: int, gt: int, gh: int, gw: int):
        if self.attention == "full":
            return None
        sizes = {"t": gt, "s": gh * gw}
        if i % 2 == 0:  # spatial: the tokens of one frame attend to each other
            return "b (t s) d -> (b t) s d", "(b t) s d -> b (t s) d", sizes
        return "b (t s) d -> (b s) t d", "(b s) t d -> b (t s) d", sizes  # temporal

    @torch.no_grad()
    def _attention_map(self, block: DiTBlock, h, c, groups, mask=None) -> torch.Tensor:
        y = block.norm1(h)
        if block.conditioning.startswith("adaln"):
            chunks = 6 if block.conditioning == "adaln_zero" else 4
            shift, scale = block.adaLN_modulation(c).chunk(chunks, dim=-1)[:2]
            y = modulate(y, shift, scale)
        if groups is not None:
            y = rearrange(y, groups[0], **groups[2])
        return block.attn(y, mask, weights=True)[1].mean(1)  # (B', N', N'), averaged over heads

    # --- cost -------------------------------------------------------------------------------

    def tokens(self, latent_shape: Sequence[int]) -> int:
        """How many spacetime tokens a latent of ``(T, H, W)`` (or ``(C, T, H, W)``) makes."""
        return math.prod(grid_size(tuple(latent_shape)[-3:], self.patch_size))


def flops(model: nn.Module, *inputs, backward: bool = False, **kwargs) -> int:
    """Floating-point operations of one ``model(*inputs, **kwargs)`` call (and its backward
    with ``backward=True``), counted by PyTorch's ``FlopCounterMode`` (matmuls, convolutions
    and fused attention; elementwise work is ignored, as MFU figures conventionally do).
    The CPU's fused attention kernel is not in PyTorch's table; it is counted here with
    PyTorch's own attention formulas, so CPU and GPU counts agree."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *args, out_shape=None, **kw: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *args, out_shape=None, **kw: sdpa_backward_flop_count(g, q, k, v),
    }
    counter = FlopCounterMode(display=False, custom_mapping=cpu_attention)
    with counter:
        out = model(*inputs, **kwargs)
        if backward:
            out.float().pow(2).mean().backward()
    return counter.get_total_flops()


__all__ = ["ATTENTIONS", "CONDITIONINGS", "SIZES", "CrossAttention", "DiTBlock", "FinalLayer", "SpacetimeDiT", "flops",
           "modulate"]
