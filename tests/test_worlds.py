"""The Shapes world: determinism, captions that tell the truth, any size, clear errors."""

import numpy as np
import pytest
import torch

from sora_edu.data.worlds import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    SIZES,
    WALL_COLOUR,
    AltTextConfig,
    ShapesWorld,
    WorldConfig,
    alt_text,
    parse_caption,
    render_prompt,
    half_extents,
    shape_area,
)


@pytest.fixture(scope="module")
def many():
    """A few hundred seeded samples of the default world (1-3 objects, walls, pans)."""
    return ShapesWorld(400, 16, 64, 64, seed=7).samples(range(400))


def to_rgb01(video):
    return (video + 1) / 2


def test_same_seed_same_video_and_captions():
    a, b = ShapesWorld(50, seed=3), ShapesWorld(50, seed=3)
    for i in (0, 17, 49):
        sa, sb = a.sample(i), b.sample(i)
        assert torch.equal(sa.video, sb.video)
        assert (sa.caption, sa.alt_text) == (sb.caption, sb.alt_text)
    # Order of access does not matter, and one-by-one equals batched.
    assert torch.equal(a.samples([49, 0])[1].video, b.sample(0).video)
    other = ShapesWorld(50, seed=4)
    assert not torch.equal(a.sample(0).video, other.sample(0).video)


def test_video_layout_and_range(many):
    for s in many[:20]:
        assert s.video.shape == (3, 16, 64, 64)
        assert s.video.dtype == torch.float32
        assert s.video.min() >= -1 and s.video.max() <= 1


def test_caption_round_trips_to_scene(many):
    for s in many:
        parsed = parse_caption(s.caption)
        assert parsed["background"] == s.scene.background
        assert parsed["pan"] == s.scene.pan
        assert parsed["wall"] == s.scene.has_wall
        assert len(parsed["objects"]) == len(s.scene.objects)
        for p, o in zip(parsed["objects"], s.scene.objects):
            assert (p["shape"], p["colour"], p["size"], p["motion"]) == (o.shape, o.colour, o.size, o.motion)
            assert p["behind_wall"] == o.passes_behind_wall


def test_motion_words_match_trajectories(many):
    """'moves right' <=> the centre's x increases (in the world, i.e. undoing the camera)."""
    seen = set()
    for s in many:
        for o in s.scene.objects:
            world = o.centre + s.scene.camera
            step = np.diff(world, axis=0)
            seen.add(o.motion)
            if o.motion == "right":
                assert (step[:, 0] > 0).all() and np.allclose(step[:, 1], 0)
            elif o.motion == "left":
                assert (step[:, 0] < 0).all() and np.allclose(step[:, 1], 0)
            elif o.motion == "down":
                assert (step[:, 1] > 0).all() and np.allclose(step[:, 0], 0)
            elif o.motion == "up":
                assert (step[:, 1] < 0).all() and np.allclose(step[:, 0], 0)
            elif o.motion == "still":
                assert np.allclose(step, 0)
            else:  # bounce: moves along both axes
                assert np.abs(step).sum(axis=0).min() > 1.0
    assert seen == {"left", "right", "up", "down", "still", "bounce"}


def test_pan_words_match_camera(many):
    panned = [s for s in many if s.scene.pan]
    assert len(panned) > 20
    for s in panned:
        dx, dy = s.scene.camera[-1] - s.scene.camera[0]
        expected = {"right": dx > 0, "left": dx < 0, "down": dy > 0, "up": dy < 0}[s.scene.pan]
        assert expected
        # On screen a still object drifts against the pan.
        for o in s.scene.objects:
            if o.motion == "still":
                drift = o.centre[-1] - o.centre[0]
                assert np.sign(drift[0]) == -np.sign(dx) and np.sign(drift[1]) == -np.sign(dy)


def test_behind_wall_means_visibility_drops(many):
    behind = [(s, o) for s in many for o in s.scene.objects if o.passes_behind_wall]
    assert len(behind) >= 5
    for s, o in behind:
        assert s.scene.has_wall and o.visibility.min() < 0.5 and o.visibility.max() > 0.9
    for s in many:
        for o in s.scene.objects:
            assert o.visibility.max() > 0.75, "every object the caption names is clearly seen at some point"
            if not s.scene.has_wall:
                assert not o.passes_behind_wall


