"""Text: a word-level tokenizer over the world's caption vocabulary, and a transformer
text encoder.

**Why word-level, not BPE.** Every caption and prompt of the toy worlds comes from a
small grammar: ~60 distinct words. A byte-pair encoding (Sennrich et al., arXiv
1508.07909; CLIP's tokenizer, arXiv 2103.00020) exists to cover an open vocabulary in a
fixed budget; here it would only split "triangle" into pieces the model must glue back.
Words outside the vocabulary become ``<unk>`` (and are counted, so a prompt-upsampling
bug that invents words shows up), never an error.

The encoder is a pre-norm transformer (the blocks of :mod:`sora_edu.models.vit`) over
token embeddings plus 1D sin-cos positions. It returns every token's feature (for
cross-attention in the DiT) and a masked mean (for adaLN and for CLIP).
Layouts: ``ids (B, L)`` long, ``mask (B, L)`` bool (True = a real token).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from ..patches import sincos_1d
from .vit import Block

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD, UNK, BOS, EOS = range(4)


def words(text: str) -> list[str]:
    """Lower-case words; punctuation is dropped (the grammar's commas carry no meaning)."""
    return re.findall(r"[a-z0-9]+", text.lower())


class WordTokenizer:
    def __init__(self, vocab: Sequence[str]) -> None:
        vocab = list(vocab)
        if tuple(vocab[:4]) != SPECIALS:
            vocab = list(SPECIALS) + [w for w in vocab if w not in SPECIALS]
        self.vocab = vocab
        self.index = {w: i for i, w in enumerate(vocab)}
        if len(self.index) != len(vocab):
            raise ValueError("the vocabulary has repeated words")

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "WordTokenizer":
        """The sorted set of words in ``texts`` (sorted: the same corpus, the same ids)."""
        return cls(sorted({w for t in texts for w in words(t)}))

    @classmethod
    def for_world(cls, samples: int = 2000, seed: int = 0) -> "WordTokenizer":
        """The vocabulary of the Shapes world's captions and alt-texts (scenes are drawn, not
        rendered; once per process: drawing them takes ~1.3 s, and every model and data
        module of the course asks)."""
        return cls(_world_vocabulary(samples, seed))

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, texts: str | Sequence[str], max_len: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
        """``texts`` -> ``ids (B, max_len)``, ``mask (B, max_len)``: ``<bos> words <eos>``,
        padded; a text longer than ``max_len`` raises (a silently cut prompt loses meaning)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = torch.full((len(texts), max_len), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            seq = [BOS] + [self.index.get(w, UNK) for w in words(text)] + [EOS]
            if len(seq) > max_len:
                raise ValueError(f"text of {len(seq)} tokens exceeds max_len={max_len}: {text[:60]!r}...")
            ids[row, : len(seq)] = torch.tensor(seq)
        return ids, ids != PAD

    def decode(self, ids: torch.Tensor) -> list[str]:
        """``ids (B, L)`` -> texts, without specials."""
        return [" ".join(self.vocab[i] for i in row.tolist() if i >= len(SPECIALS)) for row in ids]

    def unknown(self, text: str) -> list[str]:
        """Words of ``text`` that would become ``<unk>``."""
        return [w for w in words(text) if w not in self.index]

    def save(self, path: str | Path) -> None:
        from ..viz import write_atomic

        write_atomic(Path(path), json.dumps(self.vocab).encode())

    @classmethod
    def load(cls, path: str | Path) -> "WordTokenizer":
        return cls(json.loads(Path(path).read_text()))

    @classmethod
    def load_or_world(cls, path: str | Path | None) -> "WordTokenizer":
        """A saved vocabulary, or (``None``) the Shapes world's."""
        return cls.load(path) if path else cls.for_world()


def text_inputs(cond, model: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids, mask`` of a text condition ``{"ids": (B, L), "mask": (B, L)}``, or an error
    saying that ``model`` (a DiT, a U-Net, ...) is text-conditional."""
    if not isinstance(cond, dict) or "ids" not in cond or "mask" not in cond:
        raise ValueError(f"this {model} is text-conditional: expected cond = {{'ids': (B, L), 'mask': (B, L)}}")
    return cond["ids"], cond["mask"]


class TextEncoder(nn.Module):
    """``(ids, mask) -> (tokens (B, L, dim), pooled (B, dim))``; padding never changes the output."""

    def __init__(self, vocab_size: int, dim: int = 128, depth: int = 2, heads: int = 4, mlp_ratio: float = 2.0,
                 max_len: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.register_buffer("positions", sincos_1d(torch.arange(max_len, dtype=torch.float32), dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    @classmethod
    def of_width(cls, vocab_size: int, dim: int, depth: int) -> "TextEncoder":
        """The text tower the DiT, the U-Net and CLIP build: one attention head per 32 channels."""
        return cls(vocab_size, dim, depth, heads=max(1, dim // 32))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(f"expected ids (B, L) and mask (B, L), got {tuple(ids.shape)} and {tuple(mask.shape)}")
        if ids.shape[1] > self.positions.shape[0]:
            raise ValueError(f"sequence of {ids.shape[1]} tokens exceeds max_len={self.positions.shape[0]}")
        x = self.embed(ids) + self.positions[: ids.shape[1]].to(self.embed.weight.dtype)
        attn = mask[:, None, None, :]  # keys: real tokens only
        for block in self.blocks:
            x = block(x, attn)
        x = self.norm(x)
        weights = mask.to(x.dtype)[..., None]
        pooled = (x * weights).sum(1) / weights.sum(1).clamp_min(1)
        return x, pooled


@functools.lru_cache(maxsize=None)
def _world_vocabulary(samples: int, seed: int) -> tuple[str, ...]:
    from ..data.worlds import ShapesWorld, alt_text

    world = ShapesWorld(samples, 16, 64, 64, seed=seed)
    texts = []
    for i in range(samples):
        scene, rng = world.scene(i)
        texts += [scene.caption(), alt_text(scene, rng)]
    return tuple(WordTokenizer.from_texts(texts).vocab)
