"""Captioner and prompt upsampler (issue G): the prefix LM, decoding, learning at tiny size,
deterministic recaptioning, prompt errors."""

import numpy as np
import pytest
import torch

from sora_edu.data.worlds import ShapesWorld
from sora_edu.models.captioner import PrefixLM, decode
from sora_edu.models.text import BOS, EOS, PAD, WordTokenizer
from sora_edu.train.captioning import caption_accuracy, caption_attributes, recaption, short_prompt
from sora_edu.train.text_video import T2V_WORLD

TOK = WordTokenizer.for_world()


def test_prefix_lm_is_causal_and_ignores_padding():
    torch.manual_seed(0)
    net = PrefixLM(len(TOK), "text", dim=32, depth=2, heads=2).eval()
    prefix = dict(zip(("ids", "mask"), TOK.encode(["a red circle"], max_len=8)))
    ids, mask = TOK.encode(["a small red circle moves left across a navy background"], max_len=16)
    logits = net(prefix, ids, mask)
    assert logits.shape == (1, 16, len(TOK))
    changed = ids.clone()
    changed[0, 6] = TOK.index["blue"]
    torch.testing.assert_close(net(prefix, changed, mask)[:, :6], logits[:, :6])  # the past does not see the future
    longer = dict(zip(("ids", "mask"), TOK.encode(["a red circle"], max_len=12)))
    torch.testing.assert_close(net(longer, ids, mask), logits, atol=1e-5, rtol=1e-5)  # prefix padding changes nothing
    video = PrefixLM(len(TOK), "video", dim=32, depth=1, heads=2, in_channels=4, patch_size=(1, 2, 2))
    assert video(torch.randn(2, 4, 2, 4, 4), ids.expand(2, -1), mask.expand(2, -1)).shape == (2, 16, len(TOK))
    with pytest.raises(ValueError, match="captioner"):
        video(prefix, ids, mask)


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_decoding_stops_at_eos_and_respects_max_len(method):
    torch.manual_seed(0)
    net = PrefixLM(len(TOK), "text", dim=32, depth=1, heads=2).eval()
    prefix = dict(zip(("ids", "mask"), TOK.encode(["a red circle", "a blue square"], max_len=8)))
    out = net.generate(prefix, max_len=7, method=method, generator=torch.Generator().manual_seed(0))
    assert out.shape[0] == 2 and out.shape[1] <= 7 and (out[:, 0] == BOS).all()
    for row in out.tolist():
        if EOS in row:
            assert all(t == PAD for t in row[row.index(EOS) + 1:])
    # A network that always says <eos> stops after one token.
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.fill_(-10.0)
        net.head.bias[EOS] = 10.0
    out = net.generate(prefix, max_len=7, method=method, generator=torch.Generator().manual_seed(0))
    assert out.tolist() == [[BOS, EOS], [BOS, EOS]] and decode(TOK, out) == ["", ""]


def test_short_prompts_and_caption_accuracy():
    world = ShapesWorld(10**6, 16, 64, 64, 0, T2V_WORLD)
    scene, rng = world.scene(3)
    short = short_prompt(scene, rng)
    assert short.startswith("a ") and scene.objects[0].shape in short and not TOK.unknown(short)
    truth = [world.scene(i)[0].caption() for i in range(20)]
    perfect = caption_accuracy(truth, truth)
    assert perfect["all"] == perfect["well_formed"] == 1.0
    broken = caption_accuracy(["a red circle"] * 20, truth)
    assert broken["well_formed"] == 0.0 and broken["colour"] == 0.0
    assert caption_attributes(truth[0])["background"] in T2V_WORLD.backgrounds


