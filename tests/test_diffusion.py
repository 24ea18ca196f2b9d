"""Diffusion: schedules, forward process, objectives, samplers, guidance, the U-Net and
the training module. Samplers are checked with an *oracle* denoiser that knows x0: every
sampler must then land exactly on x0."""

import math

import pytest
import torch

from sora_edu.diffusion import Diffusion, NoiseSchedule, classifier_free_guidance, sample, timestep_embedding
from sora_edu.models.unet import UNet

OBJECTIVES = ["eps", "x0", "v", "flow", "flow_x0"]


def test_schedules_decrease_from_signal_to_noise():
    for kind in ("linear", "cosine"):
        s = NoiseSchedule(kind, 1000)
        a = s.alpha_bar
        assert a[0] > 0.99 and a[-1] < 0.01 and torch.all(a[1:] <= a[:-1])
        snr = s.snr(torch.tensor([0, 500, 999]))
        assert snr[0] > snr[1] > snr[2]
    # DDPM's linear schedule: alpha_bar_t = prod(1 - beta_s)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(NoiseSchedule("linear", 1000).alpha_bar, torch.cumprod(1 - betas, 0).float())
    # the cosine schedule's formula at t = 499
    f = lambda s: math.cos((s / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert NoiseSchedule("cosine", 1000).alpha_bar[499].item() == pytest.approx(f(500) / f(0), rel=1e-5)


def test_q_sample_matches_the_closed_form():
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    d = Diffusion("eps", "linear")
    t = torch.tensor([0, 10, 999])
    a = d.schedule.alpha_bar[t].reshape(3, 1, 1, 1)
    torch.testing.assert_close(d.q_sample(x0, t, noise), a.sqrt() * x0 + (1 - a).sqrt() * noise)
    f = Diffusion("flow")
    tf = torch.tensor([0.0, 0.25, 1.0])
    torch.testing.assert_close(f.q_sample(x0, tf, noise), (1 - tf.reshape(3, 1, 1, 1)) * x0 + tf.reshape(3, 1, 1, 1) * noise)
    assert torch.equal(f.q_sample(x0, tf, noise)[0], x0[0]) and torch.equal(f.q_sample(x0, tf, noise)[2], noise[2])


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_each_objective_target_and_its_inverse(objective):
    d = Diffusion(objective)
    x0, noise = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    t = torch.tensor([0.1, 0.5, 0.7, 0.9]) if d.is_flow else torch.tensor([3, 300, 600, 900])
    target = d.target(x0, noise, t)
    expected = {"eps": noise, "x0": x0, "flow": noise - x0, "flow_x0": x0}
    if objective == "flow_edm":  # (t x0 - (1 - t) eps) / r: unit variance for unit data at every t
        tt = t.reshape(4, 1, 1, 1)
        expected["flow_edm"] = (tt * x0 - (1 - tt) * noise) / ((1 - tt) ** 2 + tt ** 2).sqrt()
    if objective == "flow_skip":  # x0 minus EDM's skip (1 - t) / r^2 times x_t
        tt = t.reshape(4, 1, 1, 1)
        x_t = (1 - tt) * x0 + tt * noise
        expected["flow_skip"] = x0 - (1 - tt) / ((1 - tt) ** 2 + tt ** 2) * x_t
    if objective == "v":
        a = d.schedule.alpha_bar[t].reshape(4, 1, 1, 1)
        expected["v"] = a.sqrt() * noise - (1 - a).sqrt() * x0
    torch.testing.assert_close(target, expected[objective])
    # a perfect prediction of the target recovers x0 and the noise
    x0_hat, eps_hat = d.predict(target, d.q_sample(x0, t, noise), t)
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eps_hat, noise, atol=1e-4, rtol=1e-4)


def test_flow_edm_target_has_unit_variance_and_copies_at_low_noise():
    d = Diffusion("flow_edm")
    x0, noise = torch.randn(20000), torch.randn(20000)
    for t in (0.02, 0.3, 0.5, 0.9, 0.999):
        assert abs(d.target(x0, noise, torch.full((20000,), t)).var().item() - 1) < 0.05, t
    # a zero output is the input itself near t = 0 and x0 = 0 (the data mean) near t = 1
    x_t = d.q_sample(x0[:4, None], torch.full((4,), 0.001), noise[:4, None])
    torch.testing.assert_close(d.predict(torch.zeros(4, 1), x_t, torch.full((4,), 0.001))[0], x_t, atol=2e-3, rtol=0)
    torch.testing.assert_close(d.predict(torch.zeros(4, 1), x_t, torch.ones(4))[0], torch.zeros(4, 1))


def test_flow_skip_copies_at_low_noise_and_its_output_error_is_the_x0_error():
    d = Diffusion("flow_skip", loss_weight="snr_clamp")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 1, generator=g), torch.randn(4, 1, generator=g)
    x_t = d.q_sample(x0, torch.full((4,), 0.001), noise)
    torch.testing.assert_close(d.predict(torch.zeros(4, 1), x_t, torch.full((4,), 0.001))[0], x_t, atol=1e-6, rtol=2e-3)
    torch.testing.assert_close(d.predict(torch.zeros(4, 1), x_t, torch.ones(4))[0], torch.zeros(4, 1))
    # unlike flow_edm's, its output is not rescaled: an output off by e is an x0 off by e, weighted by clamp(SNR, 1, 5)
    t = torch.tensor([0.5, 0.1, 0.9, 0.3])
    off = lambda x, tt, c: d.target(x0, noise, t) + 0.5  # noqa: E731
    x0_hat = d.predict(off(None, None, None), d.q_sample(x0, t, noise), t)[0]
    torch.testing.assert_close(x0_hat - x0, torch.full((4, 1), 0.5))
    assert d.loss(off, x0, t=t, noise=noise).item() == pytest.approx(0.25 * (1 + 5 + 1 + 5) / 4)


def test_flow_skip_sigma_data_is_the_best_linear_guess_for_data_of_that_scale():
    g = torch.Generator().manual_seed(0)
    x0, noise = 0.25 * torch.randn(200_000, generator=g), torch.randn(200_000, generator=g)
    d = Diffusion("flow_skip", sigma_data=0.25)
    for t in (0.05, 0.2, 0.5):
        tt = torch.full((len(x0),), t)
        x_t = d.q_sample(x0, tt, noise)
        least_squares = (x_t * x0).sum() / (x_t * x_t).sum()  # argmin_c E (x0 - c x_t)^2
        s, n = d.coefficients(tt[:1], x_t[:1])
        assert d.c_skip(s, n).item() == pytest.approx(least_squares.item(), rel=0.05), t
        # the round trip holds at any scale: a perfect output recovers x0
        torch.testing.assert_close(d.predict(d.target(x0, noise, tt), x_t, tt)[0], x0, atol=1e-5, rtol=1e-5)
    # a small scale copies the input only near t = 0: an x0 predictor where the layout is decided
    s, n = d.coefficients(torch.tensor([0.05, 0.8]), torch.zeros(2))
    unit = Diffusion("flow_skip")
    assert d.c_skip(s, n)[0] > 0.99 and d.c_skip(s, n)[1] < 0.02 < unit.c_skip(s, n)[1]
    for bad in ({"objective": "flow_x0", "sigma_data": 0.5}, {"objective": "flow_skip", "sigma_data": 0.0}):
        with pytest.raises(ValueError, match="sigma_data is flow_skip's data scale"):
            Diffusion(**bad)


