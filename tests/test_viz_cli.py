"""Video files, inline players, overlays and the sora-edu command."""

import json

import numpy as np
import pytest
import torch

from sora_edu import cli
from sora_edu.data.worlds import ShapesWorld, parse_caption
from sora_edu.viz import (
    encode_mp4,
    overlay_boxes,
    plot_frames,
    read_video,
    save_video,
    show_video,
    show_videos,
    tile,
    to_uint8,
)


@pytest.fixture(scope="module")
def video():
    return ShapesWorld(1, 8, 32, 48, seed=0, n_objects=1).sample(0).video


def test_to_uint8_layout(video):
    frames = to_uint8(video)
    assert frames.shape == (8, 32, 48, 3) and frames.dtype == np.uint8
    assert to_uint8(video[:1]).shape == (8, 32, 48, 3)  # grey is repeated to RGB
    with pytest.raises(ValueError, match=r"\(C, T, H, W\)"):
        to_uint8(video[0])


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_save_and_read_back(tmp_path, video, suffix):
    path = save_video(tmp_path / f"clip{suffix}", video, fps=8)
    back = read_video(path)
    assert back.shape == video.shape
    # mp4 is lossy (H.264 at high quality), gif is palette-quantised: both stay close.
    assert (back - video).abs().mean() < 0.05
    assert not list(tmp_path.glob(".*tmp")), "no temp file is left behind"


def test_save_rejects_unknown_format(tmp_path, video):
    with pytest.raises(ValueError, match="clip.avi"):
        save_video(tmp_path / "clip.avi", video)


def test_odd_sizes_encode(video):
    odd = video[:, :, :31, :47]
    assert encode_mp4(odd, scale=1)[4:8] == b"ftyp"


def test_inline_players(video):
    html = show_video(video, caption="a <red> circle").data
    assert html.count("<video") == 1 and "data:video/mp4;base64," in html and "&lt;red&gt;" in html
    grid = show_videos(torch.stack([video, video, video]), ["a", "b", "c"], columns=2).data
    assert grid.count("<video") == 3 and grid.count("<div>") == 2
    with pytest.raises(ValueError, match="2 captions"):
        show_videos([video, video, video], ["a", "b"])


def test_overlay_draws_the_box(video):
    sample = ShapesWorld(1, 8, 32, 48, seed=0, n_objects=1).sample(0)
    box = sample.scene.objects[0].box[None]
    drawn = overlay_boxes(sample.video, box, colours=[(1.0, 0.0, 1.0)])
    x0, y0 = np.round(box[0, 0, :2]).astype(int).clip(0)
    assert torch.allclose(drawn[:, 0, y0, x0], torch.tensor([1.0, -1.0, 1.0]))
    assert drawn.shape == sample.video.shape
    with pytest.raises(ValueError, match=r"\(K, T, 4\)"):
        overlay_boxes(sample.video, box[0])
    fig = plot_frames(sample.video, boxes=box, title=sample.caption)
    assert len(fig.axes) == 6


def test_tile_places_each_video():
    batch = torch.rand(5, 3, 2, 4, 6) * 2 - 1
    grid = tile(batch, columns=3, pad=1)
    assert grid.shape == (3, 2, 2 * 5 + 1, 3 * 7 + 1)
    assert torch.equal(grid[:, :, 6:10, 8:14], batch[4])


def test_cli_worlds_writes_videos_and_truth(tmp_path):
    cli.main(["worlds", "--n", "5", "--out", str(tmp_path), "--frames", "6", "--height", "32", "--width", "40"])
    records = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(5))
    world = ShapesWorld(5, 6, 32, 40, seed=0)
    for r in records:
        expected = world.sample(r["index"])
        assert r["caption"] == expected.caption and r["alt_text"] == expected.alt_text
        assert len(r["truth"]["objects"]) == len(parse_caption(r["caption"])["objects"])
        assert np.asarray(r["truth"]["objects"][0]["centre"]).shape == (6, 2)
        video = read_video(tmp_path / r["video"])
        assert video.shape == (3, 6, 32, 40)
        assert (video - expected.video).abs().mean() < 0.05


def test_cli_gallery_writes_a_gallery(tmp_path, capsys):
    cli.main(["gallery", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert str((tmp_path / "gallery.mp4").resolve()) in out
    gallery = read_video(tmp_path / "gallery.mp4")
    assert gallery.shape[1] >= 8
    page = (tmp_path / "gallery.html").read_text()
    assert page.count("<video") == 3 * 4  # three worlds, four videos each in smoke mode


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n must be >= 1"):
        cli.worlds(n=0, out=str(tmp_path))


def test_cli_demo_and_sample_run_end_to_end_in_smoke_mode(tmp_path):
    """`sora-edu demo` trains (tiny, in smoke mode) and caches a text-to-video model, writes
    demo.mp4 and prints adherence; `sora-edu sample` reuses the cached model at another size."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "SORA_EDU_SMOKE": "1", "SORA_EDU_CACHE": str(tmp_path / "cache")}
    run = lambda *args: subprocess.run([sys.executable, "-m", "sora_edu.cli", *args], env=env, cwd=tmp_path,  # noqa: E731
                                       capture_output=True, text=True, timeout=600)
    demo = run("demo", "--prompt", "a red circle moves left", "--out", str(tmp_path / "demo"))
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "adherence (world-truth scorer" in demo.stdout and "fully correct" in demo.stdout
    assert "a small red circle moves left" in demo.stdout or "a large red circle moves left" in demo.stdout
    video = read_video(tmp_path / "demo" / "demo.mp4")
    assert video.shape[1:] == (16, 256, 256)  # 16 frames, 64x64 scaled 4x
    sample = run("sample", "--prompt", "a blue square", "--model", "t2v_demo", "--frames", "9", "--height", "32",
                 "--width", "64", "--out", str(tmp_path / "sample"))
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert "loaded t2v_demo from the cache" in sample.stdout
    assert read_video(tmp_path / "sample" / "sample.mp4").shape[1:] == (9, 128, 256)
    bad = run("sample", "--prompt", "a blue square", "--model", "t2v_demo", "--height", "40", "--out", str(tmp_path / "x"))
    assert bad.returncode != 0 and "multiples of 16" in bad.stderr
    assert not (tmp_path / "config.yaml").exists()  # building a model never litters the working directory


def test_smoke_mode_shrinks_the_clips_a_text_to_video_config_starts_from(monkeypatch):
    """`sora-edu sample --model t2v_unet` in smoke mode must not train its CLIPs or probe at full size."""
    from sora_edu.cli import _smoke_clips
    from sora_edu.train.cached import smoke_overrides

    monkeypatch.setenv("SORA_EDU_SMOKE", "1")
    clip = smoke_overrides(10, model_vae=False)
    assert _smoke_clips("t2v_unet", smoke_overrides(10)) == [f"--model.init_args.text_overrides={clip}",
                                                              f"--model.init_args.repa_overrides={clip}",
                                                              f"--model.init_args.probe_overrides={clip}"]  # + its probe
    assert _smoke_clips("t2v_unet", ["--model.init_args.probe_from=null"]) == [
        f"--model.init_args.text_overrides={clip}", f"--model.init_args.repa_overrides={clip}"]
    assert _smoke_clips("t2v_demo", smoke_overrides(10)) == []  # no CLIP to shrink
    monkeypatch.setenv("SORA_EDU_SMOKE", "0")
    assert _smoke_clips("t2v_unet", []) == []
