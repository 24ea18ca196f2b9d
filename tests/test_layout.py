"""Two-stage text-to-video: box coordinates, the layout planner and its training, the
video stage conditioned on a layout (its maps, the box weight, guidance, sampling)."""

import pytest
import torch

from sora_edu.models.layout import (FOURIER_REACH, REACH, LayoutPlanner, box_coordinates, box_fourier, check_boxes,
                                    fourier_channels)
from sora_edu.models.text import WordTokenizer
from sora_edu.models.unet import UNet
from sora_edu.train.layout import LayoutModule, layout_adherence, normalise_boxes, pixel_boxes
from sora_edu.train.text_video import asked, asked_in, scene_boxes, training_scenes


def test_box_coordinates_are_zero_at_the_centre_one_on_the_edges_and_clamped():
    boxes = torch.tensor([[[8.0, 4.0, 16.0, 20.0], [0.0, 0.0, 32.0, 32.0]]])  # (1, 2 frames, 4)
    uv = box_coordinates(boxes, 32, 32)
    assert uv.shape == (1, 2, 2, 32, 32)
    # frame 0: centre (12, 12), half-sizes (4, 8); pixel (x = 15.5, y = 19.5) -> (0.875, 0.9375)
    torch.testing.assert_close(uv[0, :, 0, 19, 15], torch.tensor([0.875, 0.9375]))
    torch.testing.assert_close(uv[0, :, 0, 11, 11], torch.tensor([-0.125, -0.0625]))
    assert uv[0, 0, 0].max() == REACH and uv[0, 0, 0].min() == -REACH  # far pixels all read "far"
    # frame 1 covers the frame: x runs from -1 to 1 along every row
    torch.testing.assert_close(uv[0, 0, 1, 5], (torch.arange(32) + 0.5 - 16) / 16)
    with pytest.raises(ValueError, match=r"expected boxes \(B, T, 4\)"):
        box_coordinates(boxes[0], 32, 32)
    with pytest.raises(ValueError, match="x1 > x0"):
        check_boxes(torch.tensor([[[5.0, 5.0, 5.0, 9.0]]]))


def _random_boxes(n, frames=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centre, half = torch.rand(n, frames, 2, generator=g) * 40 + 12, torch.rand(n, frames, 2, generator=g) * 9 + 3
    return torch.cat([centre - half, centre + half], -1)


def test_box_fourier_is_each_cells_mean_fourier_basis_of_the_box_coordinates():
    boxes = _random_boxes(3)
    f = box_fourier(boxes, 64, 32, frequencies=3, cell=4)
    assert f.shape == (3, fourier_channels(3), 3, 16, 8) and fourier_channels(3) == 49
    # the same basis made pixel by pixel at full resolution, then averaged over 4 x 4 blocks
    uv = box_coordinates(boxes, 64, 32).clamp(-FOURIER_REACH, FOURIER_REACH)
    k = torch.arange(1, 4) * torch.pi / FOURIER_REACH

    def basis(a):
        a = a[..., None] * k
        return torch.cat([torch.ones_like(a[..., :1]), a.cos(), a.sin()], -1)

    full = torch.einsum("bthwf,bthwg->bfgthw", basis(uv[:, 1]), basis(uv[:, 0])).flatten(1, 2)
    torch.testing.assert_close(f, torch.nn.functional.avg_pool3d(full, (1, 4, 4)), atol=1e-5, rtol=0)
    assert torch.equal(f[:, 0], torch.ones_like(f[:, 0]))  # the constant, 1 x 1
    # frame weights average the frames inside the product: the same as averaging its output
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.25, 0.75]])
    torch.testing.assert_close(box_fourier(boxes, 64, 32, frequencies=3, cell=4, frame_weights=weights),
                               torch.einsum("st,bkthw->bkshw", weights, f), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"frame_weights must be \(T', 3\)"):
        box_fourier(boxes, 64, 32, frame_weights=torch.ones(2, 4))
    with pytest.raises(ValueError, match="multiples of the cell"):
        box_fourier(boxes, 30, 32, cell=4)
    with pytest.raises(ValueError, match="frequencies must be >= 1"):
        box_fourier(boxes, 64, 32, frequencies=0)


