"""patches.py: patchify round trips, embeddings, positions, NaViT packing."""

import pytest
import torch
from einops import rearrange

from sora_edu.patches import (
    FrameSamplingEmbed,
    PatchEmbed,
    TubeletEmbed,
    grid_coords,
    grid_size,
    pack,
    patchify,
    segment_mean,
    sincos_1d,
    sincos_2d,
    sincos_3d,
    sincos_factorised,
    unpack,
    unpatchify,
)
from sora_edu.models.vit import Attention, Block


@pytest.mark.parametrize("shape,patch", [((2, 3, 8, 12), 4), ((1, 1, 6, 6), (3, 2)), ((2, 3, 4, 8, 8), (2, 4, 4)),
                                         ((1, 4, 1, 6, 10), 2), ((1, 3, 6, 4, 4), (3, 1, 2))])
def test_unpatchify_inverts_patchify(shape, patch):
    x = torch.randn(shape)
    tokens = patchify(x, patch)
    assert torch.equal(unpatchify(tokens, patch, shape[2:]), x)


def test_patchify_layout_is_raster_order():
    x = torch.arange(2 * 4 * 4).float().reshape(1, 2, 4, 4)  # C = 2
    tokens = patchify(x, 2)
    assert tokens.shape == (1, 4, 8)
    # token 1 is the top-right patch; within a patch, (ph, pw, c) with channel fastest
    assert tokens[0, 1].tolist() == [2, 18, 3, 19, 6, 22, 7, 23]
    video = torch.randn(1, 3, 4, 8, 8)
    t = patchify(video, (2, 4, 4))
    assert t.shape == (1, 2 * 2 * 2, 2 * 4 * 4 * 3)
    # the third token is (t=0, h=1, w=0)
    assert torch.equal(t[0, 2], rearrange(video[0, :, 0:2, 4:8, 0:4], "c t h w -> (t h w c)"))


def test_patchify_errors_name_the_layout():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\).*\(B, C, T, H, W\)"):
        patchify(torch.randn(3, 8, 8), 4)
    with pytest.raises(ValueError, match="W = 10 is not divisible by the patch size 4"):
        patchify(torch.randn(1, 3, 8, 10), 4)
    with pytest.raises(ValueError, match="T = 5"):
        patchify(torch.randn(1, 3, 5, 8, 8), (2, 4, 4))
    with pytest.raises(ValueError, match="expected 4 tokens"):
        unpatchify(torch.randn(1, 5, 48), 4, (8, 8))
    with pytest.raises(ValueError, match="patch_size"):
        patchify(torch.randn(1, 3, 8, 8), (0, 4))