def oracle(d: Diffusion, x0: torch.Tensor):
    """A denoiser that knows the answer: the objective's target for x0 at (x_t, t)."""
    def model(x_t, t_model, cond):
        t = t_model / d.steps if d.is_flow else t_model.round().long()
        s, n = d.coefficients(t, x_t)
        noise = (x_t - s * x0) / n.clamp_min(1e-12)
        return d.target(x0, noise, t)
    return model


@pytest.mark.parametrize("objective,sampler,steps", [("eps", "ddpm", 250), ("eps", "ddpm", 1000), ("eps", "ddim", 25),
                                                     ("v", "ddim", 10), ("x0", "ddpm", 50), ("flow", "euler", 10),
                                                     ("flow", "heun", 5), ("flow_x0", "euler", 10),
                                                     ("flow_edm", "euler", 10), ("flow_edm", "heun", 5),
                                                     ("flow_skip", "euler", 10)])
def test_a_sampler_with_an_oracle_denoiser_returns_x0(objective, sampler, steps):
    d = Diffusion(objective)
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    out = sample(d, oracle(d, x0), x0.shape, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=1e-3)


def test_ddim_with_eta_one_is_ddpm():
    d = Diffusion("eps")
    torch.manual_seed(0)
    net = UNet(1, (8, 8), num_classes=None).eval()
    with torch.no_grad():  # random weights: a non-trivial denoiser
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    kw = dict(steps=20, generator=None)
    a = sample(d, net, (2, 1, 8, 8), sampler="ddpm", **{**kw, "generator": torch.Generator().manual_seed(1)})
    b = sample(d, net, (2, 1, 8, 8), sampler="ddim", eta=1.0, **{**kw, "generator": torch.Generator().manual_seed(1)})
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_guidance_scale_one_is_conditional_sampling_and_scale_s_mixes():
    calls = []

    def model(x, t, cond):
        calls.append(len(x))
        return x * 0 + cond.float().reshape(-1, 1, 1, 1)  # predicts its label

    assert classifier_free_guidance(model, 1.0) is model
    guided = classifier_free_guidance(model, 3.0, null_cond=torch.zeros(2, dtype=torch.long))
    out = guided(torch.zeros(2, 1, 2, 2), torch.zeros(2), torch.tensor([1, 2]))
    # u + s (c - u) with u = 0, c = label
    assert torch.equal(out[:, 0, 0, 0], torch.tensor([3.0, 6.0])) and calls[-1] == 4
    d = Diffusion("eps")
    unet = UNet(1, (8, 8), num_classes=3).eval()
    y, null = torch.tensor([0, 2]), torch.full((2,), 3)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = sample(d, unet, (2, 1, 8, 8), y, steps=5, generator=g())
    assert torch.equal(plain, sample(d, unet, (2, 1, 8, 8), y, steps=5, guidance=1.0, null_cond=null, generator=g()))


def test_autoguidance_adds_the_difference_to_the_weak_model():
    def model(x, t, cond):
        return x * 0 + cond.float().reshape(-1, 1, 1, 1)  # predicts its label

    def weak(x, t, cond):
        return x * 0 + 0.5 * cond.float().reshape(-1, 1, 1, 1)  # the same, half as sure

    x, t, y, null = torch.zeros(2, 1, 2, 2), torch.zeros(2), torch.tensor([1, 2]), torch.zeros(2, dtype=torch.long)
    # u + s (c - u) + a (c - w): u = 0, c = label, w = label / 2
    out = classifier_free_guidance(model, 3.0, null, weak=weak, autoguidance=2.0)(x, t, y)
    assert torch.equal(out[:, 0, 0, 0], torch.tensor([4.0, 8.0]))
    out = classifier_free_guidance(model, 1.0, weak=weak, autoguidance=2.0)(x, t, y)  # no null needed at scale 1
    assert torch.equal(out[:, 0, 0, 0], torch.tensor([2.0, 4.0]))
    with pytest.raises(ValueError, match="needs a weak model"):
        classifier_free_guidance(model, 2.0, null, autoguidance=1.0)


def test_seeded_sampling_is_deterministic():
    d = Diffusion("eps")
    unet = UNet(1, (8, 8), num_classes=3).eval()
    y = torch.tensor([0, 1])
    run = lambda seed: sample(d, unet, (2, 1, 8, 8), y, sampler="ddpm", steps=10,  # noqa: E731
                              generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


def test_bad_inputs_raise_clear_errors():
    d, f = Diffusion("eps"), Diffusion("flow")
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"timesteps must be integers in \[0, 1000\)"):
        d.q_sample(x, torch.tensor([0, 1000]), x)
    with pytest.raises(ValueError, match="timesteps must be integers"):
        d.q_sample(x, torch.tensor([0.5, 0.2]), x)
    with pytest.raises(ValueError, match=r"flow times must be floats in \[0, 1\]"):
        f.q_sample(x, torch.tensor([0.5, 1.5]), x)
    with pytest.raises(ValueError, match="noise .* must have the shape of x0"):
        d.q_sample(x, torch.tensor([0, 1]), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match=r"one time per example, t of shape \(2,\)"):
        d.q_sample(x, torch.tensor([0, 1, 2]), x)
    with pytest.raises(ValueError, match="needs a null condition"):
        sample(d, lambda x, t, c: x, (2, 1, 4, 4), torch.tensor([0, 1]), guidance=2.0)
    with pytest.raises(ValueError, match="use 'euler' or 'heun' for 'flow'"):
        sample(f, lambda x, t, c: x, (2, 1, 4, 4), sampler="ddim")
    with pytest.raises(ValueError, match="objective must be one of"):
        Diffusion("score")
    with pytest.raises(ValueError, match=r"expected x \(B, C, H, W\) or \(B, C, T, H, W\) with C = 1"):
        UNet(1, (8, 8))(torch.zeros(2, 3, 8, 8), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="multiples of 4"):
        UNet(1, (8, 8, 8))(torch.zeros(2, 1, 6, 6), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="class-conditional: pass cond"):
        UNet(1, (8, 8))(torch.zeros(2, 1, 8, 8), torch.zeros(2))


def test_timestep_embedding_and_unet_shapes():
    e = timestep_embedding(torch.tensor([0.0, 10.0]), 16)
    assert e.shape == (2, 16)
    assert torch.equal(e[0, :8], torch.ones(8)) and torch.equal(e[0, 8:], torch.zeros(8))
    video = UNet(4, (8, 16), dims=3, num_classes=6)
    z = torch.randn(2, 4, 5, 8, 8)
    assert video(z, torch.tensor([1.0, 500.0]), torch.tensor([0, 6])).shape == z.shape
    # zero-initialised output: an untrained U-Net predicts 0 (the mean of the noise)
    assert video(z, torch.tensor([1.0, 500.0]), torch.tensor([0, 6])).abs().max() == 0


