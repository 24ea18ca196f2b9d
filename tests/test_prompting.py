"""Prompting with images and videos (issue H): masks, the sampler's given frames, every
mode's lengths and guarantees, SDEdit's two ends, and the mode scores."""

import pytest
import torch

from sora_edu.data.worlds import ShapesWorld
from sora_edu.diffusion import Diffusion, sample
from sora_edu.diffusion.frames import MASKS, frame_mask, masked_input, random_frame_masks
from sora_edu.eval.modes import loop_jump, psnr, score_edit, score_seams, seam_jump
from sora_edu.train.text_video import T2V_WORLD

VAE = ["--trainer.max_steps=10", "--data.init_args.num_val=4"]
TINY = ["--trainer.max_steps=4", "--data.init_args.num_train=32", "--data.init_args.num_val=8",
        "--data.init_args.batch_size=8", "--data.init_args.height=32", "--data.init_args.width=32",
        f"--model.init_args.vae_overrides={VAE}", f"--data.init_args.vae_overrides={VAE}", "--trainer.callbacks=[]",
        "--model.init_args.net.init_args.dim=32", "--model.init_args.net.init_args.depth=2",
        "--model.init_args.net.init_args.heads=2", "--model.init_args.net.init_args.text_dim=32"]
PROMPT = "a small red circle moves left across a navy background"


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    """A tiny masked-frame model and a tiny plain text-to-video model (4 steps each: the
    guarantees tested here hold for any weights)."""
    import os

    from sora_edu.train.cached import load_or_train

    old = os.environ.get("SORA_EDU_CACHE")
    os.environ["SORA_EDU_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        masked = load_or_train("t2v_prompting", *TINY, f"--model.init_args.init_overrides={TINY}", verbose=False)
        plain = load_or_train("t2v", *TINY, verbose=False)
    finally:
        if old is None:
            del os.environ["SORA_EDU_CACHE"]
        else:
            os.environ["SORA_EDU_CACHE"] = old
    return masked, plain


@pytest.fixture(scope="module")
def pipe(modules):
    from sora_edu.prompting import VideoPipeline

    return VideoPipeline(modules[0], steps=3, guidance=2.0)


def _video(seed=0, frames=16):
    return ShapesWorld(1, frames, 32, 32, seed, T2V_WORLD).sample(0).video


# --- masks ----------------------------------------------------------------------------------

def test_frame_masks_place_given_frames_exactly():
    assert frame_mask("none", 5).tolist() == [False] * 5
    assert frame_mask("first", 5).tolist() == [True, False, False, False, False]
    assert frame_mask("last", 5).tolist() == [False, False, False, False, True]
    assert frame_mask("prefix", 5, 2).tolist() == [True, True, False, False, False]
    assert frame_mask("suffix", 5, 3).tolist() == [False, False, True, True, True]
    assert frame_mask("both_ends", 5, 1, 2).tolist() == [True, False, False, True, True]
    with pytest.raises(ValueError, match="nothing to generate"):
        frame_mask("prefix", 3, 3)
    with pytest.raises(ValueError, match="mask kind"):
        frame_mask("middle", 4)
    masks = random_frame_masks(torch.rand(500, 3, generator=torch.Generator().manual_seed(0)), 5, MASKS)
    given = masks.sum(1)
    assert (given < 5).all()  # always something to generate
    assert (given == 0).float().mean() == pytest.approx(1 / 6, abs=0.06)  # "none" one time in six
    assert not random_frame_masks(torch.rand(4, 3), 1, MASKS).any()  # images: nothing given


def test_masked_input_puts_clean_frames_and_the_mask_channel():
    x_t, given = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    out = masked_input(x_t, given, mask)
    assert out.shape == (2, 5, 3, 2, 2)
    assert torch.equal(out[0, :4, 0], given[0, :, 0]) and torch.equal(out[0, :4, 1], x_t[0, :, 1])
    assert torch.equal(out[1, :4, 2], given[1, :, 2])
    assert out[:, 4, :, 0, 0].tolist() == [[1, 0, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="mask"):
        masked_input(x_t, given, mask[:, :2])


def test_sdedit_start_time_zero_returns_the_start_and_one_ignores_it():
    d = Diffusion("flow_x0")
    model = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    start = torch.randn(2, 3, 4)
    kw = dict(sampler="euler", steps=4, start=start)
    assert torch.equal(sample(d, model, start.shape, generator=torch.Generator().manual_seed(0), t_start=0.0, **kw), start)
    full = sample(d, model, start.shape, sampler="euler", steps=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sample(d, model, start.shape, generator=torch.Generator().manual_seed(0), t_start=1.0, **kw), full)
    with pytest.raises(ValueError, match="edit strength"):
        sample(d, model, start.shape, sampler="euler", t_start=1.5, start=start)


# --- the sampler never changes given frames -----------------------------------------------

@pytest.mark.parametrize("which", [0, 1], ids=["trained_with_masks", "replacement"])
def test_sampler_keeps_given_latent_frames(modules, which):
    module = modules[which]
    shape = (2, *module.vae.latent_shape(16, 32, 32))
    given = torch.randn(shape)
    mask = torch.zeros(2, shape[2], dtype=torch.bool)
    mask[0, 0] = mask[1, -2:] = True
    out = module.sample(shape, [PROMPT, PROMPT], seed=1, given=given, mask=mask, steps=3, guidance=2.0)
    assert torch.equal(out[mask[:, None, :, None, None].expand_as(out)], given[mask[:, None, :, None, None].expand_as(given)])
    assert not torch.equal(out[0, :, 1:], given[0, :, 1:])
    torch.testing.assert_close(out, module.sample(shape, [PROMPT, PROMPT], seed=1, given=given, mask=mask, steps=3, guidance=2.0))
    with pytest.raises(ValueError, match="must be"):
        module.sample(shape, [PROMPT, PROMPT], given=given, mask=mask[:, :2], steps=2)


# --- the modes -------------------------------------------------------------------------------

def test_image_to_video_keeps_the_image_as_first_frame(pipe):
    image = _video(3)[:, 0]
    video = pipe.image_to_video(image, PROMPT, frames=16, seed=0)
    assert video.shape == (1, 3, 16, 32, 32)
    # Latent frame 0 is the image's and the decoder is causal: frame 0 is the image through the VAE.
    torch.testing.assert_close(video[0, :, 0], pipe.decode(pipe.encode(image[None, :, None]), 1)[0, :, 0])
    assert torch.equal(video, pipe.image_to_video(image, PROMPT, frames=16, seed=0))  # seeded


@pytest.mark.parametrize("direction,frames", [("forward", 8), ("forward", 14), ("backward", 5), ("backward", 12)])
def test_extend_adds_exactly_the_frames_asked_and_keeps_the_video(pipe, direction, frames):
    video = _video(1)
    out = pipe.extend(video, frames, PROMPT, direction=direction)
    assert out.shape == (1, 3, 16 + frames, 32, 32)
    kept = out[0, :, :16] if direction == "forward" else out[0, :, frames:]
    assert torch.equal(kept, video)


def test_connect_and_loop_lengths_and_ends(pipe):
    a, b = _video(1), _video(2)
    out = pipe.connect(a, b, 8, PROMPT)
    assert out.shape == (1, 3, 16 + 8 + 16, 32, 32)
    assert torch.equal(out[0, :, :16], a) and torch.equal(out[0, :, -16:], b)
    with pytest.raises(ValueError, match="multiple of 4"):
        pipe.connect(a, b, 6, PROMPT)
    looped = pipe.loop(a, 8, PROMPT)
    assert looped.shape == (1, 3, 24, 32, 32) and torch.equal(looped[0, :, :16], a)


def test_edit_strength_zero_returns_the_input_and_one_ignores_it(pipe):
    video = _video(4)[None]
    recon = pipe.decode(pipe.encode(video), 16)
    torch.testing.assert_close(pipe.edit(video, PROMPT, strength=0.0), recon)
    torch.testing.assert_close(pipe.edit(video, PROMPT, strength=1.0, seed=5),
                               pipe.text_to_video(PROMPT, 16, 32, 32, seed=5))
    with pytest.raises(ValueError, match="strength"):
        pipe.edit(video, PROMPT, strength=1.5)


def test_any_supported_size_and_clear_errors(pipe):
    assert pipe.text_to_video(PROMPT, 9, 16, 48).shape == (1, 3, 9, 16, 48)   # widescreen
    assert pipe.text_to_video(PROMPT, 5, 48, 16).shape == (1, 3, 5, 48, 16)   # vertical
    assert pipe.text_to_image(PROMPT, 32, 64, n=2).shape == (2, 3, 32, 64)
    with pytest.raises(ValueError, match="multiples of 16"):
        pipe.image_to_video(torch.zeros(3, 40, 32), PROMPT)
    with pytest.raises(ValueError, match="unknown words"):
        pipe.text_to_video("a shiny red circle")
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        pipe.extend(torch.zeros(2, 16, 32, 32), 4, PROMPT)


def test_frame_conditioning_needs_the_mask_channel():
    from sora_edu.models.dit import SpacetimeDiT
    from sora_edu.train.diffusion import DiffusionModule

    with pytest.raises(ValueError, match="extra_channels=1"):
        DiffusionModule(SpacetimeDiT(4, (1, 2, 2), dim=16, depth=1, heads=2), frame_masks=["first"])
    with pytest.raises(ValueError, match="unknown kinds"):
        DiffusionModule(SpacetimeDiT(4, (1, 2, 2), dim=16, depth=1, heads=2, extra_channels=1), frame_masks=["middle"])


# --- mode scores on ground truth -----------------------------------------------------------

def test_seam_scores_see_jumps_and_not_smooth_motion():
    world = ShapesWorld(4, 16, 64, 64, 0, T2V_WORLD)
    videos = [world.sample(i).video for i in range(4)]
    moving = next(v for v, i in zip(videos, range(4)) if world.sample(i).scene.objects[0].motion != "still")
    assert seam_jump(moving, 8) < 1.0  # a real video has no seam
    cut = torch.cat([moving[:, :8], moving.flip(1)[:, :8]], dim=1)  # jumps to the end of the track
    assert seam_jump(cut, 8) > 5.0
    scores = score_seams(torch.stack([moving, cut, -torch.ones_like(moving)]), [8])  # the last one is empty
    assert scores["smooth"] == pytest.approx(1 / 3) and scores["lost"] == pytest.approx(1 / 3)
    assert scores["median_jump_px"] > 5.0  # median of the two visible ones: (0, > 5) -> the larger
    assert loop_jump(torch.cat([moving[:, :8], moving[:, :8].flip(1)], dim=1)) < 1.0  # there and back loops
    assert psnr(moving, moving) == float("inf") and psnr(moving, -moving) < 10


def test_score_edit_separates_changed_and_kept():
    world = ShapesWorld(2, 16, 64, 64, 0, T2V_WORLD)
    sample = world.sample(0)
    obj = sample.scene.objects[0]
    asked = {"shape": obj.shape, "colour": obj.colour, "motion": obj.motion}
    right = score_edit(sample.video[None], [asked], changed="colour")
    assert right == {"changed": 1.0, "kept": 1.0}
    other = next(c for c in ("red", "green", "blue") if c != obj.colour)
    wrong = score_edit(sample.video[None], [{**asked, "colour": other}], changed="colour")
    assert wrong == {"changed": 0.0, "kept": 1.0}
