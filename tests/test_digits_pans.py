"""Moving digits and camera pans: seeded, any size, truth consistent with the pixels."""

import numpy as np
import pytest
import torch

from sora_edu.data.digits import MovingDigits, caption_digits, load_digits
from sora_edu.data.pans import MOVES, PHOTOS, CameraPans, caption_pan, load_photo


def test_digits_are_seeded_and_captioned():
    a, b = MovingDigits(20, seed=1), MovingDigits(20, seed=1)
    for i in (0, 7):
        sa, sb = a.sample(i), b.sample(i)
        assert torch.equal(sa.video, sb.video) and sa.caption == sb.caption
        for d in sa.labels:
            assert str(d) in sa.caption
    assert not torch.equal(a.sample(0).video, MovingDigits(20, seed=2).sample(0).video)


def test_digit_boxes_hold_the_ink():
    ds = MovingDigits(30, 10, 48, 80, seed=0, max_digits=1)
    for i in range(30):
        s = ds.sample(i)
        assert s.video.shape == (3, 10, 48, 80)
        ink = (s.video[0] > -1 + 1e-3)  # (T, H, W)
        x0, y0, x1, y1 = s.boxes[0].astype(int).T
        for t in range(10):
            inside = ink[t, y0[t]:y1[t], x0[t]:x1[t]].sum()
            assert inside == ink[t].sum() > 0, "all the ink of a lone digit lies in its box"


def test_digit_splits_do_not_share_images():
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8) and labels.max() == 9
    train, test = MovingDigits(5, split="train"), MovingDigits(5, split="test")
    assert len(train.images) + len(test.images) == 1797


def test_digit_caption_grammar():
    assert caption_digits([3], 16) == "the digit 3 bounces around"
    assert caption_digits([3, 7], 16) == "the digits 3 and 7 bounce around"
    assert caption_digits([1, 2, 5], 1) == "the digits 1, 2 and 5"


@pytest.mark.parametrize("photo", list(PHOTOS))
def test_every_photo_is_bundled(photo):
    image = load_photo(photo)
    assert image.shape[0] == 3 and min(image.shape[1:]) >= 150
    assert 0 <= image.min() and image.max() <= 1


@pytest.mark.parametrize("frames,height,width", [(16, 64, 64), (1, 32, 32), (8, 48, 80)])
def test_pans_any_size_and_window_moves_as_captioned(frames, height, width):
    ds = CameraPans(24, frames, height, width, seed=3)
    moves = set()
    for i in range(24):
        s = ds.sample(i)
        assert s.video.shape == (3, frames, height, width)
        assert s.video.min() >= -1 and s.video.max() <= 1
        assert s.caption == caption_pan(s.photo, s.move, frames)
        w = s.window
        aspect = (w[:, 2] - w[:, 0]) / (w[:, 3] - w[:, 1])
        np.testing.assert_allclose(aspect, width / height, rtol=1e-6)
        photo = load_photo(s.photo)
        assert w[:, :2].min() >= -1e-6 and (w[:, 2] <= photo.shape[2] + 1e-6).all() and (w[:, 3] <= photo.shape[1] + 1e-6).all()
        if frames > 1:
            moves.add(s.move)
            dx = (w[-1, 0] + w[-1, 2]) / 2 - (w[0, 0] + w[0, 2]) / 2
            dy = (w[-1, 1] + w[-1, 3]) / 2 - (w[0, 1] + w[0, 3]) / 2
            grow = (w[-1, 2] - w[-1, 0]) - (w[0, 2] - w[0, 0])
            expected = {"left": dx < 0, "right": dx > 0, "up": dy < 0, "down": dy > 0, "in": grow < 0, "out": grow > 0}
            assert expected[s.move], (s.move, dx, dy, grow)
    if frames > 1:
        assert len(moves) >= 4


def test_pan_shifts_the_picture_against_the_camera():
    """Panning right, the content slides left: frame t+1 shifted right matches frame t."""
    ds = CameraPans(40, 2, 64, 64, seed=0, moves=("right",))
    s = ds.sample(0)
    a, b = s.video[:, 0], s.video[:, 1]
    shift_px = round((s.window[1, 0] - s.window[0, 0]) / (s.window[0, 2] - s.window[0, 0]) * 64)
    assert shift_px >= 3
    err_aligned = (a[:, :, shift_px:] - b[:, :, :-shift_px]).abs().mean()
    err_still = (a - b).abs().mean()
    assert err_aligned < 0.5 * err_still


def test_bad_arguments():
    with pytest.raises(ValueError, match="moon"):
        CameraPans(photos=("moon",))
    with pytest.raises(ValueError, match="sideways"):
        CameraPans(moves=("sideways",))
    with pytest.raises(ValueError, match="validation"):
        MovingDigits(split="validation")
    with pytest.raises(ValueError, match="frames"):
        MovingDigits(frames=0)
    assert set(MOVES) == {"left", "right", "up", "down", "in", "out"}