def test_patch_embed_equals_patchify_then_linear():
    embed = PatchEmbed(4, 3, 16)
    x = torch.randn(2, 3, 8, 12)
    weight = rearrange(embed.proj.weight, "d c ph pw -> d (ph pw c)")
    expected = patchify(x, 4) @ weight.T + embed.proj.bias
    torch.testing.assert_close(embed(x), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        embed(torch.randn(2, 1, 8, 8))


def test_tubelet_embed_equals_patchify_then_linear():
    embed = TubeletEmbed((2, 4, 4), 3, 16)
    x = torch.randn(2, 3, 4, 8, 8)
    weight = rearrange(embed.proj.weight, "d c pt ph pw -> d (pt ph pw c)")
    torch.testing.assert_close(embed(x), patchify(x, (2, 4, 4)) @ weight.T + embed.proj.bias, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        embed(torch.randn(2, 3, 8, 8))


def test_frame_sampling_embeds_each_kept_frame_alone():
    embed = FrameSamplingEmbed(4, 3, 16, stride=2)
    x = torch.randn(1, 3, 5, 8, 8)
    tokens = embed(x)
    assert tokens.shape == (1, 3 * 4, 16)  # frames 0, 2, 4
    torch.testing.assert_close(tokens[:, 4:8], embed.embed(x[:, :, 2]))


def test_sincos_positions():
    p = sincos_1d(torch.arange(5), 8)
    assert p.shape == (5, 8)
    torch.testing.assert_close(p[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert sincos_2d(3, 4, 16).shape == (12, 16)
    pos = sincos_3d(2, 3, 4, 30)  # 30 = 3 axes x 10 channels
    assert pos.shape == (24, 30)
    assert len({tuple(r) for r in pos.round(decimals=5).tolist()}) == 24, "every token gets a distinct position"
    # tokens in the same frame share their time part
    torch.testing.assert_close(pos[0, :10], pos[11, :10])
    spatial, temporal = sincos_factorised(2, 3, 4, 16)
    assert spatial.shape == (12, 16) and temporal.shape == (2, 16)
    with pytest.raises(ValueError, match="even"):
        sincos_1d(torch.arange(3), 7)
    with pytest.raises(ValueError, match="too small"):
        sincos_3d(2, 2, 2, 4)


def test_grid_coords_raster_order():
    c = grid_coords(2, 2, 3)
    assert c.shape == (12, 3)
    assert c[4].tolist() == [0, 1, 1] and c[-1].tolist() == [1, 1, 2]
    assert grid_size((8, 16, 16), (2, 4, 8)) == (4, 4, 2)


def _sequences(lengths, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randn(n, dim, generator=g) for n in lengths]
    coords = [grid_coords(n) for n in lengths]
    return seqs, coords


def test_pack_unpack_returns_every_input():
    seqs, coords = _sequences([5, 9, 3, 7, 2, 12])
    packed = pack(seqs, coords, max_len=16)
    assert packed.tokens.shape[1] == 16
    assert packed.tokens.shape[0] == 3  # 38 tokens fit in three rows of 16
    for original, back in zip(seqs, unpack(packed.tokens, packed)):
        assert torch.equal(original, back)
    assert (packed.segments >= 0).sum() == 38
    assert packed.padding_fraction == pytest.approx(1 - 38 / 48)


def test_pack_errors():
    seqs, coords = _sequences([20])
    with pytest.raises(ValueError, match="more than max_len = 16"):
        pack(seqs, coords, 16)
    with pytest.raises(ValueError, match="coords"):
        pack(seqs, [torch.zeros(3, 1)], 32)
    with pytest.raises(ValueError, match="drop_rate"):
        pack(seqs, coords, 32, drop_rate=1.0)


def test_token_dropping_keeps_positions():
    seqs, coords = _sequences([10, 8])
    packed = pack(seqs, coords, 16, drop_rate=0.5, generator=torch.Generator().manual_seed(0))
    out = unpack(packed.tokens, packed)
    assert [len(o) for o in out] == [5, 4]
    for original, kept, back in zip(seqs, packed.kept, out):
        assert torch.equal(original[kept], back)
    row, start, n = packed.spans[0]
    assert torch.equal(packed.coords[row, start:start + n, 0], packed.kept[0])


def test_mask_stops_attention_across_packed_examples():
    """Perturb one packed example: every other example's output is unchanged."""
    torch.manual_seed(0)
    block = Block(8, heads=2).eval()
    seqs, coords = _sequences([6, 5, 4], dim=8)
    packed = pack(seqs, coords, max_len=16)
    assert packed.tokens.shape[0] == 1, "all three share one row"
    mask = packed.attention_mask()
    out = block(packed.tokens, mask)
    seqs2 = [seqs[0], seqs[1] + 10 * torch.randn_like(seqs[1]), seqs[2]]
    out2 = block(pack(seqs2, coords, 16).tokens, mask)
    a, b = unpack(out, packed), unpack(out2, packed)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[2], b[2])
    assert not torch.allclose(a[1], b[1])
    # Packed output equals running each example alone.
    torch.testing.assert_close(a[2], block(seqs[2][None])[0], rtol=1e-4, atol=1e-5)
    # Without the mask, the examples leak into each other.
    leak = unpack(block(pack(seqs2, coords, 16).tokens), packed)
    assert not torch.allclose(leak[0], a[0])


def test_segment_mean():
    seqs, coords = _sequences([3, 5, 2])
    packed = pack(seqs, coords, 8)
    means = segment_mean(packed.tokens, packed)
    torch.testing.assert_close(means, torch.stack([s.mean(0) for s in seqs]))


def test_sdpa_matches_manual_attention():
    torch.manual_seed(0)
    attn = Attention(16, heads=4)
    x = torch.randn(2, 7, 16)
    mask = torch.rand(2, 1, 7, 7) > 0.3
    mask |= torch.eye(7, dtype=torch.bool)
    fast = attn(x, mask)
    slow, weights = attn(x, mask, weights=True)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    assert weights.shape == (2, 4, 7, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 7))
    assert (weights[~mask.expand_as(weights)] == 0).all()
