"""The causal video autoencoder and its quantisers (tiny sizes, seeded)."""

import pytest
import torch

from sora_edu.models.quantize import FSQ, VectorQuantizer
from sora_edu.models.vae import CausalConv3d, VideoAutoencoder

TINY = dict(channels=(8, 16, 16), temporal_down=2, z_channels=4)
# Same 4x4x4 compression reached another way: a causal 2x2x2 patchify stem, one conv level.
STEM = dict(channels=(16, 16), temporal_down=1, z_channels=4, stem=(2, 2), refine=4)
DENSE = dict(channels=(8, 16, 16), temporal_down=2, z_channels=4, factorised=False)
GROUP = dict(TINY, norm="group")  # latent diffusion's per-frame GroupNorm
NONORM = dict(STEM, norm="none")


@pytest.mark.parametrize("arch", [TINY, STEM, DENSE], ids=["levels", "stem", "dense3d"])
@pytest.mark.parametrize("bottleneck", ["kl", "vq", "fsq"])
@pytest.mark.parametrize("frames", [1, 5, 9, 16])
def test_encode_decode_shapes(arch, bottleneck, frames):
    torch.manual_seed(0)
    vae = VideoAutoencoder(bottleneck=bottleneck, codebook_size=16, **arch).eval()
    video = torch.rand(2, 3, frames, 16, 24) * 2 - 1
    z = vae.encode(video)
    assert z.shape == (2, vae.z_channels, 1 + -(-(frames - 1) // 4), 4, 6)
    assert z.shape[1:] == vae.latent_shape(frames, 16, 24)
    out = vae(video)
    assert out.reconstruction.shape == video.shape
    assert vae.decode(z, frames).shape == video.shape


@pytest.mark.parametrize("arch", [TINY, STEM, DENSE, GROUP, NONORM], ids=["levels", "stem", "dense3d", "group", "nonorm"])
def test_causal_future_frames_do_not_change_the_past(arch):
    torch.manual_seed(0)
    vae = VideoAutoencoder(**arch).eval()
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    changed = video.clone()
    changed[:, :, 5:] = torch.rand_like(changed[:, :, 5:])  # frames > 4 change
    with torch.no_grad():
        z, z2 = vae.encode(video), vae.encode(changed)
        # latent frame 0 sees frame 0 only; latent frame 1 sees frames 1-4
        torch.testing.assert_close(z[:, :, :2], z2[:, :, :2])
        assert not torch.allclose(z[:, :, 2:], z2[:, :, 2:])
        rec, rec2 = vae.decode(z), vae.decode(z2)
        torch.testing.assert_close(rec[:, :, :5], rec2[:, :, :5])


@pytest.mark.parametrize("arch", [TINY, STEM], ids=["levels", "stem"])
def test_first_frame_is_encoded_alone_so_an_image_is_a_video(arch):
    torch.manual_seed(0)
    vae = VideoAutoencoder(**arch).eval()
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(vae.encode(video[:, :, :1]), vae.encode(video)[:, :, :1])


def test_norm_choices_and_errors():
    from sora_edu.models.vae import Norm

    x = torch.randn(2, 8, 3, 4, 4) * 5 + 3
    y = Norm(8, "channel")(x)
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 3, 4, 4), atol=1e-5, rtol=0)  # per position, over channels
    g = Norm(8, "group")(x)
    torch.testing.assert_close(g.mean((1, 3, 4)), torch.zeros(2, 3), atol=1e-5, rtol=0)  # per frame
    assert torch.equal(Norm(8, "none")(x), x)
    with pytest.raises(ValueError, match="norm must be 'channel', 'group' or 'none'"):
        VideoAutoencoder(norm="batch")


def test_causal_conv_pads_only_the_past():
    conv = CausalConv3d(1, 1, 3)
    x = torch.zeros(1, 1, 4, 5, 5)
    y0 = conv(x)
    x[:, :, 3] = 1.0
    assert torch.equal(conv(x)[:, :, :3], y0[:, :, :3])


def test_wrong_shapes_name_the_layout():
    vae = VideoAutoencoder(**TINY)
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        vae.encode(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="multiples of 4"):
        vae.encode(torch.rand(1, 3, 5, 18, 16))
    with pytest.raises(ValueError, match=r"\(B, 4, T, H, W\)"):
        vae.decode(torch.rand(1, 3, 2, 4, 4))
    with pytest.raises(ValueError, match="bottleneck"):
        VideoAutoencoder(bottleneck="gan")


