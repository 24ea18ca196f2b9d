"""Text-to-video: held-out combinations, prompts, the text-conditional diffusion module,
and a learning test: a tiny text-conditional model follows its prompts, the same model
without text does not."""

import pytest
import torch

from sora_edu.data.worlds import ShapesWorld
from sora_edu.train.text_video import (HELD_OUT, T2V_WORLD, asked, complete_prompt, evaluation_prompts,
                                       held_out_prompts, is_held_out, scene_indices)


def test_training_scenes_never_hold_held_out_combinations():
    world = ShapesWorld(10**9, 16, 64, 64, 0, T2V_WORLD)
    kept = scene_indices(world, 300, held_out=False)
    assert len(kept) == 300 and not any(is_held_out(asked(world.scene(i)[0])) for i in kept)
    skipped = set(range(kept[-1])) - set(kept)
    assert skipped and all(is_held_out(asked(world.scene(i)[0])) for i in skipped)  # only those are skipped
    scenes = held_out_prompts(16)
    assert [(asked(s)["shape"], asked(s)["colour"], asked(s)["motion"]) for s in scenes[:8]] == list(HELD_OUT)
    # every value of every attribute still appears in training
    seen = [asked(world.scene(i)[0]) for i in kept]
    for key, values in (("shape", T2V_WORLD.shapes), ("colour", T2V_WORLD.colours), ("motion", T2V_WORLD.motions)):
        assert {a[key] for a in seen} == set(values)


def test_evaluation_prompts_are_captions_of_their_attributes():
    for split in ("seen", "held_out"):
        prompts, wanted = evaluation_prompts(10, split)
        assert len(prompts) == 10 and all(is_held_out(a) == (split == "held_out") for a in wanted)
        for p, a in zip(prompts, wanted):
            assert p.startswith(f"a {a['size']} {a['colour']} {a['shape']}") and a["background"] in p
    assert evaluation_prompts(5, "seen") == evaluation_prompts(5, "seen")
    with pytest.raises(ValueError, match="split must be"):
        evaluation_prompts(5, "test")


def test_complete_prompt_fills_what_the_prompt_leaves_out():
    caption, named = complete_prompt("a red circle moves left", seed=3)
    assert named == {"colour": "red", "shape": "circle", "motion": "left"}
    assert caption.startswith(("a small red circle moves left across", "a large red circle moves left across"))
    assert complete_prompt("a red circle moves left", seed=3) == (caption, named)
    _, named = complete_prompt("big white square stays still on a navy background")
    assert named == {"size": "large", "colour": "white", "shape": "square", "motion": "still", "background": "navy"}
    with pytest.raises(ValueError, match="names nothing this world knows"):
        complete_prompt("hello there")
    with pytest.raises(ValueError, match="no shape 'diamond'"):
        complete_prompt("a blue diamond")