def test_diffusion_module_loss_falls_at_tiny_size():
    """Measured (seed 0): 8x8 digits, 120 steps: validation loss 1.00 -> 0.22 (eps)."""
    from sora_edu.train.callbacks import History
    from sora_edu.train.cli import from_config

    cli = from_config("diffusion_digits", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                      "--trainer.enable_model_summary=false", "--trainer.enable_progress_bar=false",
                      "--trainer.max_steps=120", "--trainer.check_val_every_n_epoch=1", "--trainer.callbacks=[]",
                      "--data.init_args.height=8", "--data.init_args.width=8", "--data.init_args.batch_size=64",
                      "--data.init_args.num_train=512", "--data.init_args.num_val=128",
                      "--model.init_args.net.init_args.channels=[16, 32]")
    history = History()
    cli.trainer.callbacks.append(history)
    first = cli.trainer.validate(cli.model, cli.datamodule, verbose=False)[0]["val/loss"]
    cli.trainer.fit(cli.model, cli.datamodule)
    _, losses = history.series("val/loss")
    assert first > 0.9 and losses[-1] < 0.5 * first, (first, losses)
    y = torch.arange(10)
    a = cli.model.generate((10, 1, 8, 8), y, seed=3, steps=10)
    assert a.shape == (10, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, cli.model.generate((10, 1, 8, 8), y, seed=3, steps=10))


def test_latent_diffusion_end_to_end_at_tiny_size(tmp_path, monkeypatch):
    """The latent path: a tiny VAE is trained and cached, videos are encoded once, the
    denoiser trains on scaled latents and `generate` decodes videos."""
    from test_cache import TINY_VAE

    from sora_edu.train.cli import from_config

    monkeypatch.setenv("SORA_EDU_CACHE", str(tmp_path))
    vae = str(TINY_VAE).replace("'", '"')
    cli = from_config("diffusion_latent", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                      "--trainer.enable_model_summary=false", "--trainer.enable_progress_bar=false",
                      "--trainer.max_steps=5", "--trainer.callbacks=[]",
                      f"--model.init_args.vae_overrides={vae}", f"--data.init_args.vae_overrides={vae}",
                      "--data.init_args.frames=5", "--data.init_args.height=16", "--data.init_args.width=16",
                      "--data.init_args.num_train=16", "--data.init_args.num_val=8", "--data.init_args.batch_size=8",
                      "--model.init_args.net.init_args.in_channels=4", "--model.init_args.net.init_args.channels=[8, 8]")
    cli.trainer.fit(cli.model, cli.datamodule)
    latents = cli.datamodule.train_set.tensors[0]
    assert latents.shape == (16, 4, 2, 2, 2)
    # the data are scaled by the VAE's scale factor: unit variance over the training set... roughly
    assert 0.5 < latents.std().item() < 2.0
    video = cli.model.generate((2, 4, 2, 2, 2), torch.tensor([0, 5]), frames=5, steps=3)
    assert video.shape == (2, 3, 5, 16, 16) and video.abs().max() <= 1


def test_latent_model_and_data_must_use_one_vae():
    from sora_edu.train.cli import from_config

    cli = from_config("diffusion_latent", "--trainer.logger=false", "--model.init_args.vae=vae_fsq")
    with pytest.raises(ValueError, match="encoded by 'vae_kl'.*decodes with 'vae_fsq'"):
        cli.model.check_data(cli.datamodule)


def test_sample_logger_keeps_and_writes_samples(tmp_path):
    from sora_edu.train.cli import from_config
    from sora_edu.train.diffusion import SampleLogger

    cli = from_config("diffusion_digits", "--trainer.enable_checkpointing=false", "--trainer.enable_model_summary=false",
                      "--trainer.enable_progress_bar=false", "--trainer.max_steps=10", "--trainer.callbacks=[]",
                      f"--trainer.logger.init_args.save_dir={tmp_path}", "--data.init_args.height=8",
                      "--data.init_args.width=8", "--data.init_args.batch_size=32", "--data.init_args.num_train=64",
                      "--data.init_args.num_val=32", "--model.init_args.net.init_args.channels=[8, 8]")
    logger = SampleLogger(every_n_steps=4, steps=3)
    cli.trainer.callbacks.append(logger)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert [step for step, _ in logger.samples] == [4, 8, 10]
    assert logger.samples[-1][1].shape == (10, 1, 8, 8)  # one sample per class
    files = sorted(tmp_path.glob("**/samples/step_*.png"))
    assert [f.name for f in files] == ["step_000004.png", "step_000008.png", "step_000010.png"]
    with pytest.raises(ValueError, match="every_n_steps must be >= 1"):
        SampleLogger(every_n_steps=0)


def test_input_perturbation_moves_the_input_not_the_target():
    """Input perturbation (arXiv 2301.11706): the network sees x_t made with noise + perturbation,
    the target keeps the original noise (eps objective: the target *is* the noise)."""
    x0, noise, extra = torch.randn(3, 4), torch.randn(3, 4), 0.1 * torch.randn(3, 4)
    t = torch.tensor([100, 500, 900])
    d = Diffusion("eps")
    seen = []
    model = lambda x, tt, c: seen.append(x) or x  # noqa: E731 -- returns its input, records it
    loss = d.loss(model, x0, t=t, noise=noise, perturbation=extra)
    torch.testing.assert_close(seen[-1], d.q_sample(x0, t, noise + extra))
    torch.testing.assert_close(loss, (seen[-1] - noise).pow(2).mean())
    assert d.loss(model, x0, t=t, noise=noise, perturbation=torch.zeros(3, 4)) == d.loss(model, x0, t=t, noise=noise)
    # the module draws gamma * N(0, 1) per element, only when asked, and refuses a negative gamma
    from sora_edu.train.diffusion import DiffusionModule

    batch = {"x": torch.randn(64, 1, 8, 8), "y": torch.zeros(64, dtype=torch.long)}
    for gamma in (0.0, 0.5):
        module = DiffusionModule(UNet(1, (8, 16), num_classes=10), objective="flow_x0", input_perturbation=gamma)
        passed = {}
        loss = module.diffusion.loss
        module.diffusion.loss = lambda *a, **k: passed.update(k) or loss(*a, **k)  # noqa: E731,B023
        module.training_step(batch, 0)
        p = passed["perturbation"]
        assert (p is None) if gamma == 0 else (p.shape == (64, 1, 8, 8) and abs(p.std().item() - gamma) < 0.03)
    with pytest.raises(ValueError, match="input_perturbation must be >= 0"):
        DiffusionModule(UNet(1, (8, 16), num_classes=10), input_perturbation=-0.1)


