"""Scene styles: varied backgrounds, colours, sizes and scales, and held-out background families."""

from dataclasses import replace

import numpy as np
import pytest

from generalist.datasets.scenes import (
    BACKGROUND,
    COLOURS,
    HELD_OUT_PAIRS,
    IMAGE_SIZE,
    MIN_CONTRAST,
    SPREAD_RADIUS,
    STYLES,
    TEXTURED_BACKGROUNDS,
    UNSEEN_BACKGROUNDS,
    _background,
    _bilinear_weights,
    _jittered_colour,
    _spread_colour,
    background_families,
    caption_of,
    generate_scene,
    parse_caption,
)
from generalist.evaluate import caption_scores

NAMES = list(COLOURS)
PALETTE = np.array([COLOURS[name] for name in NAMES], np.float32)


def _nearest_colour(pixel: np.ndarray) -> str:
    return NAMES[int(np.linalg.norm(PALETTE - pixel, axis=1).argmin())]


@pytest.mark.parametrize("style", STYLES)
def test_every_style_is_deterministic_and_keeps_the_split(style):
    for seed in range(20):
        scene = generate_scene(seed, "train", style)
        again = generate_scene(seed, "train", style)
        assert np.array_equal(scene.image, again.image) and scene.caption == again.caption
        assert scene.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and scene.image.dtype == np.uint8
        assert not any((o.colour, o.shape) in HELD_OUT_PAIRS for o in scene.objects)
        assert any((o.colour, o.shape) in HELD_OUT_PAIRS for o in generate_scene(seed, "heldout", style).objects)
        assert scene.caption == caption_of(scene.objects, with_colour=style != "gray")
        assert (parse_caption(scene.caption) is not None) == (style != "gray")


@pytest.mark.parametrize("style", ["varied", "unseen", "textured", "spread"])
def test_styled_objects_keep_the_colour_their_caption_names(style):
    """At each object's centre the pixel is nearest to its own colour word, after the jitter and the resize."""
    right = total = 0
    for seed in range(150):
        scene = generate_scene(seed, "heldout", style)
        for obj in scene.objects:
            row, col = (int(c) for c in obj.centre)
            right += _nearest_colour(scene.image[row, col].astype(np.float32)) == obj.colour
            total += 1
    assert right / total > 0.97


def test_styles_differ_where_they_should():
    plain = [generate_scene(s, "train").image for s in range(30)]
    varied = [generate_scene(s, "train", "varied").image for s in range(30)]
    corner = lambda images: np.array([image[0, 0] for image in images], np.float32)  # noqa: E731
    assert corner(plain).std(axis=0).max() < 10  # one dark background
    assert corner(varied).std(axis=0).min() > 40  # backgrounds across the range
    # Held-out backgrounds are patterns: many pixels of each of two colours along the image's border.
    unseen = [generate_scene(s, "heldout", "unseen").image for s in range(30)]
    two_tone = [len(np.unique(np.concatenate([im[0], im[-1], im[:, 0], im[:, -1]]), axis=0)) >= 2 for im in unseen]
    assert all(two_tone)
    with pytest.raises(ValueError, match="style"):
        generate_scene(0, "train", "fancy")


def test_caption_scores_report_each_attribute():
    scenes = [generate_scene(s, "heldout") for s in range(4)]
    truths = [scene.caption for scene in scenes]
    wrong_colour = [truth.replace(" red ", " blue ") if " red " in truth else truth.replace(" green ", " red ")
                    for truth in truths]
    perfect = caption_scores(truths, scenes)
    assert perfect.per_attribute == {"size": 1.0, "colour": 1.0, "shape": 1.0, "cell": 1.0} and perfect.exact == 1.0
    spoiled = caption_scores(wrong_colour, scenes)
    assert spoiled.per_attribute["size"] == spoiled.per_attribute["shape"] == spoiled.per_attribute["cell"] == 1.0
    assert spoiled.per_attribute["colour"] < 1.0
    assert spoiled.attribute_accuracy == pytest.approx(sum(spoiled.per_attribute.values()) / 4)


def test_caption_scores_split_the_shape_by_held_out_and_trained_pairs():
    """A caption that names each held-out pair's shape as a trained pair's scores 0 on the held-out pairs and
    stays perfect on the trained ones."""
    scenes = [generate_scene(s, "heldout") for s in range(8)]
    swap = {"square": "circle", "circle": "square", "triangle": "diamond", "diamond": "triangle"}
    guessed = [caption_of([replace(o, shape=swap[o.shape]) if (o.colour, o.shape) in HELD_OUT_PAIRS else o
                           for o in scene.objects]) for scene in scenes]
    assert caption_scores([s.caption for s in scenes], scenes).shape_by_pair == {"held-out": 1.0, "trained": 1.0}
    split = caption_scores(guessed, scenes).shape_by_pair
    assert split["held-out"] == 0.0 and split["trained"] == 1.0