def test_vq_straight_through_gradient_is_nonzero():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=8, dim=4)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z)
    (out.z_q.pow(2).sum() + out.loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    # the forward value is the code itself
    torch.testing.assert_close(out.z_q.detach(), vq.decode_indices(out.indices))


def test_vq_dead_codes_restart():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=16, dim=2, decay=0.5, restart_threshold=0.5)
    data = torch.randn(64, 2, 1, 1)
    vq(data)  # initialise on data
    vq.codebook[3] = torch.tensor([100.0, 100.0])  # a code nobody will ever pick
    vq.embed_sum[3] = vq.codebook[3]
    for _ in range(5):
        vq(data)
    assert vq.codebook[3].abs().max() < 10, "the dead code was moved onto the data"


def test_fsq_levels_and_indices():
    fsq = FSQ((8, 5, 3))
    assert fsq.codebook_size == 120
    z = torch.randn(4, 3, 5, 5) * 3
    out = fsq(z)
    assert out.indices.min() >= 0 and out.indices.max() < 120
    for c, levels in enumerate((8, 5, 3)):
        values = out.z_q[:, c].unique()
        assert len(values) <= levels
    z.requires_grad_(True)
    fsq(z).z_q.sum().backward()
    assert z.grad.abs().sum() > 0


def test_sora_edu_fit_trains_the_vae_from_the_command_line(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "sora_edu.cli", "fit", "--config", "vae_kl.yaml", "--trainer.max_steps=3",
           "--trainer.log_every_n_steps=1",
           "--trainer.val_check_interval=3", "--trainer.enable_progress_bar=false",
           f"--trainer.logger.init_args.save_dir={tmp_path}", "--data.init_args.frames=5",
           "--data.init_args.height=16", "--data.init_args.width=16", "--data.init_args.train_crop=null",
           "--data.init_args.batch_size=2", "--data.init_args.num_val=2", "--model.init_args.net.init_args.channels=[8, 8]"]
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True, timeout=300)
    metrics = (next(tmp_path.glob("vae_kl/version_*/metrics.csv"))).read_text()
    assert "val/psnr" in metrics and "train/loss" in metrics


def test_latent_noise_decodes_noised_codes_in_training_only():
    torch.manual_seed(0)
    video = torch.rand(4, 3, 5, 16, 16) * 2 - 1
    plain, noisy = VideoAutoencoder(**TINY), VideoAutoencoder(**TINY, latent_noise=0.5)
    noisy.load_state_dict(plain.state_dict())
    plain.train(), noisy.train()  # the same seed draws the same KL sample in both
    with torch.no_grad():
        torch.manual_seed(1)
        a = plain(video)
        torch.manual_seed(1)
        b = noisy(video)
    torch.testing.assert_close(a.latents, b.latents)  # the same codes (what diffusion models) ...
    assert (a.reconstruction - b.reconstruction).abs().amax() > 1e-3  # ... decoded from noised ones
    plain.eval(), noisy.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(video).reconstruction, noisy(video).reconstruction)  # eval: no noise
    with pytest.raises(ValueError, match="latent_noise must be >= 0"):
        VideoAutoencoder(**TINY, latent_noise=-0.1)


def test_pool_to_latent_groups_frames_as_the_encoder_does():
    vae = VideoAutoencoder(stem=(4, 4), channels=(8,), temporal_down=0, z_channels=4)
    maps = torch.zeros(1, 1, 9, 16, 16)
    maps[:, :, 0, :4, :4] = 1  # frame 0, the top-left cell: latent frame 0 alone
    maps[:, :, 1:3, 4:8, :4] = 1  # half of frames 1-4 in the next cell down: half of latent frame 1
    maps[:, :, 8, :, 12:] = 1  # the last frame, last column: a quarter of latent frame 2
    cells = vae.pool_to_latent(maps)
    assert cells.shape == (1, 1) + vae.latent_shape(9, 16, 16)[1:]
    assert cells[0, 0, 0, 0, 0] == 1 and cells[0, 0, 0].sum() == 1
    assert cells[0, 0, 1, 1, 0] == 0.5 and cells[0, 0, 1].sum() == 0.5
    torch.testing.assert_close(cells[0, 0, 2, :, 3], torch.full((4,), 0.25))
    assert vae.pool_to_latent(torch.ones(2, 3, 16, 16, 16)).shape == (2, 3, 5, 4, 4)  # the end padded
    with pytest.raises(ValueError, match=r"expected maps \(B, K, T, H, W\)"):
        vae.pool_to_latent(torch.ones(3, 16, 16, 16))