def test_upsampler_learns_at_tiny_size_and_rejects_bad_prompts():
    """Measured (seed 0, 4000 pairs, width 64): well-formed captions come first (200 steps:
    1.00 well-formed, 0.10 of named attributes kept); copying from the prefix comes later
    (1000 steps: 1.00 kept). 600 steps must keep >= 0.8."""
    from sora_edu.train.captioning import CaptionModule, PromptPairsDataModule
    import lightning.pytorch as pl

    pl.seed_everything(0)
    data = PromptPairsDataModule(num_train=4000, num_val=64, batch_size=64)
    module = CaptionModule(PrefixLM(len(TOK), "text", dim=64, depth=2, heads=4), lr=3e-3, warmup_steps=20)
    pl.Trainer(max_steps=600, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0).fit(module, data)
    shorts, _ = data.pairs(40, seed=99)
    out = module.upsample(shorts, n=1, method="greedy")
    from sora_edu.train.text_video import complete_prompt

    kept, formed = [], []
    for short, (caption,) in zip(shorts, out):
        named = complete_prompt(short)[1]
        got = caption_attributes(caption)
        formed.append(got is not None)
        kept.append(got is not None and all(got[k] == v for k, v in named.items()))
    print("upsampler: well-formed", np.mean(formed), "kept", np.mean(kept))
    assert np.mean(formed) >= 0.9 and np.mean(kept) >= 0.8, (np.mean(formed), np.mean(kept))
    samples = module.upsample(["a red circle"], n=6, method="sample", temperature=1.0, seed=1)[0]
    assert len(set(samples)) >= 2  # one short prompt, several detailed ones
    assert samples == module.upsample(["a red circle"], n=6, method="sample", temperature=1.0, seed=1)[0]
    with pytest.raises(ValueError, match="empty prompt"):
        module.upsample([" "])
    with pytest.raises(ValueError, match="unknown words"):
        module.upsample(["a shiny red circle"])


def test_recaption_is_deterministic_and_cached(tmp_path):
    from sora_edu.train.captioning import CaptionModule

    torch.manual_seed(0)
    module = CaptionModule(PrefixLM(len(TOK), "video", dim=32, depth=1, heads=2, in_channels=4, patch_size=(1, 2, 2)),
                           max_len=8)
    latents = torch.randn(6, 4, 2, 4, 4)
    first = recaption(module, latents, str(tmp_path / "r.json"))
    assert len(first) == 6 and (tmp_path / "r.json").exists()
    assert first == module.caption(latents, "greedy")  # greedy decoding: the same every time
    with torch.no_grad():
        module.net.head.weight.add_(1.0)  # a changed model ...
    assert recaption(module, latents, str(tmp_path / "r.json")) == first  # ... but the cache answers
    # a captioner given as a function is loaded only when the captions are not cached
    def must_not_load():
        raise AssertionError("the captions are cached: no captioner should be loaded")
    assert recaption(must_not_load, latents, str(tmp_path / "r.json")) == first
    assert recaption(lambda: module, latents, str(tmp_path / "fresh.json")) == module.caption(latents, "greedy")


def test_text_video_data_checks_its_caption_options():
    from sora_edu.train.text_video import TextVideoDataModule

    with pytest.raises(ValueError, match="'detailed', 'alt_text' or 'recaptioned'"):
        TextVideoDataModule(captions="gpt")
    with pytest.raises(ValueError, match="recaption_mix"):
        TextVideoDataModule(captions="recaptioned", recaption_mix=1.5)