def test_snr_clamp_weights_x0_errors_by_clamped_snr():
    """Flow path: SNR = ((1 - t) / t)^2, so t = 0.5 weighs 1, t = 0.1 weighs gamma = 5 and t = 0.9 weighs 1."""
    x0 = torch.randn(3, 4)
    noise = torch.randn(3, 4)
    t = torch.tensor([0.5, 0.1, 0.9])
    error = torch.tensor([[1.0], [1.0], [2.0]])
    model = lambda x, tt, c: x0 + error  # noqa: E731 -- an x0 predictor off by a known amount
    plain = Diffusion("flow_x0").loss(model, x0, t=t, noise=noise)
    weighted = Diffusion("flow_x0", loss_weight="snr_clamp").loss(model, x0, t=t, noise=noise)
    assert plain.item() == pytest.approx((1 + 1 + 4) / 3)
    assert weighted.item() == pytest.approx((1 + 5 + 4) / 3)
    # A higher cap: t = 0.1 has SNR 81, so gamma = 20 weighs it 20.
    capped = Diffusion("flow_x0", loss_weight="snr_clamp", snr_gamma=20.0).loss(model, x0, t=t, noise=noise)
    assert capped.item() == pytest.approx((1 + 20 + 4) / 3)
    # flow_edm's output error is r / n times its x0 error: the weight is applied to the x0 error all the same.
    edm = Diffusion("flow_edm", loss_weight="snr_clamp")
    out = lambda x, tt, c: edm.target(x0, noise, t) + error  # noqa: E731
    x0_error = (edm.predict(out(None, None, None), edm.q_sample(x0, t, noise), t)[0] - x0).pow(2)
    expected = (x0_error * torch.tensor([[1.0], [5.0], [1.0]])).mean()
    assert edm.loss(out, x0, t=t, noise=noise).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="x0 objectives"):
        Diffusion("flow", loss_weight="snr_clamp")
    with pytest.raises(ValueError, match="snr_gamma"):
        Diffusion("flow_x0", loss_weight="snr_clamp", snr_gamma=0.5)
    # The config options reach the module's process (t2v_unet.yaml sets them).
    from sora_edu.train.cli import from_config

    cli = from_config("t2v_unet", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                      "--model.init_args.text_from=null", "--model.init_args.snr_gamma=20")
    assert (cli.model.diffusion.loss_weight, cli.model.diffusion.snr_gamma) == ("snr_clamp", 20.0)