def test_pool_frames_is_pool_to_latent_for_maps_pooled_in_space_first():
    vae = VideoAutoencoder(stem=(4, 4), channels=(8,), temporal_down=0, z_channels=4)
    maps = torch.rand(2, 3, 10, 16, 16)
    spaced = torch.nn.functional.avg_pool3d(maps, (1, 4, 4))
    torch.testing.assert_close(vae.pool_frames(spaced), vae.pool_to_latent(maps))
    with pytest.raises(ValueError, match=r"expected maps \(B, K, T, H', W'\)"):
        vae.pool_frames(spaced[0])


def test_frame_weights_average_each_latent_frames_own_frames():
    vae = VideoAutoencoder(stem=(4, 4), channels=(8,), temporal_down=0, z_channels=4)
    w = vae.frame_weights(16)  # frame 0 alone, then 1-4, 5-8, 9-12, and 13-15 with 15 again as padding
    assert w.shape == (5, 16)
    torch.testing.assert_close(w.sum(1), torch.ones(5))
    assert w[0, 0] == 1 and torch.equal(w[1, 1:5], torch.full((4,), 0.25)) and w[1, 5:].sum() == 0
    assert torch.equal(w[4, 13:], torch.tensor([0.25, 0.25, 0.5]))
    assert torch.equal(vae.frame_weights(1), torch.ones(1, 1))
    assert torch.equal(vae.frame_weights(5), vae.frame_weights(16)[:2, :5])


def test_semantic_latents_learn_to_name_the_shape_under_each_cell():
    """A shape-aware autoencoder: the semantic loss needs shape maps, and 200 seeded steps on
    small objects make the latent's fixed-length directions name the shape of most object
    cells (chance among the 5 shapes: 20 %; measured 20 % -> 74 %)."""
    from sora_edu.data.worlds import ShapesWorld, WorldConfig
    from sora_edu.train.autoencode import AutoencoderModule

    torch.manual_seed(0)
    world = ShapesWorld(128, 1, 64, 64, seed=0, config=WorldConfig(max_objects=1, p_occluder=0, p_pan=0),
                        shape_maps=True, size="small")
    samples = world.samples(range(128))
    video, maps = torch.stack([s.video for s in samples]), torch.stack([s.shape_map for s in samples])
    module = AutoencoderModule(VideoAutoencoder(stem=(4, 4), channels=(32,), temporal_down=0, z_channels=8),
                               l1_weight=0.0, l2_weight=1.0, semantic_weight=0.1)
    with pytest.raises(ValueError, match="shape_maps: true"):
        module._loss({"x": video[:2]})
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    accuracy = []
    for step in range(200):
        i = torch.randint(0, 128, (16,))
        loss, out = module._loss({"x": video[i], "shape_map": maps[i]})
        opt.zero_grad()
        loss.backward()
        opt.step()
        accuracy.append(float(out.stats["semantic_acc"]))
    assert sum(accuracy[:10]) / 10 < 0.35 and sum(accuracy[-20:]) / 20 > 0.5, (accuracy[:10], accuracy[-20:])
    with pytest.raises(ValueError, match="semantic_weight must be >= 0"):
        AutoencoderModule(VideoAutoencoder(**TINY), semantic_weight=-1)


def test_object_weight_weighs_the_pixels_an_object_covers_and_a_band_around_it():
    from sora_edu.train.autoencode import AutoencoderModule

    torch.manual_seed(0)
    net = VideoAutoencoder(**TINY)
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    maps = torch.zeros(2, 5, 5, 16, 16)
    maps[:, 1, :, 4:8, 4:8] = 1.0  # a square covering 1/16 of each frame
    maps[:, 2, :, 4:8, 6:8] = 1.0  # overlapping coverage counts once
    plain = AutoencoderModule(net, l1_weight=0.0, l2_weight=1.0)
    weighted = AutoencoderModule(net, l1_weight=0.5, l2_weight=1.0, object_weight=9.0)
    torch.manual_seed(1)
    loss_plain, out = plain._loss({"x": video})
    torch.manual_seed(1)
    loss_weighted, _ = weighted._loss({"x": video, "shape_map": maps})
    err = out.reconstruction - video
    w = torch.ones_like(err[:, :1])
    w[..., 2:10, 2:10] = 10.0  # the object and a 2-pixel band around it
    torch.testing.assert_close(loss_plain - out.loss, err.pow(2).mean())
    torch.testing.assert_close(loss_weighted - out.loss, 0.5 * (w * err.abs()).mean() + (w * err.pow(2)).mean())
    with pytest.raises(ValueError, match="object_weight needs per-pixel shape maps"):
        weighted._loss({"x": video})
    with pytest.raises(ValueError, match="object_weight must be >= 0"):
        AutoencoderModule(net, object_weight=-1)
