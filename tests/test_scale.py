"""Scaling up (issue F): video folders, buckets, latent shards, DDP and bitwise resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sora_edu.data.buckets import BucketBatchSampler, nearest_bucket
from sora_edu.data.video_folder import VideoFolder, read_captions, resize_video
from sora_edu.data.worlds import ShapesWorld, WorldConfig
from sora_edu.viz import save_video

FRAMES, SIZE = 8, 32
BUCKETS = [[FRAMES, SIZE, SIZE], [FRAMES, SIZE, 2 * SIZE]]
# A tiny VAE (2 steps: only shapes and plumbing matter here) and a tiny text DiT.
VAE = ["--trainer.max_steps=2", "--data.init_args.num_val=2", "--data.init_args.batch_size=2"]
DIT = ["--model.init_args.net.init_args.dim=32", "--model.init_args.net.init_args.depth=2",
       "--model.init_args.net.init_args.heads=2", "--model.init_args.net.init_args.text_dim=32",
       f"--model.init_args.vae_overrides={VAE}", f"--data.init_args.vae_overrides={VAE}"]


def _world_videos(n, height, width, seed):
    return ShapesWorld(n, FRAMES + 2, height, width, seed, WorldConfig(max_objects=1)).samples(range(n))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """10 square and 6 widescreen captioned videos, plus an empty, a corrupt, a too-short and an uncaptioned file."""
    root = tmp_path_factory.mktemp("videos")
    lines = []
    for k, (h, w, n) in enumerate([(SIZE, SIZE, 10), (SIZE, 2 * SIZE, 6)]):
        for s in _world_videos(n, h, w, seed=k):
            name = f"{h}x{w}/{s.index:03d}.mp4"
            save_video(root / name, s.video)
            lines.append({"video": name, "caption": s.caption})
    (root / "bad").mkdir()
    (root / "bad/empty.mp4").write_bytes(b"")
    (root / "bad/corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    save_video(root / "bad/short.mp4", _world_videos(1, SIZE, SIZE, 5)[0].video[:, :3])
    save_video(root / "bad/nocaption.mp4", _world_videos(1, SIZE, SIZE, 6)[0].video)
    lines += [{"video": f"bad/{n}.mp4", "caption": "a red circle"} for n in ("empty", "corrupt", "short")]
    (root / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("SORA_EDU_CACHE")
    os.environ["SORA_EDU_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["SORA_EDU_CACHE"]
    else:
        os.environ["SORA_EDU_CACHE"] = old


@pytest.fixture(scope="module")
def shards(folder, cache, tmp_path_factory):
    from sora_edu.train.cached import cached_path, load_or_train_vae
    from sora_edu.train.folder import encode_folder

    vae = load_or_train_vae("vae_t2v", *VAE, verbose=False).eval()
    out = tmp_path_factory.mktemp("shards")
    encode_folder(vae, cached_path("vae_t2v", *VAE).name, folder, out, FRAMES, buckets=BUCKETS, shard_size=4)
    return out


# --- buckets --------------------------------------------------------------------------------

def test_nearest_bucket_keeps_aspect_and_length():
    buckets = [(16, 64, 64), (16, 48, 96), (16, 96, 48), (1, 64, 64)]
    assert nearest_bucket(40, 360, 640, buckets) == 1  # 16:9 -> the 2:1 bucket
    assert nearest_bucket(40, 1920, 1080, buckets) == 2  # vertical
    assert nearest_bucket(40, 500, 520, buckets) == 0
    assert nearest_bucket(3, 500, 520, buckets) == 3  # too short for a clip: an image
    assert nearest_bucket(3, 500, 520, buckets[:3]) is None
    with pytest.raises(ValueError, match="height and width"):
        nearest_bucket(4, 0, 10, buckets)


def test_bucket_sampler_never_mixes_and_splits_global_batches_over_ranks():
    buckets = [i % 3 for i in range(50)]
    one = BucketBatchSampler(buckets, batch_size=4, seed=1)
    batches = list(one)
    assert len(batches) == len(one) == sum(n // 4 for n in (17, 17, 16))
    assert all(len({buckets[i] for i in b}) == 1 and len(b) == 4 for b in batches)
    assert batches == list(BucketBatchSampler(buckets, batch_size=4, seed=1))  # deterministic
    assert list(one) != batches  # each iteration is a new epoch, in a new order
    # Two ranks x 2 see exactly what one rank x 4 sees, batch for batch.
    r0, r1 = (list(BucketBatchSampler(buckets, 2, seed=1, num_replicas=2, rank=r)) for r in (0, 1))
    assert [a + b for a, b in zip(r0, r1)] == batches
    # Resuming: mid-epoch, the rest of that epoch; after a whole epoch, the next one whole.
    run = BucketBatchSampler(buckets, 4, seed=1)
    epoch0, epoch1 = list(run), list(run)
    resumed = BucketBatchSampler(buckets, 4, seed=1)
    resumed.resume(run.state(5) | {"epoch": 0})
    assert list(resumed) == epoch0[5:] and list(resumed) == epoch1
    resumed.resume(run.state(len(epoch1)))  # a checkpoint at the end of epoch 1 ...
    assert list(resumed) == list(run) and resumed.epoch == 2  # ... resumes with the whole of epoch 2
    with pytest.raises(ValueError, match="drop_last"):
        BucketBatchSampler(buckets, 4, drop_last=False, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="no bucket holds"):
        BucketBatchSampler([0, 0, 1], 4)


# --- the video folder -----------------------------------------------------------------------

def test_video_folder_skips_and_reports_bad_files(folder):
    with pytest.warns(UserWarning, match="skipped"):
        data = VideoFolder(folder, FRAMES, buckets=[tuple(b) for b in BUCKETS])
    assert len(data) == 16
    reasons = dict(data.skipped)
    assert set(reasons) == {"bad/empty.mp4", "bad/corrupt.mp4", "bad/short.mp4", "bad/nocaption.mp4"}
    assert reasons["bad/empty.mp4"] == "empty file"
    assert reasons["bad/corrupt.mp4"].startswith("unreadable")
    assert reasons["bad/short.mp4"].startswith("too short: 3 frames")
    assert reasons["bad/nocaption.mp4"] == "no caption"
    assert "16 videos used, 4 skipped" in data.report() and "bad/corrupt.mp4" in data.report()
    # Widescreen videos keep their aspect in the wide bucket; captions follow the files.
    assert sorted(np.bincount(data.bucket_of).tolist()) == [6, 10]
    captions = read_captions(folder)
    for i in (0, 12):
        item = data[i]
        t, h, w = data.buckets[data.bucket_of[i]]
        assert item["video"].shape == (3, t, h, w) and item["video"].abs().max() <= 1
        assert item["caption"] == captions[data.items[i].path.relative_to(folder).as_posix()]
    # Clip starts are seeded: same epoch, same clip.
    torch.testing.assert_close(data[3]["video"], data[3]["video"])


def test_video_folder_reads_csv_and_sidecar_captions(tmp_path):
    video = _world_videos(1, SIZE, SIZE, 0)[0].video
    save_video(tmp_path / "a" / "x.mp4", video)
    (tmp_path / "a" / "x.txt").write_text("a blue square\n")
    assert VideoFolder(tmp_path / "a", FRAMES)[0]["caption"] == "a blue square"
    save_video(tmp_path / "b" / "y.mp4", video)
    (tmp_path / "b" / "captions.csv").write_text("video,caption\ny.mp4,a green cross\n")
    assert VideoFolder(tmp_path / "b", FRAMES)[0]["caption"] == "a green cross"
    with pytest.raises(FileNotFoundError, match="no video folder"):
        VideoFolder(tmp_path / "nowhere")
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match="no usable videos"):
        VideoFolder(tmp_path / "c")


def _keyframed_video(path, frames, gop, size=32, fps=24):
    """An H.264 file with a keyframe every ``gop`` frames; frame k has a bright row k (mod size)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        for k in range(frames):
            image = np.zeros((size, size, 3), np.uint8)
            image[:, :, 0] = (k * 7) % 256
            image[k % size, :, 1] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_decode_frames_seeks_to_the_same_frames_as_decoding_from_the_start(tmp_path):
    from sora_edu.data.video_folder import _decode, decode_frames

    path = tmp_path / "long.mp4"
    _keyframed_video(path, 120, gop=8)
    for start, count, stride in [(0, 4, 1), (3, 5, 2), (47, 8, 3), (64, 6, 1), (100, 10, 2)]:
        clip = decode_frames(path, start, count, stride)
        assert clip.shape == (3, count, 32, 32)
        torch.testing.assert_close(clip, _decode(path, start, count, stride, seek=False), rtol=0, atol=0)
    # The frames really are start, start + stride, ...: the bright row says which one.
    rows = decode_frames(path, 47, 3, 3)[1].mean(-1).argmax(-1)
    assert rows.tolist() == [k % 32 for k in (47, 50, 53)]
    with pytest.raises(ValueError, match="decoded 5 of the 8 frames"):
        decode_frames(path, 115, 8)
    # A GIF (its own frame timing) gives the same clips as well.
    save_video(tmp_path / "x.gif", torch.rand(3, 30, 16, 16) * 2 - 1)
    for start in (0, 7, 20):
        torch.testing.assert_close(decode_frames(tmp_path / "x.gif", start, 4, 2),
                                   _decode(tmp_path / "x.gif", start, 4, 2, seek=False), rtol=0, atol=0)