def test_a_crosss_coverage_of_a_cell_is_linear_in_the_fourier_features_not_in_the_coordinates():
    """Why the Fourier channels (notebook 06 draws it): least squares from each 4 x 4 cell's
    channels to the share of it a cross covers, fitted on 192 boxes and scored on 64 others.
    From the mean Fourier basis the fit is close (0.055); from the cell's 16 raw (u, v) it is
    not (0.46)."""
    boxes = _random_boxes(256, 1)
    uv = box_coordinates(boxes, 64, 64)
    u, v = uv[:, 0, 0].abs(), uv[:, 1, 0].abs()
    cross = ((u < 1) & (v < 1 / 3)) | ((u < 1 / 3) & (v < 1))  # the world's cross: arms a third wide
    coverage = torch.nn.functional.avg_pool2d(cross.float()[:, None], 4)[:, 0]
    raw = uv[:, :, 0].unflatten(2, (16, 4)).unflatten(4, (16, 4)).permute(0, 2, 4, 1, 3, 5).flatten(3)
    inputs = {"raw": torch.cat([raw, torch.ones_like(raw[..., :1])], -1),
              "fourier": box_fourier(boxes, 64, 64, frequencies=4, cell=4)[:, :, 0].permute(0, 2, 3, 1)}
    errors = {}
    for name, x in inputs.items():
        w = torch.linalg.lstsq(x[:192].flatten(0, 2).double(), coverage[:192].flatten().double()[:, None]).solution
        fit = (x[192:].double() @ w)[..., 0]
        errors[name] = (fit - coverage[192:]).abs()[coverage[192:] > 0].mean().item()  # on the cells the cross touches
    assert errors["fourier"] < 0.1 < 0.3 < errors["raw"], errors


def test_boxes_round_trip_through_the_planners_space_and_come_back_as_boxes():
    boxes = scene_boxes(training_scenes(6, frames=5, height=32, width=48))
    assert boxes.shape == (6, 5, 4)
    x = normalise_boxes(boxes, 32, 48)
    assert x.shape == (6, 4, 5) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(pixel_boxes(x, 32, 48), boxes)
    swapped = x[:, [2, 3, 0, 1]]  # corners given the wrong way round
    torch.testing.assert_close(pixel_boxes(swapped, 32, 48), boxes)
    flat = pixel_boxes(torch.zeros(1, 4, 5), 32, 48)  # a point becomes a 1-pixel box around it
    torch.testing.assert_close(flat[0, 0], torch.tensor([23.5, 15.5, 24.5, 16.5]))


def test_true_boxes_adhere_and_boxes_played_backwards_move_the_wrong_way():
    scenes = training_scenes(40, frames=16, height=64, width=64)
    boxes, wanted = scene_boxes(scenes), [asked(s) for s in scenes]
    assert layout_adherence(boxes, wanted, 64, 64) == {"motion": 1.0, "size": 1.0, "inside": 1.0, "all": 1.0}
    moving = [i for i, w in enumerate(wanted) if w["motion"] != "still"]
    backwards = layout_adherence(boxes[moving].flip(1), [wanted[i] for i in moving], 64, 64)
    assert backwards["motion"] == 0.0 and backwards["size"] == 1.0
    grown = boxes.clone()
    grown[..., :2] -= 6  # every box 12 px larger: small objects read large
    small = [i for i, w in enumerate(wanted) if w["size"] == "small"]
    assert layout_adherence(grown[small], [wanted[i] for i in small], 64, 64)["size"] == 0.0
    assert asked_in([s.caption() for s in scenes]) == wanted


