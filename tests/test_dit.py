"""The DiT: conditioning variants, adaLN-Zero's identity at init, any latent size, full and
factorised attention, text conditioning, the FLOPs counter."""

import pytest
import torch

from sora_edu.models.dit import CONDITIONINGS, DiTBlock, SpacetimeDiT, flops, modulate

VOCAB = 62


def text(batch: int, length: int = 7, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[-1, length // 2:] = False
    ids[~mask] = 0
    return {"ids": ids, "mask": mask}


def perturb(model: torch.nn.Module) -> None:
    """Give every zero-initialised weight a value, as training would."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_adaln_zero_block_is_the_identity_at_init():
    torch.manual_seed(0)
    x, c, ctx = torch.randn(2, 10, 32), torch.randn(2, 32), torch.randn(2, 5, 32)
    block = DiTBlock(32, 4, conditioning="adaln_zero", cross_attention=True)
    assert torch.equal(block(x, c, ctx, torch.ones(2, 5, dtype=torch.bool)), x)
    # ... and only adaLN-Zero: the other variants change x from the start
    for kind in ("adaln", "cross_attn", "in_context"):
        other = DiTBlock(32, 4, conditioning=kind)
        assert not torch.allclose(other(x, c, ctx), x)
    # and an untrained DiT predicts exactly 0 (its final layer is zero-initialised too)
    model = SpacetimeDiT(4, (1, 2, 2), 32, 2, 4, vocab_size=VOCAB, text_dim=32)
    assert model(torch.randn(2, 4, 3, 4, 4), torch.rand(2), text(2)).abs().max() == 0


def test_modulate_is_scale_and_shift_per_sample():
    x = torch.ones(2, 3, 4)
    out = modulate(x, torch.tensor([[1.0] * 4, [0.0] * 4]), torch.tensor([[0.0] * 4, [1.0] * 4]))
    assert torch.equal(out[0], torch.full((3, 4), 2.0)) and torch.equal(out[1], torch.full((3, 4), 2.0))


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
@pytest.mark.parametrize("attention", ["full", "factorised"])
def test_the_model_takes_several_latent_shapes(conditioning, attention):
    if conditioning == "in_context" and attention == "factorised":
        with pytest.raises(ValueError, match="in-context conditioning needs full attention"):
            SpacetimeDiT(4, (1, 2, 2), 32, 2, 4, conditioning=conditioning, attention=attention)
        return
    torch.manual_seed(0)
    model = SpacetimeDiT(4, (1, 2, 2), 32, 2, 4, conditioning=conditioning, attention=attention,
                         vocab_size=VOCAB, text_dim=32)
    perturb(model)
    for shape in [(5, 4, 4), (1, 4, 4), (3, 2, 6), (2, 6, 2)]:  # video, image, widescreen, vertical
        x = torch.randn(2, 4, *shape)
        out, maps = model(x, torch.rand(2) * 1000, text(2), attention_maps=True)
        assert out.shape == x.shape and torch.isfinite(out).all()
        t, h, w = shape[0], shape[1] // 2, shape[2] // 2
        extra = 8 if conditioning == "in_context" else 0  # time token + 7 text tokens
        if attention == "full":
            assert maps[0].shape == (2, t * h * w + extra, t * h * w + extra)
        else:  # spatial blocks: (B*T, HW, HW); temporal blocks: (B*HW, T, T)
            assert maps[0].shape == (2 * t, h * w, h * w) and maps[1].shape == (2 * h * w, t, t)
        torch.testing.assert_close(maps[0].sum(-1), torch.ones(maps[0].shape[:-1]))


def test_factorised_attention_keeps_frames_apart_in_spatial_blocks():
    """A one-block factorised DiT (spatial only): changing frame 1 cannot change frame 0's output."""
    torch.manual_seed(0)
    model = SpacetimeDiT(4, (1, 2, 2), 32, 1, 4, attention="factorised")
    perturb(model)
    x = torch.randn(1, 4, 2, 4, 4)
    y = x.clone()
    y[:, :, 1] += 1
    t = torch.tensor([10.0])
    assert torch.allclose(model(x, t)[:, :, 0], model(y, t)[:, :, 0], atol=1e-6)
    full = SpacetimeDiT(4, (1, 2, 2), 32, 1, 4, attention="full")
    perturb(full)
    assert not torch.allclose(full(x, t)[:, :, 0], full(y, t)[:, :, 0], atol=1e-4)


def test_text_padding_and_condition_types():
    torch.manual_seed(0)
    model = SpacetimeDiT(4, (1, 2, 2), 32, 2, 4, vocab_size=VOCAB, text_dim=32)
    perturb(model)
    x, t = torch.randn(1, 4, 2, 4, 4), torch.tensor([100.0])
    short = {"ids": torch.tensor([[2, 10, 11, 3]]), "mask": torch.ones(1, 4, dtype=torch.bool)}
    padded = {"ids": torch.tensor([[2, 10, 11, 3, 0, 0]]), "mask": torch.tensor([[True] * 4 + [False] * 2])}
    torch.testing.assert_close(model(x, t, short), model(x, t, padded))
    other = {"ids": torch.tensor([[2, 12, 11, 3]]), "mask": torch.ones(1, 4, dtype=torch.bool)}
    assert not torch.allclose(model(x, t, short), model(x, t, other))
    with pytest.raises(ValueError, match="text-conditional"):
        model(x, t, torch.tensor([1]))
    classes = SpacetimeDiT(4, (1, 2, 2), 32, 1, 4, num_classes=3)
    assert classes(x, t, torch.tensor([3])).shape == x.shape  # 3 = the null label
    with pytest.raises(ValueError, match=r"class-conditional: expected labels \(B,\)"):
        classes(x, t, None)
    with pytest.raises(ValueError, match="unconditional"):
        SpacetimeDiT(4, (1, 2, 2), 32, 1, 4)(x, t, torch.tensor([0]))
    with pytest.raises(ValueError, match="not both"):
        SpacetimeDiT(4, num_classes=3, vocab_size=VOCAB)


def test_bad_shapes_name_the_layout():
    model = SpacetimeDiT(4, (1, 2, 2), 32, 1, 4)
    with pytest.raises(ValueError, match=r"expected latents \(B, 4, T, H, W\)"):
        model(torch.randn(1, 3, 2, 4, 4), torch.rand(1))
    with pytest.raises(ValueError, match="divisible|multiple"):
        model(torch.randn(1, 4, 2, 5, 4), torch.rand(1))
    with pytest.raises(ValueError, match=r"expected times t \(B,\)"):
        model(torch.randn(2, 4, 2, 4, 4), torch.rand(3))
    with pytest.raises(ValueError, match="conditioning must be one of"):
        SpacetimeDiT(4, conditioning="film")


def test_flops_match_the_transformer_formula():
    """Unconditional, adaLN-Zero: per block 2N(3d^2 + d^2 + 8d^2) matmul FLOPs for the
    linears and 4N^2 d for attention, plus the patch embedding and the final layer."""
    d, depth, n_side = 64, 3, 4
    model = SpacetimeDiT(4, (1, 2, 2), d, depth, 4)
    x = torch.randn(2, 4, 2, 2 * n_side, 2 * n_side)
    n = 2 * n_side * n_side
    patch = 4 * 4  # values per token
    per_block = 2 * n * 12 * d * d + 4 * n * n * d
    expected = 2 * (depth * per_block + 2 * n * patch * d + 2 * n * d * patch)
    counted = flops(model, x, torch.rand(2))
    # the rest: time embedding and adaLN, per sample not per token
    assert expected <= counted <= 1.1 * expected, (counted, expected)
    assert flops(model, x, torch.rand(2), backward=True) > 2.5 * counted
    assert model.tokens((2, 2 * n_side, 2 * n_side)) == n
