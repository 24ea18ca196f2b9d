"""Cached checkpoints: exact round trips, atomic files, clear errors, train-once semantics."""

import json

import pytest
import torch

from sora_edu.cache import config_hash, load_checkpoint, save_checkpoint
from sora_edu.models.vae import VideoAutoencoder
from sora_edu.train.cached import cached_path, load_or_train, load_or_train_vae

TINY_VAE = ["--model.init_args.net.init_args.channels=[16, 16]", "--model.init_args.lr=0.005",
            "--data.init_args.num_train=8", "--model.init_args.net.init_args.stem=[2, 4]",
            "--model.init_args.net.init_args.temporal_down=1", "--model.init_args.net.init_args.z_channels=4",
            "--data.init_args.frames=5", "--data.init_args.height=16", "--data.init_args.width=16",
            "--data.init_args.batch_size=4", "--data.init_args.num_val=8", "--trainer.max_steps=80",
            "--data.init_args.train_crop=null",
            "--trainer.val_check_interval=80", "--trainer.enable_progress_bar=false"]


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_checkpoint_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    vae = VideoAutoencoder(channels=(8, 8), stem=(2, 4), temporal_down=1, z_channels=4).eval()
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    save_checkpoint(vae, {"name": "tiny"}, tmp_path / "ckpt")
    other = VideoAutoencoder(channels=(8, 8), stem=(2, 4), temporal_down=1, z_channels=4).eval()
    record = load_checkpoint(other, tmp_path / "ckpt")
    assert record["config"] == {"name": "tiny"}
    with torch.no_grad():
        assert torch.equal(vae(video).reconstruction, other(video).reconstruction)
    assert not list((tmp_path / "ckpt").glob(".*")), "no temp files left"


def test_corrupted_checkpoint_gives_a_clear_error(tmp_path):
    vae = VideoAutoencoder(channels=(8, 8), stem=(2, 4), temporal_down=1, z_channels=4)
    save_checkpoint(vae, {}, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="cannot read the checkpoint.*delete it to retrain"):
        load_checkpoint(vae, tmp_path)


def test_load_or_train_trains_once_then_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SORA_EDU_CACHE", str(tmp_path))
    module = load_or_train("vae_kl", *TINY_VAE)
    assert "trained vae_kl" in capsys.readouterr().out
    path = cached_path("vae_kl", *TINY_VAE)
    record = json.loads((path / "config.json").read_text())
    assert record["scale_factor"] == pytest.approx(module.net.scale_factor.item())
    assert record["metrics"]["val/psnr"] > 0
    assert record["train_seconds"] > 0 and record["history"][-1]["step"] == module.trainer.global_step
    vae = load_or_train_vae("vae_kl", *TINY_VAE)
    assert "loaded vae_kl from the cache" in capsys.readouterr().out
    assert vae.record["history"] == module.record["history"] and vae.record["metrics"] == module.record["metrics"]
    for (k, a), (_, b) in zip(module.net.state_dict().items(), vae.state_dict().items()):
        assert torch.equal(a, b), k
    # a different config is a different cache entry
    assert cached_path("vae_kl", *TINY_VAE, "--trainer.max_steps=81") != path


def test_load_or_train_many_trains_the_missing_runs_side_by_side(tmp_path, monkeypatch):
    from sora_edu.train.cached import load_or_train_many

    monkeypatch.setenv("SORA_EDU_CACHE", str(tmp_path))  # inherited by the worker processes
    short = [*TINY_VAE, "--trainer.max_steps=8"]
    runs = [("vae_kl", [*short, "--seed_everything=1"]), ("vae_kl", [*short, "--seed_everything=2"])]
    first = load_or_train_many(runs, processes=2)
    for (config, overrides), module in zip(runs, first):
        assert (cached_path(config, *overrides) / "model.safetensors").exists()  # trained by the workers
        assert module.record["train_seconds"] > 0
    a, b = (m.net.state_dict() for m in first)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # two seeds, two models, in the order asked
    again = load_or_train_many(runs[::-1], processes=2)  # all cached: loaded, nothing trained
    for k in a:
        assert torch.equal(again[1].net.state_dict()[k], a[k])