def test_the_planner_maps_trajectories_to_trajectories_and_ignores_padding():
    tokenizer = WordTokenizer.for_world()
    torch.manual_seed(0)
    net = LayoutPlanner(len(tokenizer), frames=6, dim=32, depth=1, heads=2, text_depth=1).eval()
    ids, mask = tokenizer.encode(["a small red cross moves left across a navy background"] * 2, max_len=16)
    longer = tokenizer.encode(["a small red cross moves left across a navy background"] * 2, max_len=24)
    x, t = torch.randn(2, 4, 6), torch.tensor([0.2, 0.9])
    out = net(x, t, {"ids": ids, "mask": mask})
    assert out.shape == (2, 4, 6)
    torch.testing.assert_close(out, net(x, t, {"ids": longer[0], "mask": longer[1]}), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0], net(x[:1], t[1:], {"ids": ids[:1], "mask": mask[:1]})[0])  # reads t
    with pytest.raises(ValueError, match=r"expected box trajectories \(B, 4, 6\)"):
        net(torch.randn(2, 6, 4), t, {"ids": ids, "mask": mask})
    with pytest.raises(ValueError, match="layout planner is text-conditional"):
        net(x, t, None)


def test_a_tiny_planner_learns_where_each_prompt_goes():
    """Seeded, 250 steps (~10 s): planned boxes move the way the caption says and have its
    size far above chance (motion 1 / 5, size 1 / 2), the same plan for the same seed."""
    import lightning.pytorch as pl

    from sora_edu.train.layout import LayoutDataModule

    pl.seed_everything(0)
    tokenizer = WordTokenizer.for_world()
    dm = LayoutDataModule(num_train=1024, num_val=64, frames=8, height=32, width=32, batch_size=128)
    net = LayoutPlanner(len(tokenizer), frames=8, dim=48, depth=2, heads=2, text_depth=1)
    module = LayoutModule(net, height=32, width=32, lr=3e-3, warmup_steps=20, steps=10)
    trainer = pl.Trainer(max_steps=250, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, dm)
    captions = tokenizer.decode(dm.val_set.tensors[1])
    boxes = module.plan(captions, seed=3)
    assert boxes.shape == (64, 8, 4)
    torch.testing.assert_close(boxes, module.plan(captions, seed=3))
    scores = layout_adherence(boxes, asked_in(captions), 32, 32)
    assert scores["motion"] >= 0.8 and scores["size"] >= 0.8 and scores["inside"] >= 0.8, scores


def _two_stage(layout_weight=1.0, frames=5):
    """A tiny two-stage model: an untrained 4x4x4 autoencoder for its grid, an untrained planner."""
    from sora_edu.models.vae import VideoAutoencoder
    from sora_edu.train.diffusion import DiffusionModule

    tokenizer = WordTokenizer.for_world()
    torch.manual_seed(0)
    vae = VideoAutoencoder(stem=[4, 4], channels=[8], temporal_down=0, z_channels=4).eval()
    net = UNet(4, (8, 16), dims=2, num_classes=None, vocab_size=len(tokenizer), text_dim=16, text_depth=1,
               temporal=True, layout_channels=2 * 4 * 4 * 4)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)  # zero at init: an output that reads its input
    module = DiffusionModule(net, objective="flow_x0", num_classes=None, clip=None, cond_drop=0.5, vae="vae_t2v",
                             layout_from="layout_t2v", layout_weight=layout_weight)
    module.__dict__["_vae"] = vae
    planner = LayoutModule(LayoutPlanner(len(tokenizer), frames=frames, dim=32, depth=1, heads=2, text_depth=1),
                           height=32, width=32, steps=4)
    module.__dict__["_planner"] = planner.eval()
    return module, tokenizer