def test_channel_latent_norm_standardises_and_inverts():
    from sora_edu.models.dit import SpacetimeDiT
    from sora_edu.train.diffusion import DiffusionModule

    module = DiffusionModule(SpacetimeDiT(4, (1, 2, 2), dim=16, depth=1, heads=2), objective="flow_x0",
                             num_classes=None, latent_norm="channel")
    z = torch.randn(16, 4, 2, 4, 4) * torch.tensor([0.5, 1, 2, 3]).view(1, 4, 1, 1, 1) + torch.tensor([1.2, 0, -1, 3]).view(1, 4, 1, 1, 1)
    with pytest.raises(RuntimeError, match="latent statistics"):
        module.normalise(z)
    module.measure_latents(z)
    x = module.normalise(z)
    torch.testing.assert_close(x.mean((0, 2, 3, 4)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std((0, 2, 3, 4)), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(module.denormalise(x), z)
    assert "latent_mean" in module.state_dict()  # travels with the checkpoint
    with pytest.raises(ValueError, match="latent_norm"):
        DiffusionModule(SpacetimeDiT(4, (1, 2, 2), dim=16, depth=1, heads=2), latent_norm="pixel")


def test_flow_shift_moves_times_towards_noise_and_samplers_follow():
    d = Diffusion("flow_x0", flow_shift=3.0)
    u = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(d.shift(u), torch.tensor([0.0, 0.5, 0.75, 1.0]))  # SD3: s t / (1 + (s - 1) t)
    t = d.sample_t(20_000, generator=torch.Generator().manual_seed(0))
    assert 0.74 < t.median() < 0.76  # uniform times have median 0.5; shifted by 3: 0.75
    assert Diffusion("flow_x0").shift(u) is u
    torch.testing.assert_close(d.unshift(d.shift(u)), u)
    # The sampler's grid is shifted too (more steps near noise), and an oracle still lands on x0.
    seen = []
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    base = oracle(d, x0)
    out = sample(d, lambda x, tm, c: seen.append(float(tm[0]) / d.steps) or base(x, tm, c), x0.shape,
                 sampler="euler", steps=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=1e-3)
    assert seen == pytest.approx([1.0, 0.9, 0.75, 0.5])
    # SDEdit from t_start keeps its start time under a shift.
    seen.clear()
    sample(d, lambda x, tm, c: seen.append(float(tm[0]) / d.steps) or base(x, tm, c), x0.shape, sampler="euler",
           steps=4, start=x0, t_start=0.5, generator=torch.Generator().manual_seed(0))
    assert seen[0] == pytest.approx(0.5) and len(seen) == 2
    with pytest.raises(ValueError, match="flow_shift must be > 0"):
        Diffusion("flow", flow_shift=0.0)
    # The config option reaches the module's process.
    from sora_edu.train.cli import from_config

    cli = from_config("dit_class", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                      "--model.init_args.flow_shift=3.0")
    assert cli.model.diffusion.flow_shift == 3.0


def test_text_unet_runs_frame_by_frame_and_reads_the_prompt():
    from sora_edu.models.text import WordTokenizer

    torch.manual_seed(0)
    tokenizer = WordTokenizer.for_world()
    net = UNet(4, (8, 16), dims=2, num_classes=None, vocab_size=len(tokenizer), text_dim=32).eval()
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)  # zero at init: make the output visible
    for block in [*net.down, *net.up]:
        for b in block:
            torch.nn.init.normal_(b.conv2.weight, std=0.1)
    ids, mask = tokenizer.encode(["a red circle moves left", "a blue square moves up"], max_len=12)
    cond, t = {"ids": ids, "mask": mask}, torch.tensor([0.3, 0.7])
    video = torch.randn(2, 4, 3, 8, 8)
    out = net(video, t, cond)
    assert out.shape == video.shape
    # A video is its frames, each denoised as an image under the same condition.
    for f in range(3):
        torch.testing.assert_close(out[:, :, f], net(video[:, :, f], t, cond))
    swapped = {"ids": ids.flip(0), "mask": mask.flip(0)}
    assert (net(video, t, swapped) - out).abs().amax() > 1e-3  # the prompt changes the output
    with pytest.raises(ValueError, match="text-conditional"):
        net(video, t, None)
    with pytest.raises(ValueError, match="classes or on text"):
        UNet(4, (8, 16), num_classes=3, vocab_size=10)


def test_temporal_unet_mixes_frames_and_starts_as_the_frame_by_frame_model():
    torch.manual_seed(0)
    spatial = UNet(4, (8, 16), dims=2, num_classes=3).eval()
    for block in [*spatial.down, *spatial.up, spatial.mid]:
        for b in (block if isinstance(block, torch.nn.ModuleList) else [block]):
            torch.nn.init.normal_(b.conv2.weight, std=0.1)
    torch.nn.init.normal_(spatial.conv_out.weight, std=0.1)
    video, t, y = torch.randn(2, 4, 5, 8, 8), torch.tensor([0.3, 0.7]), torch.tensor([0, 2])
    net = UNet(4, (8, 16), dims=2, num_classes=3, temporal=True).eval()
    assert len(net.temporal) == 5  # after 2 down blocks, the middle one and 2 up blocks
    # An image U-Net's weights load into it (strict=False: the temporal convs are new) and,
    # the temporal convs being zero at init, it is the same frame-by-frame model.
    missing, unexpected = net.load_state_dict(spatial.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("temporal.") for k in missing)
    torch.testing.assert_close(net(video, t, y), spatial(video, t, y))
    for m in net.temporal:
        torch.nn.init.normal_(m.conv.weight, std=0.3)
    out = net(video, t, y)
    # Frame 4 now reads frame 0 (5 kernel-3 convolutions reach 5 frames away); the spatial model does not.
    later = video.clone()
    later[:, :, 0] += 1.0
    assert (net(later, t, y)[:, :, 4] - out[:, :, 4]).abs().amax() > 1e-4
    torch.testing.assert_close(spatial(later, t, y)[:, :, 4], spatial(video, t, y)[:, :, 4])
    # Each video's frames mix only with its own: the batch stays independent.
    torch.testing.assert_close(net(video[:1], t[:1], y[:1]), out[:1])
    # Images (and one-frame videos) have no time to mix: the spatial U-Net alone.
    torch.testing.assert_close(net(video[:, :, 0], t, y), spatial(video[:, :, 0], t, y))
    torch.testing.assert_close(net(video[:, :, :1], t, y), spatial(video[:, :, :1], t, y))
    with pytest.raises(ValueError, match="dims=3 already mixes time"):
        UNet(4, (8, 16), dims=3, temporal=True)


def test_unet_coordinates_and_scale_shift_options():
    from sora_edu.models.unet import coordinates

    grid = coordinates(torch.zeros(2, 8, 5, 4, 6))
    assert grid.shape == (2, 3, 5, 4, 6)
    torch.testing.assert_close(grid[0, 0, :, 0, 0], torch.linspace(-1, 1, 5))  # frame
    torch.testing.assert_close(grid[0, 1, 0, :, 0], torch.linspace(-1, 1, 4))  # row
    torch.testing.assert_close(grid[0, 2, 0, 0, :], torch.linspace(-1, 1, 6))  # column
    image = coordinates(torch.zeros(1, 8, 4, 6))
    assert image.shape == (1, 3, 4, 6) and torch.all(image[0, 0] == -1)  # an image is the first frame
    torch.testing.assert_close(image[0], grid[0, :, 0])

    torch.manual_seed(0)
    y, t = torch.tensor([0, 2]), torch.tensor([0.3, 0.7])
    for kwargs in ({"coords": True}, {"scale_shift": True}, {"coords": True, "scale_shift": True, "temporal": True}):
        net = UNet(4, (8, 16), dims=2, num_classes=3, **kwargs).eval()
        assert net.conv_in.in_channels == (7 if kwargs.get("coords") else 4)
        torch.nn.init.normal_(net.conv_out.weight, std=0.1)
        for block in [*net.down, *net.up]:
            for b in block:
                torch.nn.init.normal_(b.conv2.weight, std=0.1)
        video = torch.randn(2, 4, 3, 8, 8)
        out = net(video, t, y)
        assert out.shape == video.shape
        assert (net(video, t, y.flip(0)) - out).abs().amax() > 1e-4  # the label still reaches the output
    # With coordinates, the same content in another frame (or place) gives another output: the net
    # knows where it is; without them (and no temporal mixing) every frame is treated alike.
    same = torch.randn(1, 4, 1, 8, 8).expand(1, 4, 3, 8, 8).contiguous()
    for coords in (False, True):
        net = UNet(4, (8, 16), dims=2, num_classes=3, coords=coords).eval()
        torch.nn.init.normal_(net.conv_out.weight, std=0.1)
        out = net(same, t[:1], y[:1])
        assert ((out[:, :, 0] - out[:, :, 2]).abs().amax() > 1e-4) == coords



def test_text_encoder_starts_from_a_clip_text_tower():
    from sora_edu.models.clip import TinyCLIP
    from sora_edu.models.text import WordTokenizer
    from sora_edu.train.cached import cached_path
    from sora_edu.train.diffusion import DiffusionModule

    tokenizer = WordTokenizer.for_world()
    torch.manual_seed(0)
    clip = TinyCLIP(len(tokenizer), in_channels=4, video_dim=32, video_depth=1, text_dim=32, text_depth=1, embed_dim=16)
    net = UNet(4, (8, 16), dims=2, num_classes=None, vocab_size=len(tokenizer), text_dim=32, text_depth=1)
    module = DiffusionModule(net, objective="flow_x0", num_classes=None, text_from="clip_t2v")
    ids, mask = tokenizer.encode(["a red circle moves left", "a blue square stays still"], max_len=10)
    before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("text.")}
    assert (net.text(ids, mask)[1] - clip.text(ids, mask)[1]).abs().amax() > 1e-3
    module.initialise_text_from(clip.text)
    torch.testing.assert_close(net.text(ids, mask), clip.text(ids, mask))
    for k, v in net.state_dict().items():  # only the text encoder changed
        if not k.startswith("text."):
            assert torch.equal(v, before[k]), k
    wider = TinyCLIP(len(tokenizer), in_channels=4, video_dim=32, video_depth=1, text_dim=64, text_depth=1, embed_dim=16)
    with pytest.raises(ValueError, match="does not match this network's text encoder"):
        module.initialise_text_from(wider.text)
    with pytest.raises(ValueError, match="text_from needs a text-conditional network"):
        DiffusionModule(UNet(4, (8, 16), num_classes=3), num_classes=3, text_from="clip_t2v")
    # The cache key follows the CLIP it started from: another CLIP, another model.
    assert cached_path("t2v_unet") != cached_path("t2v_unet", '--model.init_args.text_overrides=["--trainer.max_steps=10"]')


def test_text_lr_scale_slows_or_freezes_the_text_encoder():
    from types import SimpleNamespace

    from sora_edu.models.text import WordTokenizer
    from sora_edu.train.diffusion import DiffusionModule

    tokenizer = WordTokenizer.for_world()
    ids, mask = tokenizer.encode(["a red circle moves left", "a blue square stays still"], max_len=10)
    batch = {"x": torch.randn(2, 4, 3, 8, 8)}
    for scale in (0.0, 0.1, 1.0):
        torch.manual_seed(0)
        net = UNet(4, (8, 16), dims=2, num_classes=None, vocab_size=len(tokenizer), text_dim=16, text_depth=1)
        module = DiffusionModule(net, objective="flow_x0", num_classes=None, clip=None, lr=1e-2, text_lr_scale=scale)
        module._trainer = SimpleNamespace(estimated_stepping_batches=10)
        opt = module.configure_optimizers()["optimizer"]
        text = {id(p) for p in net.text.parameters()}
        lrs = {("text" if id(p) in text else "net"): group["initial_lr"] for group in opt.param_groups for p in group["params"]}
        assert lrs == ({"net": 1e-2} if scale == 0 else {"net": 1e-2, "text": pytest.approx(1e-2 * scale)})
        with torch.no_grad():  # zero-initialised layers would keep every gradient from the text at first
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        before = [p.clone() for p in net.text.parameters()]
        module.diffusion.loss(net, batch["x"], {"ids": ids, "mask": mask}).backward()
        opt.step()
        moved = [not torch.equal(b, p) for b, p in zip(before, net.text.parameters())]
        assert any(moved) == (scale > 0) and all(p.requires_grad == (scale > 0) for p in net.text.parameters())
    with pytest.raises(ValueError, match="text_lr_scale multiplies the learning rate"):
        DiffusionModule(net, objective="flow_x0", num_classes=None, text_lr_scale=-1)