def test_visibility_counts_pixels():
    """The truth's visibility equals the share of the object's area its colour covers on screen."""
    world = ShapesWorld(60, 16, 64, 64, seed=1, config=WorldConfig(max_objects=1, p_pan=0), wall=True)
    checked = 0
    for s in world.samples(range(60)):
        o = s.scene.objects[0]
        if not o.passes_behind_wall:
            continue
        rgb = to_rgb01(s.video)
        colour = torch.tensor(COLOURS[o.colour])[:, None, None, None]
        bg = torch.tensor(BACKGROUNDS[s.scene.background])[:, None, None, None]
        # Undo the wall's blend (its coverage is known), then solve each pixel for the
        # object's blend weight against the background.
        xs = torch.arange(64) + 0.5
        wall = (0.5 - ((xs - s.scene.wall_x).abs() - s.scene.wall_width / 2)).clamp(0, 1)
        wall_rgb = torch.tensor(WALL_COLOUR)[:, None, None, None]
        keep = wall < 1
        under = (rgb - wall * wall_rgb) / (1 - wall).clamp_min(1e-6)
        alpha = ((under - bg) * (colour - bg)).sum(0) / ((colour - bg) ** 2).sum()
        seen = (alpha.clamp(0, 1) * (1 - wall) * keep).sum(dim=(1, 2)).numpy()
        assert np.abs(seen / shape_area(o.shape, o.radius) - o.visibility).max() < 0.02
        checked += 1
    assert checked >= 5


def test_centre_colour_size_and_background_are_what_is_drawn(many):
    for s in many:
        rgb = to_rgb01(s.video)
        for o in s.scene.objects:
            t = int(np.argmax(o.visibility))
            x, y = o.centre[t]
            if not (0 <= x < 64 and 0 <= y < 64):
                continue
            pixel = rgb[:, t, int(y), int(x)]
            if o.visibility[t] > 0.99:
                assert torch.allclose(pixel, torch.tensor(COLOURS[o.colour]), atol=0.1), s.caption
            assert o.radius == pytest.approx(SIZES[o.size] * 64)
        if s.scene.pan is None:
            # The most common colour of the frame is the background.
            flat = rgb[:, 0].reshape(3, -1).T
            values, counts = flat.unique(dim=0, return_counts=True)
            assert torch.allclose(values[counts.argmax()], torch.tensor(BACKGROUNDS[s.scene.background]), atol=1e-4)


def test_centre_is_where_the_object_is_drawn():
    world = ShapesWorld(20, 12, 64, 64, seed=2, config=WorldConfig(max_objects=1, p_pan=0, p_occluder=0))
    for s in world.samples(range(20)):
        o = s.scene.objects[0]
        rgb = to_rgb01(s.video)
        bg = torch.tensor(BACKGROUNDS[s.scene.background])[:, None, None, None]
        mask = (rgb - bg).abs().amax(0) > 0.02  # (T, H, W)
        yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
        for t in range(12):
            m = mask[t].float()
            centroid = np.array([(xx * m).sum() / m.sum(), (yy * m).sum() / m.sum()])
            # The triangle's centroid of area is its centre; symmetric shapes likewise.
            assert np.abs(centroid - o.centre[t]).max() < 0.75