def test_config_keys_are_remembered_until_the_config_file_changes(tmp_path):
    import os
    import shutil

    from sora_edu.train import cached
    from sora_edu.train.cli import config_path

    config = tmp_path / "vae_copy.yaml"
    shutil.copy(config_path("vae_kl"), config)
    key = cached.config_key(str(config), *TINY_VAE)
    assert key == cached.config_key(str(config), *TINY_VAE)  # remembered ...
    assert cached.config_key(str(config), *TINY_VAE, "--trainer.max_steps=81") != key
    config.write_text(config.read_text().replace("seed_everything: 0", "seed_everything: 5"))
    os.utime(config, ns=(0, config.stat().st_mtime_ns + 10**9))  # a later version of the file
    assert cached.config_key(str(config), *TINY_VAE) != key  # ... until the file changes


def test_autoencoder_loss_falls():
    """Measured (seed 0): 80 steps on 8 tiny videos take the L1 loss from 0.38 to ~0.26."""
    from sora_edu.train.callbacks import History
    from sora_edu.train.cli import from_config

    cli = from_config("vae_kl", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                      "--trainer.enable_model_summary=false", *TINY_VAE)
    history = History()
    cli.trainer.callbacks.append(history)
    cli.trainer.fit(cli.model, cli.datamodule)
    _, losses = history.series("train/loss")
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]


def test_smoke_overrides_shrink_only_in_smoke_mode(monkeypatch):
    from sora_edu.train.cached import SMOKE_VAE, smoke_overrides

    monkeypatch.delenv("SORA_EDU_SMOKE", raising=False)
    assert smoke_overrides(6, "--seed_everything=3") == ["--seed_everything=3"]
    monkeypatch.setenv("SORA_EDU_SMOKE", "1")
    shrunk = smoke_overrides(6, "--seed_everything=3")
    assert shrunk[0] == "--trainer.max_steps=6" and shrunk[-1] == "--seed_everything=3"
    assert f"--model.init_args.vae_overrides={SMOKE_VAE}" in shrunk
    clip = smoke_overrides(10, model_vae=False)  # CLIP's model has no autoencoder: only its data module encodes
    assert not any(o.startswith("--model.init_args.vae_overrides") for o in clip)
    assert f"--data.init_args.vae_overrides={SMOKE_VAE}" in clip


def test_a_model_is_keyed_by_every_cached_model_it_starts_from_or_reads(monkeypatch):
    """A captioner depends on its CLIP tower and on its data's autoencoder; a text-to-video
    model on recaptions depends on the captioner that wrote them (and only then)."""
    from sora_edu.train import cached
    from sora_edu.train.cli import from_config

    monkeypatch.setattr(cached, "config_key", lambda config, *overrides: f"{config}{list(overrides)}")
    noised = ["--model.init_args.net.init_args.latent_noise=0.3"]
    deps, key = cached._key(from_config("captioner", *cached.QUIET))
    assert deps["video_key"] == "clip_t2v" + str(['--data.init_args.vae_overrides=["' + noised[0] + '"]'])
    assert deps["data_vae_key"] == f"vae_t2v{noised}" and "captioner_key" not in deps
    image = ["--data.init_args.frames=1", "--data.init_args.captioner_overrides=['--data.init_args.frames=1']"]
    detailed, _ = cached._key(from_config("t2v_unet", *cached.QUIET, *image))
    assert "captioner_key" not in detailed and detailed["data_vae_key"] == f"vae_t2v{noised}"
    recaptioned, other = cached._key(from_config("t2v_unet", *cached.QUIET, *image, "--data.init_args.captions=recaptioned"))
    assert recaptioned["captioner_key"] == "captioner['--data.init_args.frames=1']"
    assert other != cached._key(from_config("t2v_unet", *cached.QUIET, *image))[1]