def test_size_multiple_says_which_latent_sizes_a_network_takes():
    from sora_edu.models.dit import SpacetimeDiT

    assert UNet(4, (8, 16, 32)).size_multiple == 4 and UNet(4, (8,)).size_multiple == 1
    assert SpacetimeDiT(in_channels=4, patch_size=(1, 4, 4), dim=32, depth=1, heads=2, num_classes=3).size_multiple == 4
    assert SpacetimeDiT(in_channels=4, patch_size=(1, 2, 3), dim=32, depth=1, heads=2, num_classes=3).size_multiple == 6
    with pytest.raises(ValueError, match="multiples of 4"):
        UNet(4, (8, 16, 32), num_classes=3)(torch.zeros(1, 4, 6, 8), torch.zeros(1), torch.tensor([0]))


class _Recorder(torch.nn.Module):
    """A stand-in denoiser with 2 + 2 input channels that records the extra ones it is fed."""
    in_channels, extra_channels = 2, 2

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.fed = []

    def forward(self, x, t, cond):
        self.fed.append(x[:, 2:].detach().clone())
        return self.w * x[:, :2] + 0.1 * x[:, 2:]


def test_self_conditioning_feeds_the_previous_x0_estimate():
    from sora_edu.train.diffusion import DiffusionModule

    m = DiffusionModule(_Recorder(), objective="flow_x0", num_classes=None, self_condition=True, clip=None)
    x0, noise, t = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3), torch.tensor([0.2, 0.5, 0.7, 0.9])
    # training: rows where `use` is True get the estimate of a first pass fed zeros, the rest zeros
    use = torch.tensor([True, False, True, False])
    x_t = m.diffusion.q_sample(x0, t, noise)
    net = m._self_conditioned_training(t, use)
    net(x_t, m.diffusion.model_time(t), None)
    first, second = m.net.fed
    assert first.shape == (2, 2, 3, 3) and not first.any()  # the first pass: the `use` rows, zeros in
    torch.testing.assert_close(second[use], 0.5 * x_t[use])  # their x0 estimate (flow_x0: the output itself)
    assert not second[~use].any()
    # sampling: each call is fed the previous call's x0 estimate, zeros at the first
    m.net.fed.clear()
    m.sample((2, 2, 3, 3), None, steps=3)
    assert len(m.net.fed) == 3 and not m.net.fed[0].any() and m.net.fed[1].abs().sum() > 0
    # the module checks the network can take it
    with pytest.raises(ValueError, match="extra_channels = in_channels"):
        DiffusionModule(UNet(2, (8, 8), num_classes=None), objective="flow_x0", num_classes=None, self_condition=True)
    net = UNet(2, (8, 8), num_classes=None, extra_channels=2)
    assert net(torch.randn(1, 4, 8, 8), torch.zeros(1)).shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"C = 4 \(\+2 conditioning\)"):
        net(torch.randn(1, 2, 8, 8), torch.zeros(1))


def test_unet_returns_its_bottleneck_features_in_frame_row_column_order():
    torch.manual_seed(0)
    net = UNet(4, (8, 16), dims=2, num_classes=3, temporal=True).eval()
    x, t, y = torch.randn(2, 4, 3, 8, 8), torch.tensor([10.0, 500.0]), torch.tensor([0, 1])
    out, features = net(x, t, y, features=True)
    torch.testing.assert_close(out, net(x, t, y))  # the same output either way
    assert net.feature_dim == 16 and features.shape == (2, 3 * 4 * 4, 16)  # 3 frames x 4 x 4 positions
    # frame-major (frame, row, column) order, as TubeletEmbed's tokens: without time mixing, tokens
    # 16-31 are frame 1's own 4 x 4 features, row by row
    spatial = UNet(4, (8, 16), dims=2, num_classes=3).eval()
    _, video_features = spatial(x, t, y, features=True)
    _, frame_features = spatial(x[:, :, 1], t, y, features=True)  # frame 1 as images (B, C, H, W)
    assert frame_features.shape == (2, 16, 16)
    torch.testing.assert_close(video_features[:, 16:32], frame_features)


def test_repa_aligns_the_bottleneck_to_a_frozen_clip_video_tower(monkeypatch):
    from sora_edu.models.clip import TinyCLIP
    from sora_edu.models.text import WordTokenizer
    from sora_edu.train.cached import cached_path
    from sora_edu.train.diffusion import DiffusionModule

    tokenizer = WordTokenizer.for_world()
    torch.manual_seed(0)
    clip = TinyCLIP(len(tokenizer), in_channels=4, patch_size=(1, 4, 4), video_dim=128, video_depth=1, text_dim=32,
                    text_depth=1, embed_dim=16)
    net = UNet(4, (8, 16, 32), dims=2, num_classes=None, vocab_size=len(tokenizer), text_dim=32, text_depth=1,
               temporal=True)
    module = DiffusionModule(net, objective="flow_x0", num_classes=None, clip=None, repa_from="clip_t2v")
    monkeypatch.setattr(module, "repa_tower", lambda: clip.video.requires_grad_(False))
    assert [p.shape for p in module.repa_proj.parameters()][-1] == (128,)  # the CLIP config's video width
    assert all(not k.startswith("_repa") for k in module.state_dict())  # the tower is not in the checkpoint
    ids, mask = tokenizer.encode(["a red circle moves left", "a blue square stays still"], max_len=10)
    cond = {"ids": ids, "mask": mask}
    x = torch.randn(2, 4, 3, 16, 16)  # 3 x 4 x 4 bottleneck positions = 3 x 4 x 4 CLIP tokens
    t, noise = torch.tensor([0.3, 0.8]), torch.randn(2, 4, 3, 16, 16)
    plain = module.diffusion.loss(net, x, cond, t=t, noise=noise)
    total = module._aligned_loss(x, x, cond, t, noise)
    with torch.no_grad():
        _, features = net(module.diffusion.q_sample(x, t, noise), module.diffusion.model_time(t), cond, features=True)
        cos = torch.nn.functional.cosine_similarity(module.repa_proj(features), clip.video.tokens(x), dim=-1).mean()
    torch.testing.assert_close(total, plain - 0.5 * cos)  # diffusion loss + weight x (- cosine similarity)
    total.backward()
    # at init the output layer is zero, so only REPA's term reaches the input convolution
    assert module.repa_proj[0].weight.grad.abs().sum() > 0 and net.conv_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.parameters())  # the target stays frozen
    # a grid the CLIP does not share gets a clear error; so do networks and modes it cannot serve
    with pytest.raises(ValueError, match="bottleneck has 48 positions but the CLIP video tower gives 12 tokens"):
        module._aligned_loss(torch.randn(2, 4, 3, 16, 16), torch.randn(2, 4, 3, 8, 8), cond, t, noise)
    with pytest.raises(ValueError, match="returns its features"):
        DiffusionModule(_Recorder(), objective="flow_x0", num_classes=None, repa_from="clip_t2v")
    with pytest.raises(ValueError, match="not with frame_masks or self_condition"):
        DiffusionModule(net, objective="flow_x0", num_classes=None, repa_from="clip_t2v", self_condition=True)
    # the cache key follows the CLIP it aligns to
    assert cached_path("t2v_unet", "--model.init_args.repa_from=null") != cached_path("t2v_unet") != \
        cached_path("t2v_unet", '--model.init_args.repa_overrides=["--trainer.max_steps=10"]')