def test_video_folder_probes_each_file_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SORA_EDU_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "videos"
    for s in _world_videos(3, SIZE, SIZE, seed=0):
        save_video(root / f"{s.index}.mp4", s.video)
        (root / f"{s.index}.txt").write_text(s.caption)
    (root / "broken.mp4").write_bytes(b"not a video")
    (root / "broken.txt").write_text("a red circle")
    with pytest.warns(UserWarning, match="broken.mp4"):
        first = VideoFolder(root, FRAMES)
    assert first.probed == 4 and len(first) == 3
    with pytest.warns(UserWarning, match="broken.mp4"):  # an index entry keeps the reason too
        again = VideoFolder(root, FRAMES)
    assert again.probed == 0
    assert again.items == first.items and again.bucket_of == first.bucket_of and again.skipped == first.skipped
    # A changed file is probed again (and only it); so is every file without the index.
    save_video(root / "0.mp4", _world_videos(1, SIZE, SIZE, seed=9)[0].video[:, :FRAMES])
    with pytest.warns(UserWarning):
        changed = VideoFolder(root, FRAMES)
    assert changed.probed == 1 and changed.items[0].frames == FRAMES
    with pytest.warns(UserWarning):
        assert VideoFolder(root, FRAMES, probe_index=False).probed == 4
    # A damaged index is only a cache: its entries are probed again.
    from sora_edu.data.video_folder import _index_path

    stat = (root / "0.mp4").stat()
    short = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "probe": [8, 32]}  # current, but cut short
    _index_path(root).write_text(json.dumps({"0.mp4": short, "1.mp4": {"size": 1}, "2.mp4": "junk"}))
    with pytest.warns(UserWarning):
        repaired = VideoFolder(root, FRAMES)
    assert repaired.probed == 4 and repaired.items == changed.items
    _index_path(root).write_text("{not json")
    with pytest.warns(UserWarning):
        assert VideoFolder(root, FRAMES).probed == 4


