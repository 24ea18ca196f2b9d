"""The word-level tokenizer and the text encoder."""

import pytest
import torch

from sora_edu.models.text import BOS, EOS, PAD, UNK, TextEncoder, WordTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return WordTokenizer.for_world(samples=500)


def test_world_vocabulary_covers_captions_and_is_deterministic(tokenizer):
    from sora_edu.data.worlds import COLOURS, SHAPES, ShapesWorld

    assert tokenizer.vocab[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert set(SHAPES) | set(COLOURS) <= set(tokenizer.vocab)
    assert WordTokenizer.for_world(samples=500).vocab == tokenizer.vocab
    world = ShapesWorld(50, 16, 64, 64, seed=99)  # other scenes than the vocabulary's
    captions = [world.scene(i)[0].caption() for i in range(50)]
    assert all(not tokenizer.unknown(c) for c in captions)
    ids, mask = tokenizer.encode(captions)
    assert (ids[:, 0] == BOS).all() and not (ids == UNK).any()
    assert tokenizer.decode(ids) == [" ".join(c.replace(",", "").split()) for c in captions]


def test_encode_pads_marks_unknowns_and_refuses_to_cut(tokenizer, tmp_path):
    ids, mask = tokenizer.encode(["a red circle", "a zebra moves left"], max_len=8)
    assert ids.shape == mask.shape == (2, 8)
    assert ids[0, :5].tolist()[-1] == EOS and (ids[0, 5:] == PAD).all() and mask[0].sum() == 5
    assert ids[1, 2] == UNK and tokenizer.unknown("a zebra moves left") == ["zebra"]
    with pytest.raises(ValueError, match="exceeds max_len=4"):
        tokenizer.encode("a large red circle moves left", max_len=4)
    tokenizer.save(tmp_path / "vocab.json")
    assert WordTokenizer.load(tmp_path / "vocab.json").vocab == tokenizer.vocab


def test_text_encoder_shapes_and_padding_invariance(tokenizer):
    torch.manual_seed(0)
    enc = TextEncoder(len(tokenizer), dim=32, depth=2, heads=4).eval()
    short, mask_s = tokenizer.encode(["a blue square moves up"], max_len=8)
    long, mask_l = tokenizer.encode(["a blue square moves up"], max_len=20)
    with torch.no_grad():
        tok_s, pooled_s = enc(short, mask_s)
        tok_l, pooled_l = enc(long, mask_l)
    assert tok_s.shape == (1, 8, 32) and pooled_s.shape == (1, 32)
    torch.testing.assert_close(pooled_s, pooled_l, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tok_s[:, :7], tok_l[:, :7], atol=1e-5, rtol=1e-5)
    other, mask_o = tokenizer.encode(["a blue square moves down"], max_len=8)
    assert not torch.allclose(enc(other, mask_o)[1], pooled_s)
    with pytest.raises(ValueError, match=r"expected ids \(B, L\) and mask \(B, L\)"):
        enc(short[0], mask_s[0])