def test_caption_scores_split_the_colour_by_pair_and_count_its_mistakes():
    """A caption that names each held-out pair's colour as another colour scores 0 on the held-out pairs' colours,
    stays perfect on the trained ones, and counts each wrong colour once under truth -> said."""
    scenes = [generate_scene(s, "heldout") for s in range(8)]
    other = {"red": "purple", "green": "yellow", "blue": "purple", "yellow": "green"}
    held = [o for scene in scenes for o in scene.objects if (o.colour, o.shape) in HELD_OUT_PAIRS]
    guessed = [caption_of([replace(o, colour=other[o.colour]) if (o.colour, o.shape) in HELD_OUT_PAIRS else o
                           for o in scene.objects]) for scene in scenes]
    scores = caption_scores(guessed, scenes)
    assert scores.colour_by_pair == {"held-out": 0.0, "trained": 1.0}
    assert scores.shape_by_pair == {"held-out": 1.0, "trained": 1.0}
    assert sum(scores.colour_mistakes.values()) == len(held) > 0
    assert set(scores.colour_mistakes) == {f"{o.colour} -> {other[o.colour]}" for o in held}
    assert list(scores.colour_mistakes.values()) == sorted(scores.colour_mistakes.values(), reverse=True)
    assert caption_scores([s.caption for s in scenes], scenes).colour_mistakes == {}


LUMINANCE = np.array([0.299, 0.587, 0.114], np.float32)


def test_gray_scenes_show_no_colour_and_name_none():
    """Gray scenes: one value in all three channels, no colour word, and each object at the brightness of its
    colour word (within the jitter) where the caption puts it."""
    near = total = 0
    for seed in range(60):
        scene = generate_scene(seed, "train", "gray", 48)
        assert (scene.image[..., 0] == scene.image[..., 1]).all() and (scene.image[..., 1] == scene.image[..., 2]).all()
        assert not set(scene.caption.split()) & set(COLOURS)
        for obj in scene.objects:
            row, col = (int(c) for c in obj.centre)
            near += abs(float(scene.image[row, col, 0]) - float(np.array(COLOURS[obj.colour]) @ LUMINANCE)) <= 35
            total += 1
    assert near / total > 0.95


def test_textured_scenes_add_unperiodic_families_and_keep_the_held_out_ones_unseen():
    assert set(TEXTURED_BACKGROUNDS) <= set(background_families("textured"))
    assert set(background_families("varied")) < set(background_families("textured"))
    for style in ("plain", "varied", "textured", "gray", "spread"):
        assert not set(UNSEEN_BACKGROUNDS) & set(background_families(style))
    rng = np.random.default_rng(0)
    regions = _background(rng, "regions", 48)
    assert 3 <= len(np.unique(regions.reshape(-1, 3), axis=0)) <= 6  # a few flat regions
    blotches = _background(rng, "blotches", 48)
    steps = np.abs(np.diff(blotches, axis=0)).max()
    assert steps < 0.25 * np.ptp(blotches)  # smooth: no edge, however the colours spread


@pytest.mark.parametrize(("cells", "size"), [(2, 48), (5, 96), (6, 128), (3, 3)])
def test_blotches_enlarge_as_skimage_resize_does(cells, size):
    from skimage.transform import resize

    grid = np.random.default_rng(cells).uniform(0, 255, (cells, cells, 3))
    weights = _bilinear_weights(cells, size)
    np.testing.assert_allclose(weights.sum(1), 1.0)
    enlarged = np.einsum("ri,ijc,sj->rsc", weights, grid, weights)
    np.testing.assert_allclose(enlarged, resize(grid, (size, size, 3), order=1, mode="edge"), atol=1e-9)


def test_an_exact_caption_may_come_in_either_word_order():
    scenes = [generate_scene(s, "heldout", size=48) for s in range(6)]
    shape_first = [generate_scene(s, "heldout", size=48, order="shape-first").caption for s in range(6)]
    assert caption_scores(shape_first, scenes).exact == 1.0
    assert caption_scores(shape_first, scenes).per_attribute["shape"] == 1.0
    dropped = [caption.rsplit(" and ", 1)[0] if " and " in caption else caption + " and" for caption in shape_first]
    assert caption_scores(dropped, scenes).exact < 1.0  # an object left out (or a broken caption) is not exact


@pytest.mark.parametrize("colour", list(COLOURS))
def test_spread_colours_fill_their_words_neighbourhood(colour):
    """Spread colours stay nearest their own word and inside the radius, but reach much further from the word's
    colour than the jittered ones, and all contrast with the plain background (their fallback)."""
    rng = np.random.default_rng(3)
    centre = np.array(COLOURS[colour], np.float32)
    spread = np.array([_spread_colour(rng, colour) for _ in range(300)])
    jittered = np.array([_jittered_colour(rng, colour) for _ in range(300)])
    assert all(_nearest_colour(value) == colour for value in spread)
    assert ((spread >= 0) & (spread <= 255)).all()
    distance = np.linalg.norm(spread - centre, axis=1)
    assert distance.max() <= SPREAD_RADIUS + 1e-3
    assert np.median(distance) > 1.4 * np.median(np.linalg.norm(jittered - centre, axis=1))
    assert (np.linalg.norm(spread - np.array(BACKGROUND), axis=1) >= MIN_CONTRAST).all()