def _measure_shape(mask: torch.Tensor) -> str:
    """Tell the shape from a binary mask alone: fill of its box, top-heaviness, waist."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    box = mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].float()
    h = box.shape[0]
    fill = box.mean().item()
    top = box[: h // 2].sum().item() / box.sum().item()
    if fill > 0.93:
        return "square"
    if top < 0.4:  # apex up: most of the area is in the lower half
        return "triangle"
    if fill > 0.7:
        return "circle"
    # Halfway up, a cross is one arm wide (1/3 of its width), a diamond half its width.
    waist = box[h // 4].mean().item() / box[h // 2].mean().item()
    return "cross" if waist < 0.42 else "diamond"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", list(SIZES))
def test_shape_words_match_the_drawing(shape, size):
    s = render_prompt(1, 160, 160, seed=0, shape=shape, size=size, n_objects=1, wall=False, pan=None)
    bg = torch.tensor(BACKGROUNDS[s.scene.background])[:, None, None]
    mask = ((to_rgb01(s.video[:, 0]) - bg).abs().amax(0) > 0.5)
    assert _measure_shape(mask) == shape
    assert mask.sum().item() == pytest.approx(shape_area(shape, s.scene.objects[0].radius), rel=0.08)
    # the drawn extent, edge by edge, is the shape's half-extents about its centre
    o = s.scene.objects[0]
    (x, y), ys, xs = o.centre[0], *torch.nonzero(mask, as_tuple=True)
    drawn = (x - xs.min().item(), y - ys.min().item(), xs.max().item() + 1 - x, ys.max().item() + 1 - y)
    np.testing.assert_allclose(drawn, half_extents(shape, o.radius), atol=1.5)


@pytest.mark.parametrize("frames,height,width", [(1, 64, 64), (16, 48, 80), (5, 32, 17), (3, 80, 48), (2, 9, 9)])
def test_any_size(frames, height, width):
    world = ShapesWorld(10, frames, height, width, seed=0)
    for s in world.samples(range(10)):
        assert s.video.shape == (3, frames, height, width)
        parsed = parse_caption(s.caption)
        if frames == 1:
            assert all(o["motion"] is None for o in parsed["objects"])
            assert parsed["pan"] is None
            assert "pans" not in s.caption and "moves" not in s.caption


def test_getitem_batches_with_default_collate():
    world = ShapesWorld(8, 4, 32, 32, seed=0)
    batch = next(iter(torch.utils.data.DataLoader(world, batch_size=4)))
    assert batch["video"].shape == (4, 3, 4, 32, 32)
    assert len(batch["caption"]) == 4
    assert batch["labels"]["motion"].shape == (4,)
    first = world.sample(0).scene.objects[0]
    assert batch["labels"]["motion"][0].item() == world.config.motions.index(first.motion)


def test_fixed_attributes_pin_the_first_object():
    s = render_prompt(8, 32, 32, seed=5, shape="triangle", colour="cyan", size="large", motion="down",
                      background="olive", n_objects=2)
    o = s.scene.objects[0]
    assert (o.shape, o.colour, o.size, o.motion, s.scene.background) == ("triangle", "cyan", "large", "down", "olive")
    assert s.caption.startswith("a large cyan triangle moves down across an olive background")


def test_alt_text_is_short_and_sometimes_wrong(many):
    rng = np.random.default_rng(0)
    honest = AltTextConfig(p_generic_noun=0, p_drop_colour=0, p_wrong_colour=0, p_wrong_shape=0)
    for s in many[:50]:
        o = s.scene.objects[0]
        assert alt_text(s.scene, rng, honest).startswith(f"{o.colour} {o.shape}")
    liar = AltTextConfig(p_generic_noun=0, p_drop_colour=0, p_wrong_colour=0.5, p_wrong_shape=0)
    wrong = np.mean([alt_text(s.scene, rng, liar).split()[0] != s.scene.objects[0].colour for s in many])
    assert 0.4 < wrong < 0.6
    assert np.mean([len(s.alt_text) < len(s.caption) for s in many]) > 0.95


@pytest.mark.parametrize(
    "make,bad",
    [
        (lambda: ShapesWorld(4, frames=0), "0"),
        (lambda: ShapesWorld(4, height=-8), "-8"),
        (lambda: ShapesWorld(-3), "-3"),
        (lambda: WorldConfig(colours=("red", "magenta")), "magenta"),
        (lambda: WorldConfig(shapes=("hexagon",)), "hexagon"),
        (lambda: render_prompt(colour="magenta"), "magenta"),
        (lambda: render_prompt(motion="sideways"), "sideways"),
        (lambda: render_prompt(n_objects=0), "n_objects must be 1, 2 or 3, got 0"),
        (lambda: WorldConfig(p_pan=1.5), "1.5"),
        (lambda: WorldConfig(min_objects=2, max_objects=1), "min_objects=2"),
        (lambda: parse_caption("a purple cow"), "a purple cow"),
    ],
)
def test_bad_arguments_name_the_bad_value(make, bad):
    with pytest.raises(ValueError, match=bad):
        make()


def test_index_out_of_range():
    with pytest.raises(IndexError, match="12"):
        ShapesWorld(5).sample(12)


def test_shape_maps_are_the_seen_coverage_of_each_shape():
    """shape_maps: the video is unchanged; one unoccluded object's map is its coverage (its
    area), in its own shape's channel; objects in front and the wall take coverage away."""
    plain = ShapesWorld(24, 9, 32, 32, seed=3, config=WorldConfig(max_objects=3, p_occluder=0.5))
    mapped = ShapesWorld(24, 9, 32, 32, seed=3, config=WorldConfig(max_objects=3, p_occluder=0.5), shape_maps=True)
    for a, b in zip(plain.samples(range(24)), mapped.samples(range(24))):
        assert a.shape_map is None and b.shape_map.shape == (len(SHAPES), 9, 32, 32)
        torch.testing.assert_close(a.video, b.video)
        total = b.shape_map.sum(0)
        assert total.min() >= 0 and total.max() <= 1 + 1e-5
        drawn = {o.shape for o in b.scene.objects}
        for k, shape in enumerate(SHAPES):
            assert (b.shape_map[k].sum() > 0) == (shape in drawn and any(
                o.visibility.max() > 0 for o in b.scene.objects if o.shape == shape))
        # what each shape's channel holds is what the truth says is seen of those objects (the
        # truth divides by the analytic area and clamps at 1; anti-aliased pixels of a 3.5-px
        # object add up to ~5 % more)
        for shape in drawn:
            seen = sum(o.visibility * shape_area(o.shape, o.radius) for o in b.scene.objects if o.shape == shape)
            np.testing.assert_allclose(b.shape_map[SHAPES.index(shape)].sum((1, 2)).numpy(), seen, rtol=0.08, atol=1.0)
    item = mapped[0]
    assert item["shape_map"].shape == (len(SHAPES), 9, 32, 32) and "shape_map" not in plain[0]