def test_the_video_stage_reads_its_layout_folded_into_the_latent_grid():
    module, tokenizer = _two_stage()
    boxes = scene_boxes(training_scenes(2, frames=5, height=32, width=32))
    latent = (2, 4, 2, 8, 8)  # 5 frames -> 2 latent frames (frame 0 alone, then 4)
    maps = module.layout_maps(boxes, latent)
    assert maps.shape == (2, 128, 2, 8, 8)
    coords = box_coordinates(boxes, 32, 32)
    # latent frame 0 is frame 0 alone; cell (row 3, column 5)'s first pixel is (y 12.5, x 20.5)
    torch.testing.assert_close(maps[:, 0, 0, 3, 5], coords[:, 0, 0, 12, 20])
    torch.testing.assert_close(maps[:, 64, 0, 3, 5], coords[:, 1, 0, 12, 20])
    with pytest.raises(ValueError, match="3 frames of boxes make 2 latent frames, the latents have 3"):
        module.layout_maps(boxes[:, :3], (2, 4, 3, 8, 8))
    ids, mask = tokenizer.encode(["a small red cross moves left across a navy background"] * 2, max_len=16)
    batch = {"x": torch.randn(latent), "ids": ids, "mask": mask, "boxes": boxes}
    cond = module.condition(batch)
    torch.testing.assert_close(cond["layout"], maps)
    dropped, null = module.drop(cond), module.null(2, like=cond)
    assert dropped["layout"] is cond["layout"] and null["layout"] is cond["layout"]  # guidance is on the words
    assert torch.isfinite(module.training_step(batch, 0))
    with pytest.raises(ValueError, match="layouts: true"):
        module.training_step({k: v for k, v in batch.items() if k != "boxes"}, 0)
    with pytest.raises(ValueError, match=r"this U-Net draws in a layout: expected cond\['layout'\] \(2, 128, 2, 8, 8\)"):
        module.net(torch.randn(latent), torch.rand(2), {"ids": ids, "mask": mask})


def test_layout_fourier_adds_each_cells_fourier_features_after_the_coordinates():
    from sora_edu.train.diffusion import DiffusionModule

    module, _ = _two_stage()
    module.hparams.layout_fourier = 2
    boxes = scene_boxes(training_scenes(2, frames=5, height=32, width=32))
    maps = module.layout_maps(boxes, (2, 4, 2, 8, 8))
    assert maps.shape == (2, 128 + 25, 2, 8, 8)
    module.hparams.layout_fourier = 0
    torch.testing.assert_close(maps[:, :128], module.layout_maps(boxes, (2, 4, 2, 8, 8)))
    per_frame = box_fourier(boxes, 32, 32, frequencies=2, cell=4)
    torch.testing.assert_close(maps[:, 128:, 0], per_frame[:, :, 0])  # latent frame 0 is frame 0 alone
    torch.testing.assert_close(maps[:, 128:, 1], per_frame[:, :, 1:].mean(2))  # then frames 1-4
    module.hparams.layout_fourier, module.hparams.layout_coordinates = 2, False  # the features alone
    torch.testing.assert_close(module.layout_maps(boxes, (2, 4, 2, 8, 8)), maps[:, 128:])
    net = UNet(4, (8, 16), num_classes=None, vocab_size=62, text_dim=16, text_depth=1)
    with pytest.raises(ValueError, match="layout_fourier .* needs layout_from"):
        DiffusionModule(net, num_classes=None, vae="vae_t2v", layout_fourier=2)
    with pytest.raises(ValueError, match="layout_coordinates=False leaves the Fourier features alone"):
        DiffusionModule(module.net, objective="flow_x0", num_classes=None, vae="vae_t2v", layout_from="layout_t2v",
                        layout_coordinates=False)