def test_unet_returns_features_by_level():
    torch.manual_seed(0)
    net = UNet(4, (8, 16, 32), dims=2, num_classes=3, temporal=True).eval()
    x, t, y = torch.randn(2, 4, 3, 16, 16), torch.tensor([10.0, 500.0]), torch.tensor([0, 1])
    out, (mid, half, full) = net(x, t, y, features=["mid", 1, 0])
    torch.testing.assert_close(out, net(x, t, y))
    torch.testing.assert_close(mid, net(x, t, y, features=True)[1])  # "mid" is the bottleneck
    assert half.shape == (2, 3 * 8 * 8, 16) and full.shape == (2, 3 * 16 * 16, 8) and mid.shape == (2, 3 * 4 * 4, 32)
    assert [net.feature_width(level) for level in ("mid", 0, 1, 2, "last")] == [32, 8, 16, 32, 8]
    # "last": the up path's full-resolution features, what the output head reads
    seen = {}
    net.conv_out.register_forward_hook(lambda m, inputs, out: seen.update(h=inputs[0]))
    _, (last,) = net(x, t, y, features=["last"])
    head_input = net.norm_out(last.transpose(1, 2).reshape(2, 8, 3, 16, 16).transpose(1, 2).flatten(0, 1))
    torch.testing.assert_close(torch.nn.functional.silu(head_input), seen["h"])
    for bad in (3, -1, "top", True):
        with pytest.raises(ValueError, match=r"feature levels are 'mid', 'last' or 0 \.\. 2"):
            net(x, t, y, features=[bad])


def test_segment_weight_names_the_shape_under_each_latent_cell_from_the_noisy_input():
    from sora_edu.data.worlds import SHAPES
    from sora_edu.models.text import WordTokenizer
    from sora_edu.train.diffusion import DiffusionModule
    from sora_edu.train.segmentation import balanced_soft_ce, cell_classes

    tokenizer = WordTokenizer.for_world()
    torch.manual_seed(0)
    net = UNet(4, (8, 16), dims=2, num_classes=None, vocab_size=len(tokenizer), text_dim=16, text_depth=1, temporal=True)
    module = DiffusionModule(net, objective="flow_x0", num_classes=None, clip=None, segment_weight=0.5)
    assert module.segment_head.in_features == 8 and module.segment_head.out_features == 1 + len(SHAPES)
    ids, mask = tokenizer.encode(["a small red cross moves left", "a large blue square stays still"], max_len=10)
    cond = {"ids": ids, "mask": mask}
    x, noise, t = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 3, 8, 8), torch.tensor([0.3, 0.8])
    maps = torch.zeros(2, len(SHAPES), 3, 8, 8)
    maps[0, SHAPES.index("cross"), :, 2:4, 2:4] = 0.75  # partly covered cells
    maps[1, SHAPES.index("square"), :, 4:8, 1:5] = 1.0
    total = module._aligned_loss(x, x, cond, t, noise, shape_map=maps)
    plain = module.diffusion.loss(net, x, cond, t=t, noise=noise)
    with torch.no_grad():
        _, (last,) = net(module.diffusion.q_sample(x, t, noise), module.diffusion.model_time(t), cond, features=["last"])
        classes = cell_classes(maps).flatten(2).transpose(1, 2)
        ce = balanced_soft_ce(module.segment_head(last), classes, dim=-1)
    torch.testing.assert_close(total, plain + 0.5 * ce)
    total.backward()
    assert module.segment_head.weight.grad.abs().sum() > 0 and net.conv_in.weight.grad.abs().sum() > 0
    # the training step reads the batch's maps; without them it says where they come from
    batch = {"x": x, "ids": ids, "mask": mask}
    with pytest.raises(ValueError, match="shape_maps: true"):
        module.training_step(batch, 0)
    assert torch.isfinite(module.training_step({**batch, "shape_map": maps}, 0))
    with pytest.raises(ValueError, match="have 192 positions but the shape map has 48 latent cells"):
        module._aligned_loss(x, x, cond, t, noise, shape_map=maps[..., :4, :4])
    with pytest.raises(ValueError, match="segment_weight must be >= 0"):
        DiffusionModule(net, objective="flow_x0", num_classes=None, segment_weight=-1)
    with pytest.raises(ValueError, match="returns its features by level"):
        DiffusionModule(_Recorder(), objective="flow_x0", num_classes=None, segment_weight=0.1)
    with pytest.raises(ValueError, match="segment_weight: for the plain denoiser"):
        DiffusionModule(net, objective="flow_x0", num_classes=None, segment_weight=0.1, self_condition=True)