def test_a_tiny_text_model_follows_its_prompts_and_the_null_prompt_does_not():
    """Latents stand in for videos: each colour word has its own random latent code, so
    adherence can be read off a sample (nearest code). Measured (seed 0, 300 steps, 3 s):
    prompted samples 100 % right, null-prompt (unconditional) samples 21 % (chance 1/6)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from sora_edu.models.dit import SpacetimeDiT
    from sora_edu.models.text import WordTokenizer
    from sora_edu.train.diffusion import DiffusionModule

    pl.seed_everything(0, verbose=False)
    tok = WordTokenizer.for_world()
    colours = T2V_WORLD.colours
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    codes = torch.kron(torch.kron(h, h), h)[1:1 + len(colours)]  # orthogonal +-1 codes, 8 channels
    k = torch.arange(1024) % len(colours)
    x = codes[k][:, :, None, None, None].expand(-1, -1, 1, 4, 4).contiguous()
    ids, mask = tok.encode([f"a small {colours[i]} circle" for i in k], max_len=8)

    class Batches(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(TensorDataset(x, ids, mask), batch_size=64, shuffle=True)

        def on_after_batch_transfer(self, batch, i):
            return {"x": batch[0], "ids": batch[1], "mask": batch[2]}

    net = SpacetimeDiT(8, (1, 2, 2), 32, 2, 4, vocab_size=len(tok), text_dim=32)
    module = DiffusionModule(net, objective="flow", num_classes=None, cond_drop=0.2, lr=3e-3, warmup_steps=10, clip=None)
    pl.Trainer(max_steps=300, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(module, Batches())

    def accuracy(samples, wanted):
        nearest = torch.cdist(samples.mean((2, 3, 4)), codes).argmin(1)
        return (nearest == wanted).float().mean().item()

    want = torch.arange(24) % len(colours)
    prompted = module.sample((24, 8, 1, 4, 4), [f"a small {colours[i]} circle" for i in want], seed=0, steps=10)
    unconditional = module.sample((24, 8, 1, 4, 4), [""] * 24, seed=0, steps=10)
    assert accuracy(prompted, want) >= 0.9
    assert accuracy(prompted, want) - accuracy(unconditional, want) >= 0.5
    # seeded sampling is deterministic; guidance changes the samples
    again = module.sample((24, 8, 1, 4, 4), [f"a small {colours[i]} circle" for i in want], seed=0, steps=10)
    assert torch.equal(prompted, again)
    guided = module.sample((24, 8, 1, 4, 4), [f"a small {colours[i]} circle" for i in want], seed=0, steps=10, guidance=3.0)
    assert not torch.equal(prompted, guided) and accuracy(guided, want) >= 0.9
    # the null condition is the empty prompt, padded like the condition
    null = module.null(2, like={"ids": torch.zeros(2, 8, dtype=torch.long)})
    assert tok.decode(null["ids"]) == ["", ""] and null["ids"].shape == (2, 8) and null["mask"].sum() == 4


def test_a_larger_cached_latent_set_serves_a_smaller_one(tmp_path, monkeypatch):
    """The first n training scenes are a prefix of the first N > n: the captioner's 2000
    videos come from the text-to-video model's 8000, not a second encoding."""
    from test_cache import TINY_VAE

    from sora_edu.train.text_video import TextVideoDataModule

    monkeypatch.setenv("SORA_EDU_CACHE", str(tmp_path))
    size = dict(vae="vae_kl", vae_overrides=TINY_VAE, num_val=4, frames=5, height=16, width=16, batch_size=4)
    big = TextVideoDataModule(num_train=12, **size)
    big.setup()
    small = TextVideoDataModule(num_train=5, **size)
    small.setup()
    torch.testing.assert_close(small.train_set.latents, big.train_set.latents[:5], rtol=0, atol=0)
    assert torch.equal(small.train_set.ids, big.train_set.ids[:5])
    sets = sorted(p.parent.name.rsplit("-n", 1)[1] for p in (tmp_path / "latents" / "text_video").glob("*/captions.json"))
    assert sets == ["12", "4"]  # training 12 and validation 4; the 5 were never encoded on their own
    # a set larger than any cached one is encoded (and cached) afresh
    larger = TextVideoDataModule(num_train=14, **size)
    larger.setup()
    torch.testing.assert_close(larger.train_set.latents[:12], big.train_set.latents, rtol=1e-5, atol=1e-5)
    # encoded under bf16 autocast: close to the fp32 latents, and cached apart from them
    half = TextVideoDataModule(num_train=12, encode_bf16=True, **size)
    half.setup()
    assert not torch.equal(half.train_set.latents, big.train_set.latents)
    scale = big.train_set.latents.abs().max()
    torch.testing.assert_close(half.train_set.latents / scale, big.train_set.latents / scale, rtol=0, atol=0.03)
    assert len(list((tmp_path / "latents" / "text_video").glob("*/captions.json"))) == 3 + 2


def test_shape_maps_are_the_rendered_coverage_pooled_to_the_latent_grid_and_cached(tmp_path, monkeypatch):
    from test_cache import TINY_VAE

    from sora_edu.data.worlds import SHAPES, ShapesWorld
    from sora_edu.train.text_video import T2V_WORLD, _ENDLESS, TextVideoDataModule, scene_indices

    monkeypatch.setenv("SORA_EDU_CACHE", str(tmp_path))
    size = dict(vae="vae_kl", vae_overrides=TINY_VAE, num_val=4, frames=5, height=16, width=16, batch_size=4)
    dm = TextVideoDataModule(num_train=6, shape_maps=True, **size)
    dm.prepare_data()  # the tiny autoencoder, trained on videos of its own
    rendered = []
    samples = ShapesWorld.samples
    monkeypatch.setattr(ShapesWorld, "samples", lambda self, idx: rendered.extend(idx) or samples(self, idx))
    dm.setup()
    assert len(rendered) == 6 + 4  # the maps come from the render that was encoded: each clip drawn once
    monkeypatch.setattr(ShapesWorld, "samples", samples)
    maps = dm.train_set.shape_maps
    assert maps.shape == (6, len(SHAPES), *dm.vae.latent_shape(5, 16, 16)[1:]) and maps.dtype == torch.bfloat16
    world = ShapesWorld(_ENDLESS, 5, 16, 16, 0, T2V_WORLD, shape_maps=True)
    samples = world.samples(scene_indices(world, 6, held_out=False))
    pooled = dm.vae.pool_to_latent(torch.stack([s.shape_map for s in samples]))
    torch.testing.assert_close(maps.float(), pooled, atol=4e-3, rtol=0)  # bf16
    # every clip shows its caption's shape, and nothing else
    for clip, sample in zip(maps, samples):
        shape = next(s for s in SHAPES if f" {s} " in sample.caption)
        assert clip[SHAPES.index(shape)].sum() > 0 and clip.sum() == clip[SHAPES.index(shape)].sum()
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["shape_map"].shape == (4, *maps.shape[1:]) and batch["x"].shape[0] == 4
    # cached beside the latents: a second data module reads them instead of rendering
    monkeypatch.setattr(ShapesWorld, "samples", lambda *a, **k: pytest.fail("rendered again"))
    again = TextVideoDataModule(num_train=6, shape_maps=True, **size)
    again.setup()
    assert torch.equal(again.train_set.shape_maps, maps)
    fewer = TextVideoDataModule(num_train=3, shape_maps=True, **size)  # served from the 6 clips' folder, maps too
    fewer.setup()
    assert torch.equal(fewer.train_set.shape_maps, maps[:3])
    plain = TextVideoDataModule(num_train=6, **size)
    plain.setup()
    assert plain.train_set.shape_maps is None and "shape_map" not in plain.on_after_batch_transfer(
        next(iter(plain.train_dataloader())), 0)


