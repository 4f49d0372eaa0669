"""The model: config and presets, position buckets, the masked loss, and a tiny model that overfits."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from generalist.agent import KVCache
from generalist.batch import collate, shuffle_action_inputs
from generalist.model import (
    PATCH_INPUTS,
    PRESETS,
    SHAPE_MULTIPLE,
    Generalist,
    ModelConfig,
    PatchEncoder,
    bin_features,
    border_colour,
    foreground_mask,
    gato_1_18b,
    gato_79m,
    gato_364m,
    image_index,
    image_means,
    on_padded_rows,
    padded_size,
    position_buckets,
    preset,
    tiny,
)
from generalist.tokenizers import (
    N_BINS,
    ActionSpec,
    TextTokenizer,
    TokenizedSequence,
    TokenKind,
    patch_intervals,
    sample_position_buckets,
    tokenize_caption,
    tokenize_episode,
    tokenize_text,
)

TEXT = TextTokenizer.default()
CONFIG = tiny(n_layer=2, d_model=64, n_head=4, d_ff=128, context=256)
LAYOUT = CONFIG.layout


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py says why


def _model(config=CONFIG, seed=0):
    torch.manual_seed(seed)
    return Generalist(config).eval()


DISCRETE_4 = ActionSpec("discrete", n=4)


def _episode(rng, n_steps, image=(32, 32, 3), spec=DISCRETE_4):
    observations = {"continuous": rng.normal(size=(n_steps, 3)).astype(np.float32)}
    if image:
        observations["image"] = rng.integers(0, 256, (n_steps, *image), dtype=np.uint8)
    actions = rng.integers(0, spec.n, n_steps) if spec.kind == "discrete" else rng.uniform(-1, 1, (n_steps, spec.size))
    return tokenize_episode(observations, actions, spec, LAYOUT)


# ------------------------------------------------------------------------------------ config


def test_paper_presets_have_appendix_c1_sizes():
    sizes = {f: (c.n_layer, c.n_head, c.d_model, c.d_ff) for f, c in
             [("1.18b", gato_1_18b()), ("364m", gato_364m()), ("79m", gato_79m())]}
    assert sizes == {"1.18b": (24, 16, 2048, 8192), "364m": (12, 12, 1536, 6144), "79m": (8, 24, 768, 3072)}
    assert all(preset(name).context == 1024 for name in PRESETS)
    assert preset("tiny", n_layer=1).n_layer == 1
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("huge")


def test_config_round_trips_and_rejects_unknown_keys():
    config = preset("small")
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**config.to_dict(), "n_layers": 3})
    with pytest.raises(ValueError, match="heads"):
        ModelConfig(d_model=100, n_head=3)


# -------------------------------------------------------------------------- position buckets


def test_training_draws_buckets_inside_each_interval_and_evaluation_takes_the_middle():
    rows, cols = patch_intervals(3, 5)
    intervals = torch.from_numpy(np.concatenate([rows, cols]))
    lo, hi = intervals[:, 0], intervals[:, 1]
    torch.manual_seed(0)
    draws = torch.stack([position_buckets(intervals, training=True) for _ in range(2000)])  # (draws, n)
    assert ((draws >= lo) & (draws < hi)).all()
    # Uniform: every bucket of every interval is drawn (each interval holds at most 43 buckets here).
    for column, (a, b) in enumerate(intervals.tolist()):
        assert set(draws[:, column].tolist()) == set(range(a, b))
    middle = position_buckets(intervals, training=False)
    assert torch.equal(middle, position_buckets(intervals, training=False))
    np.testing.assert_array_equal(middle.numpy(), sample_position_buckets(intervals.numpy()))


def test_patch_positions_are_deterministic_in_eval_and_sampled_in_training():
    batch = collate([_episode(np.random.default_rng(0), 2, image=(48, 48, 3))], LAYOUT)
    model = _model()
    with torch.no_grad():
        assert torch.equal(model.logits(batch), model.logits(batch))
        model.train()  # dropout is 0: only the bucket draws differ between two training forwards
        torch.manual_seed(1)
        first = model.logits(batch)
        torch.manual_seed(2)
        assert not torch.allclose(first, model.logits(batch))


# ------------------------------------------------------------------------------------ embeddings


def test_each_token_sums_the_embeddings_that_apply_to_it():
    sequence = _episode(np.random.default_rng(3), 2, image=(16, 32, 3))
    batch = collate([sequence], LAYOUT)
    embed = _model().embed
    with torch.no_grad():
        x = embed(batch)[0]  # (t, d)
        expected = embed.ids.weight[batch.ids[0]].clone()
        kinds, local = sequence.kinds, torch.from_numpy(sequence.local_positions)
        values = (kinds == TokenKind.CONTINUOUS)
        expected[values] += embed.local_position.weight[local[values]]
        expected[kinds == TokenKind.ACTION] += embed.action
        rows = torch.from_numpy(sample_position_buckets(sequence.patch_rows))
        cols = torch.from_numpy(sample_position_buckets(sequence.patch_cols))
        pixels = embed.patches(torch.from_numpy(sequence.patches))
        expected[sequence.patch_token_index] = pixels + embed.patch_row.weight[rows] + embed.patch_col.weight[cols]
    assert (kinds == TokenKind.SEPARATOR).sum() == 2 and (kinds == TokenKind.IMAGE).sum() == 4
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=1e-6)


def test_image_means_average_each_run_of_consecutive_patch_tokens():
    x = torch.arange(14, dtype=torch.float32).reshape(7, 2)
    rows = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    tokens = torch.tensor([1, 2, 3, 9, 0, 1, 2])  # images: patches 0-2, patch 3 (a skip), 4-6 (a new row)
    expected = torch.stack([x[0:3].mean(0)] * 3 + [x[3]] + [x[4:7].mean(0)] * 3)
    torch.testing.assert_close(image_means(x, rows, tokens), expected)


def test_centred_patches_keep_only_how_each_patch_differs_from_its_image():
    flat = np.full((2, 32, 32, 3), 90, np.uint8)  # two timesteps of one flat colour ...
    flat[1, 20:22, 5:7] = 240  # ... the second with a small bright object, as Pong's ball
    sequence = tokenize_episode({"image": flat}, np.array([0, 1]), DISCRETE_4, LAYOUT)
    batch = collate([sequence], LAYOUT)
    centred = _model(dataclasses.replace(CONFIG, centre_patches=True)).embed
    plain = _model().embed
    with torch.no_grad():
        position = centred.patch_row.weight[sample_position_buckets(sequence.patch_rows)] + \
            centred.patch_col.weight[sample_position_buckets(sequence.patch_cols)]
        content = centred(batch)[0, sequence.patch_token_index] - position  # (8, d): 4 patches per timestep
        shared = plain(batch)[0, sequence.patch_token_index] - position
    assert content[:4].abs().max() < 1e-5  # a flat image has nothing but positions left
    assert content[4:].sum(0).abs().max() < 1e-4 and content[4:].abs().max() > 0.1  # the object's patch stands out
    assert shared[:4].norm(dim=1).min() > 1  # without centring, even a flat patch carries a large vector


def _object_patches(shape_masks, colours, background=(28, 28, 32)):
    """Patches (n, 3, 16, 16) scaled as the tokenizer scales them: each mask drawn in each colour."""
    images = np.empty((len(shape_masks) * len(colours), 16, 16, 3), np.uint8)
    for i, (mask, colour) in enumerate((m, c) for m in shape_masks for c in colours):
        images[i] = background
        images[i][mask] = colour
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() * (0.5 / 255) - 0.25


def _square_and_circle():
    rows, cols = np.mgrid[:16, :16]
    square = (np.abs(rows - 7.5) <= 5) & (np.abs(cols - 7.5) <= 5)
    circle = (rows - 7.5) ** 2 + (cols - 7.5) ** 2 <= 36
    return square, circle


def _red_square_and_blue_circle():
    """A 32x32 caption image of four patches: a red square top left, a blue circle bottom right."""
    square, circle = _square_and_circle()
    image = np.full((32, 32, 3), 28, dtype=np.uint8)
    image[:16, :16][square] = (220, 45, 45)
    image[16:, 16:][circle] = (55, 95, 235)
    return image


def test_the_foreground_mask_outlines_an_object_whatever_its_colour():
    square, circle = _square_and_circle()
    patches = _object_patches([square, circle], [(220, 45, 45), (55, 95, 235), (240, 240, 240)])
    mask = foreground_mask(patches, border_colour(patches))[:, 0]  # (6, 16, 16)
    expected = torch.from_numpy(np.repeat(np.stack([square, circle]), 3, axis=0)).float()
    torch.testing.assert_close(mask, expected, rtol=0, atol=1e-6)
    faint = _object_patches([square], [(33, 33, 37)])  # a barely visible object: the floor keeps it faint
    assert 0.1 < foreground_mask(faint, border_colour(faint)).max() < 0.5


def test_a_mask_from_the_nearest_border_colours_outlines_an_object_on_stripes():
    # On stripes of two colours the border's median is one of them, so the other stripe reads as foreground;
    # measured from the border's nearest colours both stripes are background, and the object keeps its outline.
    square, circle = _square_and_circle()
    rows = (np.arange(16) // 3) % 2 == 0
    stripes = np.where(rows[:, None, None], (200, 180, 40), (30, 60, 150)) * np.ones((16, 16, 3))
    patches = _object_patches([square, circle], [(220, 45, 45), (240, 240, 240)], stripes.astype(np.uint8))
    expected = torch.from_numpy(np.repeat(np.stack([square, circle]), 2, axis=0)).float()
    nearest = foreground_mask(patches, border_colour(patches), "nearest")[:, 0]
    torch.testing.assert_close(nearest, expected, rtol=0, atol=0.01)
    assert foreground_mask(patches, border_colour(patches))[:, 0][expected == 0].max() > 0.9  # a stripe as object
    flat = _object_patches([square, circle], [(220, 45, 45)])
    torch.testing.assert_close(foreground_mask(flat, border_colour(flat), "nearest"),
                               foreground_mask(flat, border_colour(flat)), rtol=0, atol=0.01)
    bar = np.zeros((16, 16), bool)
    bar[:6, 6:11] = True  # crosses the top border on 5 pixels, fewer than MASK_NEAREST_K
    crossing = _object_patches([bar], [(220, 45, 45)])
    assert foreground_mask(crossing, border_colour(crossing), "nearest")[0, 0][torch.from_numpy(bar)].min() > 0.99
    config = dataclasses.replace(CONFIG, patch_input="mask+colour", mask_background="nearest")
    encoder = PatchEncoder(config).eval()
    with torch.no_grad():
        on_stripes, on_flat = encoder.routes(patches[:1])[0][:, 0], encoder.routes(flat[:1])[0][:, 0]
    assert float((on_stripes - on_flat).norm() / on_flat.norm()) < 0.01  # the shape read as on a flat background
    with pytest.raises(ValueError, match="mask_background must be one of"):
        dataclasses.replace(CONFIG, mask_background="mean")
    saved_before = {k: v for k, v in CONFIG.to_dict().items() if k != "mask_background"}
    assert ModelConfig.from_dict(saved_before).mask_background == "median"  # checkpoints from before the setting


@pytest.mark.parametrize("patch_input", ["pixels", "pixels+mask", "mask+colour"])
def test_a_mask_and_colour_patch_block_reads_shape_apart_from_colour(patch_input):
    # With "mask+colour", recolouring an object moves its embedding by the same vector whatever its shape, so a
    # shape is read the same in a colour never seen with it; the pixel blocks mix the two.
    torch.manual_seed(0)
    encoder = PatchEncoder(dataclasses.replace(CONFIG, patch_input=patch_input)).eval()
    square, circle = _square_and_circle()
    with torch.no_grad():
        red_square, blue_square, red_circle, blue_circle = encoder(
            _object_patches([square, circle], [(220, 45, 45), (55, 95, 235)]))
    recoloured_square, recoloured_circle = red_square - blue_square, red_circle - blue_circle
    mismatch = float((recoloured_square - recoloured_circle).norm() / recoloured_square.norm())
    assert (mismatch < 1e-4) if patch_input == "mask+colour" else (mismatch > 0.05)
    assert float((red_square - red_circle).norm()) > 0.1  # the shape still changes the embedding


def test_patches_read_by_one_route_alone_lose_what_the_other_route_reads():
    torch.manual_seed(0)
    config = dataclasses.replace(CONFIG, patch_input="mask+colour")
    model = _model(config)
    square, circle = _square_and_circle()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    images[:, :16, :16] = 28
    images[0, :16, :16][square] = (220, 45, 45)  # a red square and a red circle in the top-left patch
    images[1, :16, :16][circle] = (220, 45, 45)
    batch = collate([tokenize_caption(image, TEXT.encode("a caption"), config.layout) for image in images],
                    config.layout)
    dropped = dataclasses.replace(batch, patch_colour_only=batch.patch_batch_index >= 0)
    with torch.no_grad():
        full, alone = model.embed.patch_content(batch), model.embed.patch_content(dropped)
        route = model.embed.patches.routes(batch.patches)[0][:, 1]
    torch.testing.assert_close(alone, route, rtol=0, atol=0)
    square_patch, circle_patch = 0, 4  # each image's first patch
    assert float((full[square_patch] - full[circle_patch]).norm()) > 0.1  # both routes: the shapes differ
    torch.testing.assert_close(alone[square_patch], alone[circle_patch], rtol=0, atol=1e-4)  # colour alone: alike
    model.train()
    model(dropped).loss.backward()
    assert model.embed.patches.stem.weight.grad is None or not model.embed.patches.stem.weight.grad.any()
    assert model.embed.patches.colour.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="only patch_input='mask\\+colour' has its shape and colour routes"):
        _model().embed.patches.routes(batch.patches)
    model.zero_grad()
    shape_only = dataclasses.replace(batch, patch_shape_only=batch.patch_batch_index >= 0)
    recoloured = batch.patches.flip(1)  # the channels swapped: other colours, the same mask (distances keep)
    with torch.no_grad():
        by_shape = model.embed.patch_content(shape_only)
        by_shape_recoloured = model.embed.patch_content(dataclasses.replace(shape_only, patches=recoloured))
        route = model.embed.patches.routes(batch.patches)[0][:, 0]
    torch.testing.assert_close(by_shape, route, rtol=0, atol=1e-5)  # padded to another row count: float noise
    torch.testing.assert_close(by_shape, by_shape_recoloured, rtol=0, atol=1e-5)  # the colours not read
    assert float((by_shape[square_patch] - by_shape[circle_patch]).norm()) > 0.1  # the shapes still are
    model(shape_only).loss.backward()
    assert model.embed.patches.colour.weight.grad is None or not model.embed.patches.colour.weight.grad.any()
    assert model.embed.patches.stem.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("route_norm", [False, True])
def test_route_norm_keeps_a_shrunk_colour_route_as_loud_as_the_shape(route_norm):
    # Training shrank the colour route to 1/68 of the shape route's norm and the colour went unread
    # (docs/RESULTS.md): normalized, the colour moves the patch's embedding as much at any scale of its map.
    torch.manual_seed(0)
    encoder = PatchEncoder(dataclasses.replace(CONFIG, patch_input="mask+colour", route_norm=route_norm)).eval()
    square, _ = _square_and_circle()
    patches = _object_patches([square], [(220, 45, 45), (55, 95, 235)])
    with torch.no_grad():
        routes, _ = encoder.routes(patches)
        torch.testing.assert_close(encoder(patches), routes.sum(dim=1), rtol=0, atol=1e-5)
        recoloured = float((encoder(patches)[0] - encoder(patches)[1]).norm())
        encoder.colour.weight.mul_(0.05)  # what training did to it, short of where layer norm's epsilon counts
        encoder.colour.bias.mul_(0.05)
        shrunk = float((encoder(patches)[0] - encoder(patches)[1]).norm())
    if route_norm:
        d = routes.shape[-1]
        torch.testing.assert_close(routes.norm(dim=-1), torch.full(routes.shape[:2], d**0.5), rtol=1e-3, atol=0)
        assert shrunk == pytest.approx(recoloured, rel=2e-2)
    else:
        assert shrunk == pytest.approx(recoloured * 0.05, rel=2e-2)


def test_route_norm_needs_a_block_that_reads_mask_and_colour():
    with pytest.raises(ValueError, match="route_norm scales the two routes of 'mask\\+colour'"):
        dataclasses.replace(CONFIG, patch_input="pixels+mask", route_norm=True)
    dataclasses.replace(CONFIG, patch_input="pixels+mask", caption_patch_input="mask+colour", route_norm=True)


@pytest.mark.parametrize(("centre", "centre_colour"), [(False, True), (True, True), (True, False)])
def test_route_tokens_read_each_caption_patch_by_its_shape_then_by_its_colour(centre, centre_colour):
    # Summed in one token the two routes were read as a pair (docs/RESULTS.md): apart, each caption patch's
    # first token holds its shape route alone, its second its colour route alone (each centred over its own
    # route's tokens of the image, the colour route only with `centre_colour_tokens`); an episode's patches keep
    # one token with both.
    torch.manual_seed(0)
    config = dataclasses.replace(CONFIG, patch_input="mask+colour", route_tokens=True, centre_patches=centre,
                                 centre_colour_tokens=centre_colour)
    model = _model(config).eval()
    image = _red_square_and_blue_circle()
    caption = tokenize_caption(image, TEXT.encode("a caption"), config.layout)
    plain = tokenize_caption(image, TEXT.encode("a caption"), CONFIG.layout)
    assert len(caption.patches) == 2 * len(plain.patches) == 8
    np.testing.assert_array_equal(caption.patches[::2], plain.patches)
    np.testing.assert_array_equal(caption.patches[1::2], plain.patches)
    np.testing.assert_array_equal(caption.patch_rows[1::2], plain.patch_rows)
    batch = collate([_episode(np.random.default_rng(0), 1, image=(32, 32, 3)), caption], config.layout)
    with torch.no_grad():
        content = model.embed.patch_content(batch)
        episode = batch.patch_in_episode
        routes, _ = model.embed.patches.routes(batch.patches[~episode][::2])  # (4, 2, d): each patch once
        both = model.embed.patches(batch.patches[episode])
    expected = routes - routes.mean(dim=0) if centre else routes
    on_caption = content[~episode]
    torch.testing.assert_close(on_caption[::2], expected[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(on_caption[1::2], expected[:, 1] if centre_colour else routes[:, 1], rtol=0, atol=1e-5)
    torch.testing.assert_close(content[episode], both - both.mean(dim=0) if centre else both, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="route_tokens reads the two routes of 'mask\\+colour' apart"):
        dataclasses.replace(CONFIG, patch_input="pixels+mask", route_tokens=True)
    dataclasses.replace(CONFIG, patch_input="pixels", caption_patch_input="mask+colour", route_tokens=True)


def test_a_colour_centre_gate_subtracts_its_learned_fraction_of_the_mean_from_the_colour_tokens_alone():
    torch.manual_seed(0)
    config = dataclasses.replace(CONFIG, patch_input="mask+colour", route_tokens=True, centre_patches=True,
                                 colour_centre_gate=True)
    model = _model(config).eval()
    image = _red_square_and_blue_circle()
    batch = collate([tokenize_caption(image, TEXT.encode("a caption"), config.layout)], config.layout)
    gate = torch.linspace(0.0, 1.0, config.d_model)
    with torch.no_grad():
        centred = model.embed.patch_content(batch)  # the gate starts at 1: centred
        model.embed.colour_centre_gate.copy_(gate)
        gated = model.embed.patch_content(batch)
        routes, _ = model.embed.patches.routes(batch.patches[::2])  # (4, 2, d): each patch once
    means = routes.mean(dim=0)
    torch.testing.assert_close(centred[1::2], routes[:, 1] - means[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(gated[1::2], routes[:, 1] - gate * means[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(gated[::2], routes[:, 0] - means[0], rtol=0, atol=1e-5)  # shapes still centred
    assert model.embed.colour_centre_gate.requires_grad
    for unfit in ({"centre_patches": False}, {"centre_colour_tokens": False}):
        with pytest.raises(ValueError, match="colour_centre_gate"):
            dataclasses.replace(config, **unfit)
    assert "embed.colour_centre_gate" not in _model().state_dict()  # models without it keep their weights' names


def test_a_swapped_colour_token_carries_another_objects_colour_and_the_shape_token_its_own_shape():
    # Three images of four patches, an object in the first patch of each: with `route_tokens` and the colour swap
    # everywhere, each object's colour token is another object's colour route, its shape token and every empty
    # patch's tokens their own.
    config = dataclasses.replace(CONFIG, patch_input="mask+colour", mask_background="nearest", route_tokens=True)
    model = _model(config).eval()
    square, circle = _square_and_circle()
    bar = np.zeros((16, 16), bool)
    bar[3:13, 6:10] = True
    images = np.full((3, 32, 32, 3), 28, dtype=np.uint8)
    for image, mask, colour in zip(images, (square, circle, bar), ((220, 45, 45), (55, 95, 235), (240, 240, 240)),
                                   strict=True):
        image[:16, :16][mask] = colour
    batch = collate([tokenize_caption(image, TEXT.encode("a caption"), config.layout) for image in images],
                    config.layout)
    swapped = dataclasses.replace(batch, patch_colour_swap=batch.patch_batch_index >= 0)
    with torch.no_grad():
        routes, holds_object = model.embed.patches.routes(batch.patches[::2])  # (12, 2, d): each patch once
        assert holds_object.tolist() == [True, False, False, False] * 3
        torch.testing.assert_close(model.embed.patch_content(batch)[1::2], routes[:, 1], rtol=0, atol=1e-5)
        donors = []
        for seed in range(4):
            torch.manual_seed(seed)
            content = model.embed.patch_content(swapped)
            torch.testing.assert_close(content[::2], routes[:, 0], rtol=0, atol=1e-5)  # every shape token its own
            colour = content[1::2]
            torch.testing.assert_close(colour[~holds_object], routes[~holds_object, 1], rtol=0, atol=1e-5)
            for patch in (0, 4, 8):
                matches = [d for d in (0, 4, 8) if torch.allclose(colour[patch], routes[d, 1], atol=1e-5)]
                assert len(matches) == 1 and matches[0] != patch
                donors.append(matches[0])
        assert set(donors) == {0, 4, 8}  # every object gives


def test_image_index_gives_each_patch_its_image_and_place():
    rows = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    tokens = torch.tensor([1, 2, 3, 9, 0, 1, 2])
    image, place = image_index(rows, tokens)
    assert image.tolist() == [0, 0, 0, 1, 2, 2, 2] and place.tolist() == [0, 1, 2, 0, 0, 1, 2]


def test_a_swapped_route_comes_from_another_object_and_empty_patches_give_none():
    # Three images of four patches, an object in the first patch of each, the rest flat background: a one-route
    # patch flagged to swap reads the other route of another object, an empty one keeps its route alone.
    config = dataclasses.replace(CONFIG, patch_input="mask+colour", mask_background="nearest")
    model = _model(config).eval()
    square, circle = _square_and_circle()
    bar = np.zeros((16, 16), bool)
    bar[3:13, 6:10] = True
    images = np.full((3, 32, 32, 3), 28, dtype=np.uint8)
    colours = ((220, 45, 45), (55, 95, 235), (240, 240, 240))
    for image, mask, colour in zip(images, (square, circle, bar), colours, strict=True):
        image[:16, :16][mask] = colour
    batch = collate([tokenize_caption(image, TEXT.encode("a caption"), config.layout) for image in images],
                    config.layout)
    everywhere = batch.patch_batch_index >= 0
    with torch.no_grad():
        routes, holds_object = model.embed.patches.routes(batch.patches)
        assert holds_object.tolist() == [True, False, False, False] * 3
        objects = [0, 4, 8]
        for flag, kept, other in (("patch_colour_only", 1, 0), ("patch_shape_only", 0, 1)):
            swapped = dataclasses.replace(batch, **{flag: everywhere}, patch_route_swap=everywhere)
            donors = []
            for seed in range(4):
                torch.manual_seed(seed)
                content = model.embed.patch_content(swapped)
                empty = ~holds_object
                torch.testing.assert_close(content[empty], routes[empty, kept], rtol=0, atol=1e-5)
                for patch in objects:  # its own kept route plus exactly one other object's other route
                    added = content[patch] - routes[patch, kept]
                    matches = [d for d in objects if torch.allclose(added, routes[d, other], atol=1e-5)]
                    assert len(matches) == 1 and matches[0] != patch
                    donors.append(matches[0])
            assert set(donors) == set(objects)  # every object gives
        unswapped = dataclasses.replace(batch, patch_colour_only=everywhere)
        torch.testing.assert_close(model.embed.patch_content(unswapped), routes[:, 1], rtol=0, atol=1e-5)


def test_every_patch_input_trains_through_the_model():
    rng = np.random.default_rng(3)
    batch = collate([_episode(rng, 4), tokenize_caption(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                                                        TEXT.encode("a caption"), LAYOUT)], LAYOUT)
    for patch_input, mask_background in [(p, "median") for p in PATCH_INPUTS] + [("mask+colour", "nearest")]:
        model = _model(dataclasses.replace(CONFIG, patch_input=patch_input, mask_background=mask_background)).train()
        model(batch).loss.backward()
        stem = model.embed.patches.stem.weight
        assert stem.shape[1] == {"pixels": 3, "pixels+mask": 4, "mask+colour": 1}[patch_input]
        assert stem.grad is not None and float(stem.grad.abs().sum()) > 0


def test_an_unknown_patch_input_is_refused():
    with pytest.raises(ValueError, match="patch_input must be one of"):
        dataclasses.replace(CONFIG, patch_input="edges")
    assert ModelConfig.from_dict({k: v for k, v in CONFIG.to_dict().items() if k != "patch_input"}).patch_input \
        == "pixels"  # a checkpoint saved before the setting existed loads as it was trained


def test_caption_images_read_through_their_own_block_and_episodes_through_theirs():
    rng = np.random.default_rng(5)
    caption = tokenize_caption(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), TEXT.encode("a caption"), LAYOUT)
    batch = collate([_episode(rng, 2), caption, _episode(rng, 1)], LAYOUT)
    in_episode = batch.patch_in_episode
    assert in_episode.tolist() == [True] * 8 + [False] * 4 + [True] * 4  # the caption's four patches, in between
    config = dataclasses.replace(CONFIG, patch_input="pixels+mask", caption_patch_input="mask+colour",
                                 caption_mask_background="nearest")
    model = _model(config)
    assert model.embed.patches.stem.in_channels == 4 and model.embed.caption_patches.stem.in_channels == 1
    with torch.no_grad():
        content = model.embed.block_content(batch.patches, in_episode)
        torch.testing.assert_close(content[in_episode], model.embed.patches(batch.patches[in_episode]),
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(content[~in_episode], model.embed.caption_patches(batch.patches[~in_episode]),
                                   rtol=0, atol=1e-5)
        alone = collate([caption], LAYOUT)
        only_captions = model.embed.block_content(alone.patches, alone.patch_in_episode)
        torch.testing.assert_close(only_captions, content[~in_episode], rtol=0, atol=1e-5)
        # Routes dropped by `drop_patch_routes` are the caption block's, the episodes' patches read as before.
        dropped = dataclasses.replace(batch, patch_colour_only=~in_episode)
        torch.testing.assert_close(model.embed.patch_content(dropped)[~in_episode],
                                   model.embed.caption_patches.routes(batch.patches[~in_episode])[0][:, 1])
        torch.testing.assert_close(model.embed.patch_content(dropped)[in_episode], content[in_episode],
                                   rtol=0, atol=1e-5)
    model.train()
    model(collate([_episode(rng, 2)], LAYOUT)).loss.backward()  # episodes alone: the caption block unread
    assert model.embed.caption_patches.stem.weight.grad is None
    assert model.embed.patches.stem.weight.grad.abs().sum() > 0
    model.zero_grad()
    model(collate([caption], LAYOUT)).loss.backward()
    assert model.embed.patches.stem.weight.grad is None or not model.embed.patches.stem.weight.grad.any()
    assert model.embed.caption_patches.stem.weight.grad.abs().sum() > 0


def test_a_model_without_a_caption_block_reads_captions_through_the_one_block():
    assert _model().embed.caption_patches is None
    assert ModelConfig.from_dict({k: v for k, v in CONFIG.to_dict().items()
                                  if not k.startswith("caption_")}).caption_patch_input == ""  # older checkpoints
    with pytest.raises(ValueError, match="caption_patch_input must be empty or one of"):
        dataclasses.replace(CONFIG, caption_patch_input="edges")
    with pytest.raises(ValueError, match="caption_mask_background must be one of"):
        dataclasses.replace(CONFIG, caption_mask_background="mean")

def test_centring_patches_leaves_a_sequence_without_images_as_it_was():
    # Why `full` may centre patches at no cost to the vector tasks: their tokens never pass through it.
    rng = np.random.default_rng(5)
    batch = collate([_episode(rng, 6, image=None), tokenize_text(TEXT.encode("no image here"), LAYOUT)], LAYOUT)
    with torch.no_grad():
        plain = _model().logits(batch)
        centred = _model(dataclasses.replace(CONFIG, centre_patches=True)).logits(batch)
    torch.testing.assert_close(centred, plain, rtol=0, atol=0)


def test_value_features_order_the_bins_and_leave_every_other_token_as_it_was():
    featured = _model(dataclasses.replace(CONFIG, value_frequencies=8)).embed
    plain = _model().embed
    with torch.no_grad():
        featured.ids.weight.copy_(plain.ids.weight)
        text = collate([tokenize_text(np.arange(50), LAYOUT)], LAYOUT)
        torch.testing.assert_close(featured(text), plain(text), rtol=0, atol=0)
        bins = torch.arange(N_BINS)
        others = torch.cat([bins + LAYOUT.discrete_offset, torch.tensor([LAYOUT.separator_id, 0])])
        added = featured.value_content(torch.cat([bins + LAYOUT.continuous_offset, others])[None],
                                       torch.zeros(1, N_BINS + len(others), CONFIG.d_model))[0]
    assert added[N_BINS:].abs().max() == 0  # discrete values, the separator and text are no continuous value
    step = (added[1:N_BINS] - added[: N_BINS - 1]).norm(dim=1)  # neighbouring bins
    far = (added[N_BINS // 2 : N_BINS] - added[: N_BINS // 2]).norm(dim=1)  # bins half the range apart
    assert step.max() < far.min()


@pytest.mark.parametrize("frequencies", [-1, 11])
def test_value_frequencies_outside_0_to_10_are_refused(frequencies):
    with pytest.raises(ValueError, match="value_frequencies"):
        dataclasses.replace(CONFIG, value_frequencies=frequencies)


def test_bin_features_are_the_bin_centre_and_its_sines_and_cosines():
    features = bin_features(torch.tensor([0, 511, 512, 1023]), 3)
    assert features.shape == (4, 7)
    torch.testing.assert_close(features[:, 0], torch.tensor([-1023, -1, 1, 1023]) / 1024)
    torch.testing.assert_close(features[:, 1:4] ** 2 + features[:, 4:] ** 2, torch.ones(4, 3))


# ------------------------------------------------------------------------------------ the loss


def _full_masked_loss(model, batch):
    """The reference: logits at every position, cross-entropy on every next token, then the mask."""
    logits = model.logits(batch)[:, :-1]
    losses = F.cross_entropy(logits.transpose(1, 2), batch.ids[:, 1:], reduction="none")
    mask = batch.loss_mask[:, 1:].float()
    return (losses * mask).sum() / mask.sum(), losses, mask


def _mixed_batch(rng):
    dialogue = tokenize_text(TEXT.encode("User: how are you? Agent: fine, thanks."), LAYOUT)
    caption = tokenize_caption(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), TEXT.encode("a red ball"), LAYOUT)
    control = _episode(rng, 3, spec=ActionSpec("continuous", 2))
    return collate([dialogue, caption, control], LAYOUT)


def test_gathered_loss_and_its_parts_equal_the_masked_loss_over_every_position():
    model = _model()
    batch = _mixed_batch(np.random.default_rng(0))
    with torch.no_grad():
        out = model(batch)
        reference, losses, mask = _full_masked_loss(model, batch)
    torch.testing.assert_close(out.loss, reference, atol=1e-5, rtol=1e-5)
    target_kinds = batch.kinds[:, 1:]
    for part, kind, count in ((out.text_loss, TokenKind.TEXT, out.n_text), (out.action_loss, TokenKind.ACTION,
                                                                           out.n_action)):
        is_kind = (target_kinds == kind).float() * mask
        assert count == int(is_kind.sum()) > 0
        torch.testing.assert_close(part, (losses * is_kind).sum() / is_kind.sum(), atol=1e-5, rtol=1e-5)
    # Per row (the loss per task in training): each sequence's summed target losses and its number of targets.
    torch.testing.assert_close(out.row_loss, (losses * mask).sum(dim=1), atol=1e-4, rtol=1e-5)
    assert out.row_targets.tolist() == mask.sum(dim=1).long().tolist() and (out.row_targets > 0).all()


def test_varying_row_counts_reach_a_matmul_as_a_few_padded_shapes_with_the_same_rows():
    model = _model()
    seen = set()

    def patch_block(x):
        seen.add(x.shape[0])
        return model.embed.patches(x)

    patches = torch.randn(2 * SHAPE_MULTIPLE + 5, 3, 16, 16, requires_grad=True)
    for n in range(1, len(patches) + 1):
        padded = on_padded_rows(patch_block, patches[:n])
        assert padded.shape[0] == n
    # Every count reaches the block padded: three shapes instead of 133 (each new bf16 shape costs memory).
    assert seen == {SHAPE_MULTIPLE, 2 * SHAPE_MULTIPLE, 3 * SHAPE_MULTIPLE}
    assert [padded_size(n) for n in (0, 1, 64, 65)] == [0, 64, 64, 128] and padded_size(7, 1) == 7
    # The rows are those of the block on the rows alone (GroupNorm normalizes each patch on its own), and so
    # are their gradients: the zero rows are cut before anything reads them.
    direct = model.embed.patches(patches[:70])
    torch.testing.assert_close(on_padded_rows(model.embed.patches, patches[:70]), direct, atol=1e-5, rtol=1e-5)
    (gradient,) = torch.autograd.grad(on_padded_rows(model.embed.patches, patches[:70]).sum(), patches)
    (reference,) = torch.autograd.grad(direct.sum(), patches)
    torch.testing.assert_close(gradient, reference, atol=1e-5, rtol=1e-5)


def test_separate_targets_score_the_true_tokens_behind_shuffled_inputs():
    model = _model()
    rng = np.random.default_rng(3)
    batch = collate([_episode(rng, 12, image=None, spec=ActionSpec("continuous", 2))], LAYOUT)
    shuffled = shuffle_action_inputs(batch, 1.0, torch.Generator().manual_seed(0))
    assert not torch.equal(shuffled.ids, batch.ids)
    with torch.no_grad():
        torch.testing.assert_close(model(batch, batch.ids).loss, model(batch).loss, atol=0, rtol=0)
        logits = model.logits(shuffled)[:, :-1]
        losses = F.cross_entropy(logits.transpose(1, 2), batch.ids[:, 1:], reduction="none")
        mask = batch.loss_mask[:, 1:].float()
        torch.testing.assert_close(model(shuffled, batch.ids).loss, (losses * mask).sum() / mask.sum(),
                                   atol=1e-5, rtol=1e-5)


def test_a_batch_scores_its_own_targets_by_default():
    model = _model()
    observations = {"continuous": np.random.default_rng(4).normal(size=(10, 3)).astype(np.float32)}
    labels, ran = np.arange(10) % 4, (np.arange(10) + 1) % 4
    learner = collate([tokenize_episode(observations, labels, DISCRETE_4, LAYOUT, executed=ran)], LAYOUT)
    as_ran = collate([tokenize_episode(observations, ran, DISCRETE_4, LAYOUT)], LAYOUT)
    as_labelled = collate([tokenize_episode(observations, labels, DISCRETE_4, LAYOUT)], LAYOUT)
    with torch.no_grad():
        # It reads the actions that ran, and is scored against the labels.
        torch.testing.assert_close(model(learner).loss, model(as_ran, as_labelled.ids).loss, atol=0, rtol=0)
        assert model(learner).loss != model(as_ran).loss


def test_targets_outside_the_mask_change_nothing():
    # A window that ends inside an observation: its last tokens are targets outside the mask, and no later
    # token reads them, so changing them must leave the loss unchanged.
    rng = np.random.default_rng(0)
    sequence = TokenizedSequence.concatenate([_episode(rng, 2, image=None), _episode(rng, 1, image=None)])
    sequence = sequence.slice(0, len(sequence) - 2)  # drop the separator and the action: ends on observations
    assert not sequence.loss_mask[-3:].any()
    model = _model()
    batch = collate([sequence], LAYOUT)
    changed = collate([sequence], LAYOUT)
    changed.ids[0, -3:] = torch.tensor([LAYOUT.continuous_offset, LAYOUT.discrete_offset, 7])
    with torch.no_grad():
        torch.testing.assert_close(model(batch).loss, model(changed).loss, atol=0, rtol=0)
        # The mask is what makes it so: a target inside the mask does change the loss.
        changed.loss_mask[0, -1] = True
        assert not torch.allclose(model(batch).loss, model(changed).loss)


def test_padding_and_batch_neighbours_change_nothing():
    rng = np.random.default_rng(1)
    sequences = [_episode(rng, 2), tokenize_text(TEXT.encode("hello there, general"), LAYOUT)]
    model = _model()
    with torch.no_grad():
        together = model(collate(sequences, LAYOUT))
        alone = [model(collate([s], LAYOUT)) for s in sequences]
        padded = model(collate(sequences[:1], LAYOUT, length=len(sequences[0]) + 17))
    total = sum(out.loss * (out.n_text + out.n_action) for out in alone)
    torch.testing.assert_close(together.loss * (together.n_text + together.n_action), total, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(padded.loss, alone[0].loss, atol=1e-6, rtol=1e-6)


def test_missing_loss_parts_are_nan_and_too_many_local_positions_is_an_error():
    model = _model()
    with torch.no_grad():
        out = model(collate([tokenize_text(np.array([5, 6, 7]), LAYOUT)], LAYOUT))
    assert out.n_action == 0 and torch.isnan(out.action_loss) and torch.isfinite(out.loss)
    long_observation = tokenize_episode({"discrete": np.zeros((1, 9), np.int64)}, None, None, LAYOUT)
    with pytest.raises(ValueError, match="max_local_positions"):
        _model(dataclasses.replace(CONFIG, max_local_positions=8))(collate([long_observation], LAYOUT))


def test_forward_is_pure():
    model = _model()
    batch = _mixed_batch(np.random.default_rng(3))
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    ids = batch.ids.clone()
    with torch.no_grad():
        first, second = model(batch), model(batch)
    assert torch.equal(first.loss, second.loss) and torch.equal(batch.ids, ids)
    assert all(torch.equal(state[name], tensor) for name, tensor in model.state_dict().items())
    assert not list(model.buffers())  # no state besides the weights


def test_bf16_autocast_forward_and_backward_run():
    model = _model().train()
    batch = _mixed_batch(np.random.default_rng(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.embed.patches.stem.weight.grad is not None and model.embed.action.grad is not None


def test_untied_head_has_its_own_weights():
    model = Generalist(dataclasses.replace(CONFIG, tie_embeddings=False))
    assert model.lm_head is not None and model.lm_head.weight is not model.embed.ids.weight
    assert model.num_parameters() == _model().num_parameters() + LAYOUT.table_size * CONFIG.d_model


# --------------------------------------------------------------------------------- overfitting


@pytest.mark.slow
def test_tiny_model_overfits_a_mixed_batch():
    rng = np.random.default_rng(0)
    layout = tiny().layout
    caption = tokenize_caption(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                               TEXT.encode("two blue squares"), layout)
    dialogue = tokenize_text(TEXT.encode("Hi! How can I help? Tell me a joke. Why did the robot cross?"), layout)
    cartpole = tokenize_episode({"continuous": rng.normal(size=(6, 4)).astype(np.float32)},
                                rng.integers(0, 2, 6), ActionSpec("discrete", n=2), layout)
    atari = tokenize_episode({"image": rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)},
                             rng.integers(0, 18, 3), ActionSpec("discrete", n=18), layout)
    batch = collate([caption, dialogue, cartpole, atari], layout)
    torch.manual_seed(0)
    model = Generalist(tiny()).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(150):  # about 70 steps reach the threshold
        out = model(batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if out.loss.item() < 0.02:
            break
    model.eval()
    with torch.no_grad():
        final = model(batch)
    assert final.loss.item() < 0.05, final
    assert final.text_loss.item() < 0.1 and final.action_loss.item() < 0.1, final


def test_target_weights_make_the_loss_a_weighted_mean_and_leave_its_parts_alone():
    rng = np.random.default_rng(3)
    model = _model()
    batch = collate([_episode(rng, 3, image=None), tokenize_text(TEXT.encode("weights"), LAYOUT)], LAYOUT)
    plain = model(batch)
    torch.testing.assert_close(model(batch, weights=torch.ones(batch.shape)).loss, plain.loss)
    only_actions = (batch.kinds == TokenKind.ACTION).float()  # text targets weigh nothing
    weighted = model(batch, weights=only_actions)
    torch.testing.assert_close(weighted.loss, plain.action_loss)
    torch.testing.assert_close(weighted.text_loss, plain.text_loss)


# ------------------------------------------------------------------------------- attention masks


def test_an_attention_mask_replaces_the_causal_one_in_every_layer():
    model = _model()
    ids = np.arange(40) + 7
    batch = collate([tokenize_text(ids, LAYOUT)], LAYOUT)
    t = batch.ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    with torch.no_grad():
        plain = model.logits(batch)
        torch.testing.assert_close(model.logits(batch, attention_mask=causal), plain)
        alone = causal.clone()
        alone[-1] = False
        alone[-1, -1] = True  # the last token reads only itself
        cut = model.logits(batch, attention_mask=alone)
        changed = ids.copy()
        changed[:-1] += 100  # every token before the last another
        cut_changed = model.logits(collate([tokenize_text(changed, LAYOUT)], LAYOUT), attention_mask=alone)
    torch.testing.assert_close(cut[:, :-1], plain[:, :-1])  # the other rows still read causally
    assert not torch.allclose(cut[:, -1], plain[:, -1])  # the cut changes what the last token says...
    torch.testing.assert_close(cut_changed[:, -1], cut[:, -1])  # ...and it no longer hears the tokens before it


def test_a_bad_attention_mask_is_refused():
    model = _model()
    batch = collate([tokenize_text(np.arange(10) + 7, LAYOUT)], LAYOUT)
    t = batch.ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    with pytest.raises(ValueError, match="bool tensor"):
        model.logits(batch, attention_mask=causal[:-1])
    with pytest.raises(ValueError, match="bool tensor"):
        model.logits(batch, attention_mask=causal.float())
    blind = causal.clone()
    blind[3, 3] = False
    with pytest.raises(ValueError, match="must read itself"):
        model.logits(batch, attention_mask=blind)
    cache = KVCache(CONFIG.n_layer, 1, CONFIG.n_head, CONFIG.d_model // CONFIG.n_head, 64, torch.device("cpu"))
    with pytest.raises(ValueError, match="not with a cache"):
        model.logits(batch, cache.write(None, torch.tensor([t]), t), attention_mask=causal)