def test_probe_from_aligns_a_u_net_level_to_a_frozen_shape_probe_beside_repa(monkeypatch):
    from sora_edu.models.clip import TinyCLIP
    from sora_edu.models.probe import ShapeProbe
    from sora_edu.models.text import WordTokenizer
    from sora_edu.train.cached import cached_path
    from sora_edu.train.diffusion import DiffusionModule

    tokenizer = WordTokenizer.for_world()
    torch.manual_seed(0)
    clip = TinyCLIP(len(tokenizer), in_channels=4, patch_size=(1, 4, 4), video_dim=128, video_depth=1, text_dim=32,
                    text_depth=1, embed_dim=16)
    probe = ShapeProbe(in_channels=4, width=48, classes=8)  # probe_t2v's width: 96 features
    net = UNet(4, (8, 16, 32), dims=2, num_classes=None, vocab_size=len(tokenizer), text_dim=32, text_depth=1,
               temporal=True)
    module = DiffusionModule(net, objective="flow_x0", num_classes=None, clip=None, repa_from="clip_t2v",
                             repa_weight=0.2, probe_from="probe_t2v", probe_weight=0.3)
    monkeypatch.setattr(module, "repa_tower", lambda: clip.video.requires_grad_(False))
    monkeypatch.setattr(module, "probe_tower", lambda: probe.requires_grad_(False))
    assert module.probe_proj[0].in_features == 16 and module.probe_proj[-1].out_features == 96  # level 1 -> the probe
    assert all(not k.startswith("_probe") for k in module.state_dict())  # the probe is not in the checkpoint
    ids, mask = tokenizer.encode(["a small red cross moves left", "a large blue square stays still"], max_len=10)
    cond = {"ids": ids, "mask": mask}
    x = torch.randn(2, 4, 3, 16, 16)  # level 1: 3 x 8 x 8 positions = the probe's tokens
    t, noise = torch.tensor([0.3, 0.8]), torch.randn(2, 4, 3, 16, 16)
    plain = module.diffusion.loss(net, x, cond, t=t, noise=noise)
    total = module._aligned_loss(x, x, cond, t, noise)
    cos = torch.nn.functional.cosine_similarity
    with torch.no_grad():
        _, (mid, half) = net(module.diffusion.q_sample(x, t, noise), module.diffusion.model_time(t), cond,
                             features=["mid", 1])
        repa = cos(module.repa_proj(mid), clip.video.tokens(x), dim=-1).mean()
        aligned = cos(module.probe_proj(half), probe.tokens(x), dim=-1).mean()
    torch.testing.assert_close(total, plain - 0.2 * repa - 0.3 * aligned)
    total.backward()
    assert module.probe_proj[0].weight.grad.abs().sum() > 0 and all(p.grad is None for p in probe.parameters())
    # the probe alone, without the CLIP, is a REPA target too
    alone = DiffusionModule(net, objective="flow_x0", num_classes=None, clip=None, probe_from="probe_t2v")
    monkeypatch.setattr(alone, "probe_tower", lambda: probe)
    alone.probe_proj.load_state_dict(module.probe_proj.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(alone._aligned_loss(x, x, cond, t, noise), plain - 0.2 * aligned)
    with pytest.raises(ValueError, match="level-1 features has 192 positions but the probe gives 48 tokens"):
        alone._aligned_loss(x, torch.randn(2, 4, 3, 8, 8), cond, t, noise)
    with pytest.raises(ValueError, match="returns its features by level"):
        DiffusionModule(_Recorder(), objective="flow_x0", num_classes=None, probe_from="probe_t2v")
    with pytest.raises(ValueError, match="probe_from: for the plain denoiser"):
        DiffusionModule(net, objective="flow_x0", num_classes=None, probe_from="probe_t2v", self_condition=True)
    # target_memo: the towers' tokens of each clip computed once, rounded to bf16
    memo = DiffusionModule(net, objective="flow_x0", num_classes=None, clip=None, probe_from="probe_t2v",
                           target_memo=8)
    memo.probe_proj.load_state_dict(module.probe_proj.state_dict())
    runs = []
    monkeypatch.setattr(memo, "probe_tower", lambda: runs.append(1) or probe)
    with torch.no_grad():
        first, second = (memo._aligned_loss(x, x, cond, t, noise) for _ in range(2))
        rounded = cos(module.probe_proj(half), probe.tokens(x).bfloat16().float(), dim=-1).mean()
    assert len(runs) == 1 and len(memo._memo) == 2
    torch.testing.assert_close(first, plain - 0.2 * rounded)
    torch.testing.assert_close(second, first)
    torch.testing.assert_close(first, plain - 0.2 * aligned, atol=2e-3, rtol=0)  # bf16 targets: close to fp32
    with pytest.raises(ValueError, match="target_memo is a number of clips"):
        DiffusionModule(net, objective="flow_x0", num_classes=None, target_memo=-1)
    # the cache key follows the probe it aligns to
    assert cached_path("t2v_unet", "--model.init_args.probe_from=null") != cached_path("t2v_unet") != \
        cached_path("t2v_unet", '--model.init_args.probe_overrides=["--trainer.max_steps=10"]')


def test_autoguide_at_keeps_the_ema_weights_from_that_step_and_samples_with_them():
    import lightning.pytorch as pl

    from sora_edu.train.callbacks import EMA
    from sora_edu.train.cli import from_config
    from sora_edu.train.diffusion import DiffusionModule

    def cli_for(*more):
        return from_config("diffusion_digits", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                           "--trainer.enable_model_summary=false", "--trainer.enable_progress_bar=false",
                           "--trainer.max_steps=8", "--trainer.limit_val_batches=0", "--trainer.callbacks=[]",
                           "--data.init_args.height=8", "--data.init_args.width=8", "--data.init_args.batch_size=16",
                           "--data.init_args.num_train=128", "--data.init_args.num_val=16",
                           "--model.init_args.net.init_args.channels=[8, 16]", *more)

    class AtStep4(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 4:
                self.ema = {k: v.clone() for k, v in ema.ema.module.state_dict().items()}

    cli = cli_for("--model.init_args.autoguide_at=0.5")
    ema, seen = EMA(decay=0.5), AtStep4()
    cli.trainer.callbacks.extend([ema, seen])
    m = cli.model
    y = torch.arange(4)
    with pytest.raises(ValueError, match="never taken"):
        m.sample((4, 1, 8, 8), y, steps=3, autoguidance=1.0)
    cli.trainer.fit(m, cli.datamodule)
    assert int(m.weak_step) == 4  # half of the 8 steps
    weak = m.weak_net.state_dict()
    assert all(torch.equal(weak[k], v) for k, v in seen.ema.items())  # the EMA weights of step 4
    assert not all(torch.equal(weak[k], v) for k, v in m.net.state_dict().items())  # not the final ones
    assert not any(p.requires_grad for p in m.weak_net.parameters())
    trained = {id(p) for group in m.optimizers().optimizer.param_groups for p in group["params"]}
    assert not trained & {id(p) for p in m.weak_net.parameters()}
    plain = m.sample((4, 1, 8, 8), y, steps=3, guidance=2.0)
    assert torch.equal(plain, m.sample((4, 1, 8, 8), y, steps=3, guidance=2.0, autoguidance=0.0))
    guided = m.sample((4, 1, 8, 8), y, steps=3, guidance=2.0, autoguidance=1.0)
    assert not torch.allclose(plain, guided)
    # the weak copy travels with the checkpoint
    again = cli_for("--model.init_args.autoguide_at=0.5").model
    again.load_state_dict(m.state_dict())
    assert torch.equal(guided, again.sample((4, 1, 8, 8), y, steps=3, guidance=2.0, autoguidance=1.0))
    # a model without one says how to get one; bad fractions are refused
    with pytest.raises(ValueError, match="train with autoguide_at"):
        cli_for().model.sample((4, 1, 8, 8), y, steps=3, autoguidance=1.0)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        DiffusionModule(UNet(1, (8, 8)), autoguide_at=1.0)
    with pytest.raises(ValueError, match="autoguide_at: for the plain denoiser.*not with frame_masks or self_condition"):
        DiffusionModule(UNet(1, (8, 8), extra_channels=1), autoguide_at=0.5, frame_masks=["prefix"])