def test_resize_video_crop_keeps_aspect():
    video = -torch.ones(3, 2, 32, 64)
    video[:, :, 8:24, 24:40] = 1  # a 16x16 square in the middle
    out = resize_video(video, 32, 32, "crop")
    assert out.shape == (3, 2, 32, 32)
    rows, cols = (out[0, 0] > 0).any(1).sum(), (out[0, 0] > 0).any(0).sum()
    assert rows == cols == 16  # still square: scaled by 1, centre cropped
    stretched = resize_video(video, 32, 32, "stretch")
    assert (stretched[0, 0] > 0).any(0).sum() == 8  # squashed horizontally
    with pytest.raises(ValueError, match="resize must be"):
        resize_video(video, 32, 32, "pad")


# --- shards, training, DDP, resume ----------------------------------------------------------

def test_encode_resumes_where_it_stopped(folder, cache, shards, tmp_path):
    from safetensors.torch import load_file

    from sora_edu.train.cached import cached_path, load_or_train_vae
    from sora_edu.train.folder import LatentShards, encode_folder

    vae = load_or_train_vae("vae_t2v", *VAE, verbose=False).eval()
    key = cached_path("vae_t2v", *VAE).name
    part = encode_folder(vae, key, folder, tmp_path, FRAMES, buckets=BUCKETS, shard_size=4, max_shards=2)
    assert not part["complete"] and len(part["shards"]) == 2
    with pytest.raises(ValueError, match="partly encoded"):
        LatentShards(tmp_path)
    whole = encode_folder(vae, key, folder, tmp_path, FRAMES, buckets=BUCKETS, shard_size=4)  # resumes
    assert whole["complete"] and sum(whole["shards"].values()) == 16 and len(whole["shards"]) == 5
    for name in whole["shards"]:  # identical to the uninterrupted encode
        a, b = load_file(str(tmp_path / name)), load_file(str(shards / name))
        torch.testing.assert_close(a["latents"], b["latents"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="other settings"):
        encode_folder(vae, key, folder, tmp_path, FRAMES, buckets=BUCKETS[:1], shard_size=4)
    data = LatentShards(shards)
    assert len(data) == 16 and data.index == list(range(16))
    assert {tuple(x.shape) for x in data.latents} == {vae.latent_shape(FRAMES, SIZE, SIZE), vae.latent_shape(FRAMES, SIZE, 2 * SIZE)}


def _fit(config_args, steps, callbacks=(), ckpt_path=None):
    from sora_edu.train.callbacks import History
    from sora_edu.train.cached import QUIET
    from sora_edu.train.cli import from_config

    cli = from_config("t2v_shards", *QUIET, "--trainer.callbacks=[]", "--trainer.log_every_n_steps=1",
                      f"--trainer.max_steps={steps}", *DIT, *config_args)
    history = History()
    cli.trainer.callbacks += [history, *callbacks]
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=ckpt_path)
    return dict(zip(*history.series("train/loss")))


