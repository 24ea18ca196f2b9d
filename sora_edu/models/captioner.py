"""A tiny captioner and a prompt upsampler: one prefix language model, two prefixes.

Sora's report (language understanding): *"We first train a highly descriptive captioner
model and then use it to produce text captions for all videos in our training set"*
(DALL-E 3's recaptioning, "Improving Image Generation with Better Captions", Betker et al.,
2023), and *"we also leverage GPT to turn short user prompts into longer detailed
captions"*. Both are a language model that continues a **prefix**:

* the **captioner** (LLaVA-style, Liu et al., arXiv 2304.08485): the prefix is the video,
  the spacetime tokens of a small transformer over its VAE latents
  (:class:`~sora_edu.models.clip.VideoTower`), projected to the decoder's width;
* the **upsampler**: the prefix is the short prompt's own tokens.

The decoder is causal over ``[prefix; <bos> caption]`` and is trained to predict each
caption token from everything before it. Decoding: ``greedy``, ``beam`` (keeps the
``beams`` most likely partial captions), or ``sample`` (top-``k`` with a ``temperature``:
one short prompt, several detailed ones). Every method stops at ``<eos>`` or ``max_len``.

Layouts: latents ``(B, C, T, H, W)``; token ids and masks ``(B, L)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..patches import sincos_1d
from .clip import VideoTower
from .text import BOS, EOS, PAD, WordTokenizer
from .vit import Block

PREFIXES = ("video", "text")
METHODS = ("greedy", "beam", "sample")


class PrefixLM(nn.Module):
    """A causal transformer that writes a caption after a video or text prefix.

    Args:
        vocab_size: words of the tokenizer.
        prefix: ``"video"`` (captioner) or ``"text"`` (prompt upsampler).
        dim, depth, heads: the decoder.
        in_channels, patch_size, video_depth: the video prefix's tower (over VAE latents).
        max_len: longest prefix + caption, in tokens.
    """

    def __init__(self, vocab_size: int, prefix: str = "video", dim: int = 128, depth: int = 3, heads: int = 4,
                 in_channels: int = 8, patch_size: Sequence[int] = (1, 4, 4), video_depth: int = 2,
                 max_len: int = 160) -> None:
        super().__init__()
        if prefix not in PREFIXES:
            raise ValueError(f"prefix must be one of {PREFIXES}, got {prefix!r}")
        self.prefix, self.dim = prefix, dim
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.video = VideoTower(in_channels, patch_size, dim, video_depth, heads) if prefix == "video" else None
        self.register_buffer("positions", sincos_1d(torch.arange(max_len, dtype=torch.float32), dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, 4.0) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def encode_prefix(self, prefix) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (B, P, dim), valid (B, P))`` of a video ``(B, C, T, H, W)`` or a text
        prefix ``{"ids", "mask"}``."""
        if self.prefix == "video":
            if not isinstance(prefix, torch.Tensor) or prefix.ndim != 5:
                raise ValueError("this is a captioner: the prefix is latents (B, C, T, H, W)")
            tokens = self.video.tokens(prefix)
            return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        if not isinstance(prefix, dict) or "ids" not in prefix:
            raise ValueError("this is a prompt upsampler: the prefix is {'ids': (B, L), 'mask': (B, L)}")
        return self.embed(prefix["ids"]), prefix["mask"].bool()

    def forward(self, prefix, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(B, L, vocab)`` at every caption position."""
        p, valid = self.encode_prefix(prefix)
        x = torch.cat([p, self.embed(ids)], dim=1)
        n = x.shape[1]
        if n > self.positions.shape[0]:
            raise ValueError(f"prefix + caption = {n} tokens exceeds max_len={self.positions.shape[0]}")
        keys = torch.cat([valid, mask.bool()], dim=1)  # padding is never attended
        # Positions count real tokens only, so a padded prefix does not shift the caption.
        x = x + self.positions[(keys.long().cumsum(1) - 1).clamp_min(0)].to(x.dtype)
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        attn = causal[None, None] & keys[:, None, None, :]
        attn = attn | torch.eye(n, dtype=torch.bool, device=x.device)  # a padded query still sees itself
        for block in self.blocks:
            x = block(x, attn)
        return self.head(self.norm(x[:, p.shape[1]:]))

    def loss(self, prefix, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each caption token given the prefix and the tokens before it."""
        logits = self(prefix, ids[:, :-1], mask[:, :-1])
        target = ids[:, 1:].masked_fill(~mask[:, 1:].bool(), -100)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)

    @torch.no_grad()
    def generate(self, prefix, max_len: int = 24, method: str = "greedy", beams: int = 4, top_k: int = 8,
                 temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Token ids ``(B, <= max_len)`` starting with ``<bos>``; after ``<eos>`` only ``<pad>``."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (<bos> and one word), got {max_len}")
        if method == "beam":
            return self._beam(prefix, max_len, beams)
        batch = prefix.shape[0] if isinstance(prefix, torch.Tensor) else prefix["ids"].shape[0]
        device = self.embed.weight.device
        ids = torch.full((batch, 1), BOS, dtype=torch.long, device=device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        for _ in range(max_len - 1):
            logits = self(prefix, ids, ids != PAD)[:, -1].float()
            logits[:, PAD] = logits[:, BOS] = -float("inf")
            if method == "greedy":
                nxt = logits.argmax(-1)
            else:
                if temperature <= 0:
                    raise ValueError(f"temperature must be > 0, got {temperature}")
                top = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
                probs = F.softmax(top.values / temperature, dim=-1)
                nxt = top.indices.gather(1, torch.multinomial(probs, 1, generator=generator)).squeeze(1)
            nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == EOS
            if done.all():
                break
        return ids

    def _beam(self, prefix, max_len: int, beams: int) -> torch.Tensor:
        """Beam search, one input at a time: the ``beams`` best partial captions by total
        log-probability; a finished caption competes with its length-normalised score."""
        batch = prefix.shape[0] if isinstance(prefix, torch.Tensor) else prefix["ids"].shape[0]
        device = self.embed.weight.device
        out = []
        for b in range(batch):
            one = prefix[b:b + 1] if isinstance(prefix, torch.Tensor) else {k: v[b:b + 1] for k, v in prefix.items()}
            alive = [([BOS], 0.0)]
            finished = []
            for _ in range(max_len - 1):
                seqs = torch.tensor([s for s, _ in alive], device=device)
                rep = one.expand(len(alive), *one.shape[1:]) if isinstance(one, torch.Tensor) else \
                    {k: v.expand(len(alive), -1) for k, v in one.items()}
                logp = F.log_softmax(self(rep, seqs, seqs != PAD)[:, -1].float(), dim=-1)
                logp[:, PAD] = logp[:, BOS] = -float("inf")
                candidates = [(s + [w], score + lp) for (s, score), row in zip(alive, logp.tolist())
                              for w, lp in enumerate(row) if lp > -float("inf")]
                candidates.sort(key=lambda c: -c[1])
                alive = []
                for seq, score in candidates:
                    (finished if seq[-1] == EOS else alive).append((seq, score))
                    if len(alive) == beams:
                        break
                if len(finished) >= beams or not alive:
                    break
            pool = finished or alive
            best = max(pool, key=lambda c: c[1] / len(c[0]))[0]
            out.append(torch.tensor(best[:max_len], device=device))
        width = max(len(o) for o in out)
        return torch.stack([F.pad(o, (0, width - len(o)), value=PAD) for o in out])


def decode(tokenizer: WordTokenizer, ids: torch.Tensor) -> list[str]:
    """Generated ids -> captions (specials dropped, cut at ``<eos>``)."""
    texts = []
    for row in ids.tolist():
        row = row[1:] if row and row[0] == BOS else row
        row = row[:row.index(EOS)] if EOS in row else row
        texts.append(tokenizer.decode(torch.tensor([row]))[0] if row else "")
    return texts


__all__ = ["METHODS", "PREFIXES", "PrefixLM", "decode"]