def test_the_box_weight_weighs_the_cells_the_box_touches_and_keeps_the_loss_scale():
    module, tokenizer = _two_stage(layout_weight=5.0)
    boxes = torch.tensor([[[9.0, 9.0, 15.0, 15.0]] * 5])  # a still 6-pixel box
    weight = module.box_weight(boxes, (1, 4, 2, 8, 8))
    assert weight.shape == (1, 1, 2, 8, 8)
    touched = torch.zeros(8, 8)
    touched[1:5, 1:5] = 1  # pixels 5 .. 19 (one cell of margin) fall in cells 1 .. 4
    torch.testing.assert_close(weight[0, 0, 1], 1 + 4 * touched)
    # moving boxes: the cells the padded box touches at pixel level in any of their frames
    moving = scene_boxes(training_scenes(3, frames=5, height=32, width=32))
    pad = module.vae.space_factor
    xs = torch.arange(32) + 0.5
    in_x = (xs >= moving[..., :1] - pad) & (xs <= moving[..., 2:3] + pad)
    in_y = (xs >= moving[..., 1:2] - pad) & (xs <= moving[..., 3:] + pad)
    pixels = (in_y[..., :, None] & in_x[..., None, :])[:, None].float()  # (B, 1, T, H, W)
    torch.testing.assert_close(module.box_weight(moving, (3, 4, 2, 8, 8)),
                               1 + 4 * module.vae.fold_to_latent(pixels).amax(2))
    # Diffusion.loss: the weighted mean, divided by the weight's mean
    diffusion = module.diffusion
    x, noise, t = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 4, 2, 8, 8), torch.tensor([0.5])
    net = lambda x_t, tt, c: x_t * 0.5  # noqa: E731
    error = (net(diffusion.q_sample(x, t, noise), None, None) - diffusion.target(x, noise, t)).pow(2)
    torch.testing.assert_close(diffusion.loss(net, x, None, t=t, noise=noise, weight=weight),
                               (error * weight).mean() / weight.mean())
    torch.testing.assert_close(diffusion.loss(net, x, None, t=t, noise=noise, weight=torch.ones(1)),
                               diffusion.loss(net, x, None, t=t, noise=noise))
    from sora_edu.train.diffusion import DiffusionModule

    with pytest.raises(ValueError, match="layout_weight .* needs layout_from"):
        DiffusionModule(UNet(4, (8, 16), num_classes=None, vocab_size=62), num_classes=None, layout_weight=3.0)
    with pytest.raises(ValueError, match="layout_from .* go together"):
        DiffusionModule(UNet(4, (8, 16), num_classes=None, vocab_size=62), num_classes=None, layout_from="layout_t2v")
    with pytest.raises(ValueError, match="set vae"):
        DiffusionModule(module.net, num_classes=None, layout_from="layout_t2v")
    with pytest.raises(ValueError, match="set vocab_size too"):
        UNet(4, (8, 16), num_classes=None, layout_channels=8)


def test_two_stage_sampling_plans_seeded_boxes_or_draws_in_given_ones():
    module, _ = _two_stage()
    prompts = ["a small red cross moves left across a navy background", "a large blue square stays still on a black background"]
    shape = (2, 4, 2, 8, 8)
    a = module.sample(shape, prompts, seed=1, steps=3, guidance=2.0)
    planned = module.planned_boxes
    assert planned.shape == (2, 5, 4)
    torch.testing.assert_close(a, module.sample(shape, prompts, seed=1, steps=3, guidance=2.0))
    torch.testing.assert_close(planned, module.planner.plan(prompts, seed=1))
    given = module.sample(shape, prompts, seed=1, steps=3, guidance=2.0, boxes=planned)
    torch.testing.assert_close(given, a)  # the plan is the planner's: giving it back changes nothing
    with pytest.raises(ValueError, match=r"the layout planner plans 5 frames at 32x32 \(latents \(2, 8, 8\)\), not latents \(2, 8, 16\)"):
        module.sample((2, 4, 2, 8, 16), prompts, seed=1, steps=3)
    moved = planned.clone()
    moved[..., [0, 2]] += 6
    assert not torch.allclose(module.sample(shape, prompts, seed=1, steps=3, guidance=2.0, boxes=moved), a)


def test_plans_are_shifted_inside_the_frame_not_resized():
    from sora_edu.train.layout import inside_frame

    boxes = torch.tensor([[[-2.0, 3.0, 10.0, 15.0], [60.0, 55.0, 67.0, 66.0], [4.0, 4.0, 8.0, 8.0]]])
    out = inside_frame(boxes, 64, 64)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 3.0, 12.0, 15.0], [57.0, 53.0, 64.0, 64.0], [4.0, 4.0, 8.0, 8.0]]]))
    torch.testing.assert_close(out[..., 2:] - out[..., :2], boxes[..., 2:] - boxes[..., :2])
