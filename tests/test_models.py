"""ViT, ViViT (three variants), the frame-averaged baseline and NaViT: shapes, invariants, errors."""

import pytest
import torch

from sora_edu.models.navit import NaViT
from sora_edu.models.vit import ViT, attend
from sora_edu.models.vivit import VARIANTS, FrameViT, ViViT


def test_vit_shapes_and_any_resolution():
    torch.manual_seed(0)
    vit = ViT(num_classes=10, patch_size=4, in_channels=1, dim=32, depth=2, heads=4)
    assert vit(torch.randn(3, 1, 16, 16)).shape == (3, 10)
    assert vit(torch.randn(2, 1, 8, 24)).shape == (2, 10)  # fixed sin-cos positions extend
    maps = vit.attention_maps(torch.randn(2, 1, 16, 16))
    assert len(maps) == 2 and maps[0].shape == (2, 4, 16, 16)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(2, 4, 16))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        vit(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        vit(torch.randn(2, 1, 10, 16))


def test_attend_on_cpu_computes_half_precision_in_fp32():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 10, 8).unbind(0)
    mask = torch.ones(10, 10, dtype=torch.bool).tril()
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(attend(q, k, v, mask), exact)
    half = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    with torch.autocast("cpu", torch.bfloat16):
        out = attend(*half, mask)
    assert out.dtype == torch.bfloat16  # the caller's dtype, under autocast or not
    # fp32 inside: exact attention of the bf16-rounded inputs, then one rounding to bf16
    rounded = torch.nn.functional.scaled_dot_product_attention(*(t.detach().float() for t in half), attn_mask=mask)
    torch.testing.assert_close(out.float(), rounded.bfloat16().float(), rtol=0, atol=0)
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in half)
    double = [t.double() for t in (q, k, v)]  # fp64 is kept, never rounded down
    assert attend(*double, mask).dtype == torch.float64


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("embed", ["tubelet", "frames"])
def test_vivit_variants(variant, embed):
    torch.manual_seed(0)
    model = ViViT(num_classes=6, tubelet=(2, 4, 4), dim=32, depth=2, heads=4, variant=variant, embed=embed)
    video = torch.randn(2, 3, 4, 8, 8)
    assert model(video).shape == (2, 6)
    assert model(torch.randn(1, 3, 8, 8, 12)).shape == (1, 6)
    # Attention that sees time tells a video from the same video played backwards.
    assert not torch.allclose(model(video), model(video.flip(2)), atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        model(torch.randn(2, 3, 8, 8))


def test_vivit_rejects_unknown_variant():
    with pytest.raises(ValueError, match="sideways"):
        ViViT(variant="sideways")


@pytest.mark.parametrize("fusion", ["logits", "features"])
def test_frame_vit_cannot_see_frame_order(fusion):
    torch.manual_seed(0)
    model = FrameViT(num_classes=6, patch_size=4, dim=32, depth=2, fusion=fusion).eval()
    video = torch.randn(2, 3, 4, 8, 8)
    shuffled = video[:, :, torch.tensor([2, 0, 3, 1])]
    torch.testing.assert_close(model(video), model(shuffled), rtol=1e-4, atol=1e-5)


def test_navit_any_size_equals_one_by_one():
    torch.manual_seed(0)
    model = NaViT(num_classes=5, patch_size=(1, 4, 4), dim=32, depth=2, heads=4, max_len=64).eval()
    items = [torch.randn(3, 8, 8), torch.randn(3, 2, 8, 12), torch.randn(3, 16, 4), torch.randn(3, 1, 12, 12)]
    together = model(items)
    assert together.shape == (4, 5)
    alone = torch.cat([model([x]) for x in items])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"item 1: expected \(C, H, W\) or \(C, T, H, W\) with C = 3"):
        model([torch.randn(3, 8, 8), torch.randn(1, 8, 8)])