def test_oversample_draws_clips_with_the_phrase_that_many_times_as_often():
    from sora_edu.models.text import WordTokenizer
    from sora_edu.train.text_video import TextVideoDataModule, _Latents

    captions = ["a small red cross moves left across a black background",   # both words: x 4 x 0.5
                "a large red cross stays still on a black background",      # "cross" only: x 4
                "a small blue circle moves up across a navy background",    # neither ("small" alone is not the phrase)
                "a small green cross stays still on a gray background"] * 50
    ids, mask = WordTokenizer.for_world().encode(captions, max_len=24)
    dm = TextVideoDataModule(batch_size=20, oversample={"cross": 4.0, "small cross": 0.5})
    dm.train_set = _Latents(torch.zeros(len(captions), 1, 1, 1, 1), ids, mask)
    torch.testing.assert_close(dm.sampling_weights()[:4], torch.tensor([2.0, 4.0, 1.0, 2.0], dtype=torch.float64))
    drawn = torch.cat([batch["ids"] for batch in dm.train_dataloader()])
    assert len(drawn) == len(captions)  # an epoch is still num_train draws
    circles = (drawn == WordTokenizer.for_world().index["circle"]).any(1).float().mean()
    assert 0.05 < circles < 0.17  # 1 / 9 of the weight (0.08 in this seeded draw of 200)
    plain = TextVideoDataModule(batch_size=20)
    plain.train_set = dm.train_set
    assert torch.equal(plain.sampling_weights(), torch.ones(len(captions), dtype=torch.float64))
    with pytest.raises(ValueError, match="oversample factors must be > 0"):
        TextVideoDataModule(oversample={"cross": 0.0})


def test_cell_classes_put_background_first_and_the_balanced_loss_weighs_object_cells_apart():
    from sora_edu.train.segmentation import balanced_soft_ce, cell_classes

    cells = torch.tensor([[[0.0, 0.5, 1.0]], [[0.0, 0.25, 0.0]]])[None]  # (B=1, S=2, 1, 3): two shapes, 3 cells
    classes = cell_classes(cells)
    torch.testing.assert_close(classes[0, :, 0], torch.tensor([[1.0, 0.25, 0.0], [0.0, 0.5, 1.0], [0.0, 0.25, 0.0]]))
    logits = torch.tensor([[[2.0, 0.0, -1.0]], [[0.0, 1.0, 3.0]], [[-1.0, 0.5, 0.0]]])[None]
    ce = -(classes * torch.log_softmax(logits, 1)).sum(1)[0, 0]  # per cell
    # cells 1 and 2 are touched by a shape, cell 0 is background only: the two groups' means added
    torch.testing.assert_close(balanced_soft_ce(logits, classes), ce[1:].mean() + ce[0])
    # the class axis may be the last one, as for tokens (B, N, K)
    torch.testing.assert_close(balanced_soft_ce(logits.flatten(2).transpose(1, 2), classes.flatten(2).transpose(1, 2), dim=-1),
                               ce[1:].mean() + ce[0])
    # one group only (all background, or every cell touched): the plain mean, never NaN
    background = cell_classes(torch.zeros(1, 2, 1, 3))
    torch.testing.assert_close(balanced_soft_ce(logits, background), -torch.log_softmax(logits, 1)[:, 0].mean())
    assert torch.isfinite(balanced_soft_ce(logits, cell_classes(torch.full((1, 2, 1, 3), 0.5))))
