"""Procedural scenes: deterministic, captions match the pixels, held-out combinations never in training."""

from dataclasses import replace

import numpy as np
import pytest

from generalist.datasets.scenes import (
    CELL_PHRASES,
    COLOURS,
    HELD_OUT_PAIRS,
    IMAGE_SIZE,
    SHAPES,
    SIZES,
    UNIFORM_BACKGROUNDS,
    background_families,
    caption_of,
    generate_scene,
    grammar_sentences,
    parse_caption,
    recolour_objects,
    text_only_caption,
)


def test_same_seed_same_scene_and_splits_differ():
    a, b = generate_scene(7), generate_scene(7)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.caption == b.caption
    assert not np.array_equal(generate_scene(7, "heldout").image, a.image)
    assert a.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and a.image.dtype == np.uint8 and IMAGE_SIZE % 16 == 0


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_caption_matches_what_was_drawn(split):
    for seed in range(200):
        scene = generate_scene(seed, split)
        stated = parse_caption(scene.caption)
        assert stated is not None and len(stated) == len(scene.objects)
        for obj, said in zip(scene.objects, stated, strict=True):
            row, col = (int(c) for c in obj.centre)
            pixel = scene.image[row, col].astype(int)
            # The stated colour is the nearest palette colour to the pixel at the object's centre.
            nearest = min(COLOURS, key=lambda name: np.abs(np.array(COLOURS[name]) - pixel).sum())
            assert nearest == said.colour == obj.colour
            # The stated cell of the 3x3 grid holds that centre.
            assert said.cell == (row * 3 // IMAGE_SIZE) * 3 + col * 3 // IMAGE_SIZE
            assert (said.shape, said.size) == (obj.shape, obj.size)


def test_sizes_differ_in_drawn_area():
    areas = {"small": [], "large": []}
    for seed in range(300):
        scene = generate_scene(seed)
        if len(scene.objects) == 1:
            background = scene.image[0, 0].astype(int)
            drawn = np.abs(scene.image.astype(int) - background).sum(axis=2) > 40
            areas[scene.objects[0].size].append(drawn.sum())
    assert max(areas["small"]) < min(areas["large"])


def test_heldout_pairs_never_in_train_and_always_in_heldout():
    for seed in range(500):
        train_pairs = {(o.colour, o.shape) for o in generate_scene(seed, "train").objects}
        heldout_pairs = {(o.colour, o.shape) for o in generate_scene(seed, "heldout").objects}
        assert not train_pairs & HELD_OUT_PAIRS
        assert heldout_pairs & HELD_OUT_PAIRS


def test_every_attribute_alone_is_seen_in_training():
    objects = [o for seed in range(500) for o in generate_scene(seed).objects]
    assert {o.colour for o in objects} == set(COLOURS)
    assert {o.shape for o in objects} == set(SHAPES)
    assert {o.size for o in objects} == set(SIZES)
    assert {o.cell for o in objects} == set(range(len(CELL_PHRASES)))


def test_parse_rejects_text_outside_the_grammar():
    assert parse_caption("a cat on a mat") is None
    assert parse_caption("a large red circle at the top left and and") is None
    scene = generate_scene(3)
    assert caption_of(scene.objects) == scene.caption


def test_grammar_sentences_cover_every_word():
    words = set(" ".join(grammar_sentences()).replace(",", "").split())
    for word in [*COLOURS, *SHAPES, *SIZES, "and", "top", "bottom", "left", "right", "centre"]:
        assert word in words


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        generate_scene(0, "test")


@pytest.mark.parametrize("style", ["plain", "varied", "unseen"])
def test_a_48_pixel_scene_is_the_same_scene_with_each_object_inside_its_cells_patch(style):
    for seed in range(100):
        small, large = generate_scene(seed, "train", style, 48), generate_scene(seed, "train", style)
        assert small.image.shape == (48, 48, 3) and small.caption == large.caption
        for near, far in zip(small.objects, large.objects, strict=True):
            assert near.centre == pytest.approx(tuple(c * 48 / IMAGE_SIZE for c in far.centre), abs=1e-4)
        if style != "plain":
            continue
        # Every object's pixels lie in the 16-pixel patch that is its cell (and it has some there).
        drawn = np.abs(small.image.astype(int) - small.image[0, 0].astype(int)).sum(axis=2) > 40
        inside = np.zeros_like(drawn)
        for cell in (o.cell for o in small.objects):
            patch = (slice(16 * (cell // 3), 16 * (cell // 3 + 1)), slice(16 * (cell % 3), 16 * (cell % 3 + 1)))
            assert drawn[patch].any()
            inside[patch] = True
        assert not (drawn & ~inside).any()


@pytest.mark.parametrize("size", [0, 32, 63, 96])
def test_other_scene_sizes_are_refused(size):
    with pytest.raises(ValueError, match=r"scene size must be one of \(48, 64\) pixels"):
        generate_scene(0, "train", "plain", size)


def test_text_only_captions_follow_the_grammar_and_name_every_pair_the_images_hold_out():
    rng = np.random.default_rng(0)
    captions = [text_only_caption(rng) for _ in range(400)]
    parsed = [parse_caption(caption) for caption in captions]
    assert all(objects is not None and 1 <= len(objects) <= 3 for objects in parsed)
    assert all([o.cell for o in objects] == sorted({o.cell for o in objects}) for objects in parsed)
    pairs = {(o.colour, o.shape) for objects in parsed for o in objects}
    assert HELD_OUT_PAIRS <= pairs and len(pairs) == len(COLOURS) * len(SHAPES)


def test_shape_first_captions_draw_the_same_image_and_parse_to_the_same_objects():
    for seed in range(30):
        colour_first = generate_scene(seed, "heldout", "varied", 48)
        shape_first = generate_scene(seed, "heldout", "varied", 48, order="shape-first")
        np.testing.assert_array_equal(colour_first.image, shape_first.image)
        assert shape_first.caption != colour_first.caption
        assert f"{shape_first.objects[0].shape} in {shape_first.objects[0].colour}" in shape_first.caption
        assert parse_caption(shape_first.caption) == parse_caption(colour_first.caption) is not None
    # One caption mixing the orders follows neither.
    mixed = "a large red circle at the top left and a small square in blue at the bottom"
    assert parse_caption(mixed) is None
    with pytest.raises(ValueError, match="caption order"):
        generate_scene(0, order="colour-last")


def test_recoloured_objects_keep_all_but_their_colours_which_come_from_one_another():
    rng = np.random.default_rng(0)
    pairs = set()
    moved = 0
    for seed in range(200):
        objects = generate_scene(seed, "train", "textured", 48).objects
        result = recolour_objects(objects, rng)
        if len({o.colour for o in objects}) < 2:
            assert result is None  # nothing to move
            continue
        recoloured, source = result
        moved += 1
        assert sorted(source.tolist()) == list(range(len(objects)))  # a permutation of the objects
        assert [o.colour for o in recoloured] == [objects[k].colour for k in source]
        assert any(new.colour != old.colour for new, old in zip(recoloured, objects, strict=True))
        for new, old in zip(recoloured, objects, strict=True):
            assert (new.shape, new.size, new.cell, new.centre) == (old.shape, old.size, old.cell, old.centre)
        pairs |= {(o.colour, o.shape) for o in recoloured}
    assert moved > 50 and pairs & HELD_OUT_PAIRS  # the tokens meet held-out pairs; no image draws one


@pytest.mark.parametrize("style", ["plain", "textured", "unseen"])
def test_a_painted_scene_is_the_same_scene_with_its_objects_in_one_anothers_colours(style):
    rng = np.random.default_rng(0)
    painted_any = 0
    for seed in range(30):
        scene = generate_scene(seed, "train", style, 48)
        same = generate_scene(seed, "train", style, 48, colour_source=np.arange(len(scene.objects)))
        np.testing.assert_array_equal(same.image, scene.image)  # the identity paints nothing
        moved = recolour_objects(scene.objects, rng)
        if moved is None:
            continue
        objects, source = moved
        painted = generate_scene(seed, "train", style, 48, colour_source=source)
        np.testing.assert_array_equal(scene.painted(source), painted.image)  # repainted, not drawn again: the same
        assert painted.objects == objects and painted.background == scene.background
        assert painted.caption == caption_of(objects)
        changed = (painted.image != scene.image).any(-1)
        for obj in scene.objects:  # the background, away from every object, is the scene's own
            row, col = (int(c) for c in obj.centre)
            changed[max(row - 9, 0):row + 10, max(col - 9, 0):col + 10] = False
        assert not changed.any()
        for obj, new in zip(scene.objects, objects, strict=True):  # each object's centre shows its new colour
            centre = painted.image[int(obj.centre[0]), int(obj.centre[1])].astype(float)
            nearest = min(COLOURS, key=lambda name: np.linalg.norm(np.array(COLOURS[name]) - centre))
            assert nearest == new.colour, (seed, obj)
        painted_any += 1
    assert painted_any > 10
    n_objects = len(generate_scene(0, "train", style, 48).objects)
    for bad in (np.arange(n_objects + 1), np.zeros(n_objects, int) if n_objects > 1 else [1]):
        with pytest.raises(ValueError, match="permutation of the scene's"):
            generate_scene(0, "train", style, 48, colour_source=bad)
        with pytest.raises(ValueError, match="permutation of the scene's"):
            generate_scene(0, "train", style, 48).painted(bad)
    bare = replace(generate_scene(0, "train", style, 48), canvas=None)
    with pytest.raises(ValueError, match="without its canvas"):
        bare.painted(np.arange(len(bare.objects)))


def test_a_scene_records_its_background_family_the_flat_one_one_colour_the_textured_ones_not():
    assert generate_scene(0, "train", "plain").background == "plain"
    drawn = {}
    for seed in range(60):
        scene = generate_scene(seed, "train", "textured", 48)
        assert scene.background in (*background_families("textured"), "plain")
        drawn.setdefault(scene.background, scene)
    assert set(drawn) >= {"flat", "noise", "blotches", "regions"}
    for family, scene in drawn.items():  # no object reaches a corner: the corners are background
        corners = scene.image[[0, 0, -1, -1], [0, -1, 0, -1]].astype(float)  # (4, 3)
        spread = np.ptp(corners, axis=0).max()
        if family == "flat":
            assert spread <= 1  # one colour, but for rounding in the resize
        elif family not in UNIFORM_BACKGROUNDS:
            assert spread > 10, family  # other families differ from place to place (these seeds)