def test_video_from_starts_the_captioners_tower_from_a_clip_video_tower(monkeypatch):
    """LLaVA-style: the captioner's video tower is the CLIP's at the start of training, the data
    must be latents of the CLIP's autoencoder, and mismatched towers get a clear error."""
    from types import SimpleNamespace

    from sora_edu.models.clip import TinyCLIP
    from sora_edu.train.captioning import CaptionModule

    torch.manual_seed(0)
    clip = TinyCLIP(len(TOK), in_channels=4, patch_size=(1, 2, 2), video_dim=32, video_depth=2, text_dim=16,
                    text_depth=1, embed_dim=8)
    net = PrefixLM(len(TOK), "video", dim=32, depth=1, heads=4, in_channels=4, patch_size=(1, 2, 2), video_depth=2)
    module = CaptionModule(net, video_from="clip_t2v")
    monkeypatch.setattr(module, "_source", lambda: SimpleNamespace(net=clip))
    assert not torch.equal(net.video.embed.proj.weight, clip.video.embed.proj.weight)
    # clip_t2v.yaml reads plain vae_t2v latents: data of another autoencoder are refused
    other = SimpleNamespace(hparams={"vae": "vae_t2v", "vae_overrides": ["--model.init_args.net.init_args.latent_noise=0.3"]})
    with pytest.raises(ValueError, match="give video_overrides the same"):
        module.check_source_data(other)
    module.check_source_data(SimpleNamespace(hparams={"vae": "vae_t2v", "vae_overrides": []}))  # the same: fine
    monkeypatch.setattr(module, "check_source_data", lambda dm: None)
    module.setup("fit")
    latents = torch.randn(2, 4, 2, 4, 4)
    torch.testing.assert_close(net.video.tokens(latents), clip.video.tokens(latents))  # the same tower
    assert all(p.requires_grad for p in net.video.parameters())  # it trains on with the decoder
    with torch.no_grad():
        net.video.embed.proj.weight.add_(1.0)
    module.setup("fit")  # set up again (a second stage): the trained tower is not overwritten
    assert not torch.equal(net.video.embed.proj.weight, clip.video.embed.proj.weight)
    deeper = PrefixLM(len(TOK), "video", dim=32, depth=1, heads=4, in_channels=4, patch_size=(1, 2, 2), video_depth=3)
    with pytest.raises(ValueError, match="does not match the captioner's"):
        CaptionModule(deeper, video_from="clip_t2v").initialise_video_from(clip.video)
    with pytest.raises(ValueError, match="text prefix"):
        CaptionModule(PrefixLM(len(TOK), "text", dim=32, depth=1, heads=2), video_from="clip_t2v")


def test_init_from_starts_the_whole_captioner_from_a_trained_one(monkeypatch):
    """Fine-tuning (the image captioner from the video captioner): every weight copied at the
    start of a fit, once; the source read the same autoencoder; clear errors otherwise."""
    from types import SimpleNamespace

    from sora_edu.train.captioning import CaptionModule

    torch.manual_seed(0)
    kwargs = dict(dim=32, depth=1, heads=4, in_channels=4, patch_size=(1, 2, 2), video_depth=2)
    trained, net = PrefixLM(len(TOK), "video", **kwargs), PrefixLM(len(TOK), "video", **kwargs)
    module = CaptionModule(net, init_from="captioner", init_overrides=["--data.init_args.num_train=64"])
    monkeypatch.setattr(module, "_source", lambda: SimpleNamespace(net=trained))
    other = SimpleNamespace(hparams={"vae": "vae_t2v", "vae_overrides": []})  # captioner.yaml reads noised latents
    with pytest.raises(ValueError, match="init_from='captioner' read latents of 'vae_t2v'.*give init_overrides the same"):
        module.check_source_data(other)
    monkeypatch.setattr(module, "check_source_data", lambda dm: None)
    module.setup("fit")
    z, ids = torch.randn(2, 4, 1, 4, 4), torch.randint(4, len(TOK), (2, 6))  # one frame: an image
    mask = torch.ones_like(ids, dtype=torch.bool)
    torch.testing.assert_close(net(z, ids, mask), trained(z, ids, mask))
    with torch.no_grad():
        net.head.bias.add_(1.0)
    module.setup("fit")  # a second setup keeps what was trained since
    assert not torch.equal(net.head.bias, trained.head.bias)
    wider = PrefixLM(len(TOK), "video", **{**kwargs, "depth": 2})
    with pytest.raises(ValueError, match="does not match this one.*first mismatches: \\['blocks.1"):
        CaptionModule(wider, init_from="captioner").initialise_from(trained)
    with pytest.raises(ValueError, match="set video_from=null"):
        CaptionModule(PrefixLM(len(TOK), "video", **kwargs), video_from="clip_t2v", init_from="captioner")