def test_shards_give_the_first_loss_of_encoding_on_the_fly(folder, shards):
    from_shards = _fit([f"--data.init_args.shards={shards}", "--data.init_args.batch_size=4"], 1)
    on_the_fly = _fit(["--data=sora_edu.train.folder.VideoFolderDataModule", f"--data.init_args.root={folder}",
                       f"--data.init_args.frames={FRAMES}", f"--data.init_args.buckets={BUCKETS}",
                       "--data.init_args.vae=vae_t2v", "--data.init_args.batch_size=4"], 1)
    assert from_shards[1] == pytest.approx(on_the_fly[1], rel=1e-5)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("every,crash", [(5, 7), (8, 9)], ids=["mid_epoch", "at_epoch_end"])
def test_resume_reproduces_the_uninterrupted_run_bitwise(shards, tmp_path, every, crash):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from sora_edu.train.callbacks import EMA, RNGState

    class CrashAt(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == crash:
                raise _Crash("killed")

    args = [f"--data.init_args.shards={shards}", "--data.init_args.batch_size=2", f"--trainer.default_root_dir={tmp_path}"]
    whole = _fit(args, 10, [EMA(0.9), RNGState()])
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=every, save_last=True)
    with pytest.raises(_Crash):
        _fit(args, 10, [EMA(0.9), RNGState(), checkpoint, CrashAt()])
    resumed = _fit(args, 10, [EMA(0.9), RNGState()], ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert sorted(resumed) == list(range(every + 1, 11))  # 8 batches per epoch: the resume crosses an epoch
    assert all(resumed[s] == whole[s] for s in resumed), {s: (whole[s], resumed[s]) for s in resumed}


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(shards, cache, tmp_path):
    """2 CPU processes (gloo) x batch 2 vs 1 process x batch 4: the logged (global) losses
    agree to 1e-5 relative over 4 steps; only the order of float sums differs."""
    def run(devices, batch):
        out = tmp_path / f"d{devices}"
        cmd = [sys.executable, "-m", "sora_edu.cli", "fit", "--config", "t2v_shards", *DIT,
               f"--data.init_args.shards={shards}", f"--data.init_args.batch_size={batch}", "--trainer.max_steps=4",
               "--trainer.accelerator=cpu", f"--trainer.devices={devices}", "--trainer.log_every_n_steps=1",
               "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
               f"--trainer.logger={json.dumps({'class_path': 'lightning.pytorch.loggers.CSVLogger', 'init_args': {'save_dir': str(out)}})}",
               *(["--trainer.strategy=ddp"] if devices > 1 else [])]
        env = {**os.environ, "SORA_EDU_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        import csv

        rows = list(csv.DictReader(open(next(out.rglob("metrics.csv")))))
        return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}

    one, two = run(1, 4), run(2, 2)
    assert sorted(one) == sorted(two) and len(one) == 4
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), (step, one, two)
