"""Timesteps and episodes to one sequence: order, kinds, mask, local positions, actions, bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from generalist.tokenizers import (
    ACTION_POSITION,
    NO_POSITION,
    NO_TIMESTEP,
    ActionSpec,
    TextTokenizer,
    TokenizedSequence,
    TokenKind,
    TokenLayout,
    continuous_to_bins,
    decode_actions,
    tokenize_actions,
    tokenize_caption,
    tokenize_episode,
    tokenize_text,
    tokenize_timestep,
)

TEXT = TextTokenizer.default()
LAYOUT = TokenLayout(TEXT.vocab_size)
DISCRETE_6 = ActionSpec("discrete", n=6)
K = TokenKind


def test_one_timestep_of_every_modality_in_order():
    observation = {
        "discrete": np.array([7, 1023]),
        "continuous": np.array([0.5, -2.0, 300.0], np.float32),
        "image": np.zeros((32, 16, 3), np.uint8),
        "text": "go left",
    }
    seq = tokenize_timestep(observation, np.array([0.25, -1.0]), ActionSpec("continuous", 2), LAYOUT, TEXT)
    n_text = len(TEXT.encode("go left"))
    expected_kinds = [K.TEXT] * n_text + [K.IMAGE] * 2 + [K.CONTINUOUS] * 3 + [K.DISCRETE] * 2
    expected_kinds += [K.SEPARATOR, K.ACTION, K.ACTION]
    assert seq.kinds.tolist() == expected_kinds
    assert seq.loss_mask.tolist() == [k in (K.TEXT, K.ACTION) for k in expected_kinds]
    expected_local = list(range(n_text)) + [NO_POSITION] * 2 + list(range(n_text, n_text + 5))
    assert seq.local_positions.tolist() == [*expected_local, NO_POSITION, ACTION_POSITION, ACTION_POSITION]
    np.testing.assert_array_equal(seq.ids[:n_text], TEXT.encode("go left"))
    assert seq.ids[n_text : n_text + 2].tolist() == [LAYOUT.patch_id] * 2
    assert seq.ids[n_text + 2 : n_text + 5].tolist() == (
        LAYOUT.continuous_offset + continuous_to_bins(np.array([0.5, -2.0, 300.0]))
    ).tolist()
    assert seq.ids[-5:-3].tolist() == [LAYOUT.discrete_offset + 7, LAYOUT.discrete_offset + 1023]
    assert seq.ids[-3] == LAYOUT.separator_id
    assert seq.ids[-2:].tolist() == [LAYOUT.continuous_offset + 640, LAYOUT.continuous_offset]
    assert seq.patch_token_index.tolist() == [n_text, n_text + 1]
    assert seq.patch_rows.tolist() == [[0, 64], [64, 128]] and seq.patch_cols.tolist() == [[0, 128]] * 2
    assert set(seq.timesteps.tolist()) == {0}


def test_ids_of_each_kind_fall_in_their_own_range():
    episode = _random_episode(np.random.default_rng(0), n_steps=5, n_cont=3, n_disc=2, image=True)
    seq = tokenize_episode(episode, np.arange(5) % 6, DISCRETE_6, LAYOUT)
    kinds, ids = seq.kinds, seq.ids
    assert LAYOUT.is_continuous(ids[kinds == K.CONTINUOUS]).all()
    assert LAYOUT.is_discrete(ids[kinds == K.DISCRETE]).all()
    assert LAYOUT.is_discrete(ids[kinds == K.ACTION]).all()
    assert (ids[kinds == K.SEPARATOR] == LAYOUT.separator_id).all()
    assert (ids[kinds == K.IMAGE] == LAYOUT.patch_id).all()
    assert (ids < LAYOUT.table_size).all()


def _random_episode(rng, n_steps, n_cont, n_disc, image=False, text=False):
    episode = {}
    if n_cont:
        episode["continuous"] = rng.normal(scale=50, size=(n_steps, n_cont)).astype(np.float32)
    if n_disc:
        episode["discrete"] = rng.integers(0, 1024, (n_steps, n_disc))
    if image:
        episode["image"] = rng.integers(0, 256, (n_steps, 20, 36, 3), dtype=np.uint8)
    if text:
        episode["text"] = [" ".join(["word"] * int(k)) for k in rng.integers(0, 4, n_steps)]
    return episode


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n_steps=st.integers(1, 6),
    n_cont=st.integers(0, 4),
    n_disc=st.integers(0, 3),
    image=st.booleans(),
    text=st.booleans(),
    action_size=st.integers(1, 3),
    continuous_action=st.booleans(),
)
def test_episode_equals_its_timesteps_concatenated(
    seed, n_steps, n_cont, n_disc, image, text, action_size, continuous_action
):
    rng = np.random.default_rng(seed)
    episode = _random_episode(rng, n_steps, n_cont, n_disc, image, text)
    if not episode:
        episode["discrete"] = rng.integers(0, 1024, (n_steps, 1))
    if continuous_action:
        spec, actions = ActionSpec("continuous", action_size), rng.uniform(-1, 1, (n_steps, action_size))
    else:
        spec, actions = ActionSpec("discrete", action_size, n=18), rng.integers(0, 18, (n_steps, action_size))
    whole = tokenize_episode(episode, actions, spec, LAYOUT, TEXT)
    steps = []
    for t in range(n_steps):
        observation = {k: v[t] for k, v in episode.items()}
        step = tokenize_timestep(observation, actions[t], spec, LAYOUT, TEXT)
        step.timesteps[:] = t
        steps.append(step)
    joined = TokenizedSequence.concatenate(steps)
    for field in ("ids", "kinds", "local_positions", "loss_mask", "timesteps", "patches", "patch_rows",
                  "patch_cols", "patch_token_index"):
        np.testing.assert_array_equal(getattr(whole, field), getattr(joined, field), err_msg=field)
    starts = whole.timestep_starts()
    assert len(starts) == n_steps and (whole.kinds[starts[1:] - 1] == K.ACTION).all()
    assert ((whole.kinds == K.ACTION).sum()) == n_steps * action_size


def test_nested_values_flatten_in_sorted_key_order_row_major():
    nested = {"continuous": {"b": np.array([[1.0, 2.0], [3.0, 4.0]]), "a": np.array([-5.0])}}
    flat = {"continuous": np.array([-5.0, 1.0, 2.0, 3.0, 4.0])}
    seq_nested = tokenize_timestep(nested, 0, DISCRETE_6, LAYOUT)
    seq_flat = tokenize_timestep(flat, 0, DISCRETE_6, LAYOUT)
    np.testing.assert_array_equal(seq_nested.ids, seq_flat.ids)


def test_observation_without_action_ends_in_the_separator():
    seq = tokenize_timestep({"continuous": np.zeros(4)}, None, None, LAYOUT)
    assert seq.kinds.tolist() == [K.CONTINUOUS] * 4 + [K.SEPARATOR]
    assert not seq.loss_mask.any()


@pytest.mark.parametrize(
    ("spec", "actions"),
    [
        (ActionSpec("discrete", n=6), np.array([0, 5, 3])),
        (ActionSpec("discrete", 3, n=1024), np.array([[0, 1023, 7], [1, 2, 3]])),
        (ActionSpec("continuous", 1), np.array([[-1.0], [0.999], [0.0]])),
        (ActionSpec("continuous", 4), np.random.default_rng(0).uniform(-1, 1, (5, 4))),
    ],
)
def test_actions_round_trip(spec, actions):
    ids = tokenize_actions(actions, spec, LAYOUT)
    assert ids.shape == (len(actions), spec.size)
    decoded = decode_actions(ids, spec, LAYOUT)
    if spec.kind == "discrete":
        np.testing.assert_array_equal(decoded, actions)
    else:
        assert decoded.shape == actions.shape and decoded.dtype == np.float32
        assert np.abs(decoded - actions).max() <= 1 / 1024 + 1e-6


def test_action_mask_allows_only_valid_ids():
    mask = DISCRETE_6.valid_id_mask(LAYOUT)
    assert mask.shape == (1, LAYOUT.table_size)
    assert np.flatnonzero(mask[0]).tolist() == list(range(LAYOUT.discrete_offset, LAYOUT.discrete_offset + 6))
    continuous = ActionSpec("continuous", 2).valid_id_mask(LAYOUT)
    assert continuous.sum(axis=1).tolist() == [1024, 1024] and LAYOUT.is_continuous(np.flatnonzero(continuous[0])).all()


def test_decode_rejects_ids_outside_the_action_space():
    with pytest.raises(ValueError, match="outside the 6 discrete actions"):
        decode_actions(np.array([[LAYOUT.discrete_offset + 6]]), DISCRETE_6, LAYOUT)
    with pytest.raises(ValueError, match="continuous ids"):
        decode_actions(np.array([[LAYOUT.separator_id]]), ActionSpec("continuous"), LAYOUT)
    with pytest.raises(ValueError, match="shape"):
        decode_actions(np.array([1, 2]), DISCRETE_6, LAYOUT)


def test_caption_is_patches_then_text_with_loss_on_text():
    caption = TEXT.encode("a red circle")
    seq = tokenize_caption(np.zeros((32, 32, 3), np.uint8), caption, LAYOUT)
    assert seq.kinds.tolist() == [K.IMAGE] * 4 + [K.TEXT] * len(caption)
    assert seq.loss_mask.tolist() == [False] * 4 + [True] * len(caption)
    assert (seq.timesteps == NO_TIMESTEP).all() and (seq.local_positions == NO_POSITION).all()
    assert len(seq.timestep_starts()) == 0


def test_two_tokens_a_caption_patch_read_its_pixels_then_the_pixels_colour_from_names():
    image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)  # four patches, each different
    caption = TEXT.encode("a red circle")
    layout = TokenLayout(TEXT.vocab_size, caption_route_tokens=True)
    own = tokenize_caption(image, caption, layout)
    assert own.kinds.tolist() == [K.IMAGE] * 8 + [K.TEXT] * len(caption)
    np.testing.assert_array_equal(own.patches[0::2], own.patches[1::2])  # each patch twice
    moved = tokenize_caption(image, caption, layout, colour_from=[2, 1, 0, 3])
    np.testing.assert_array_equal(moved.patches[0::2], own.patches[0::2])  # the shape tokens keep their own
    np.testing.assert_array_equal(moved.patches[1::2], own.patches[0::2][[2, 1, 0, 3]])
    np.testing.assert_array_equal(moved.patch_rows, own.patch_rows)  # every token stays at its patch's place
    np.testing.assert_array_equal(tokenize_caption(image, caption, layout, colour_from=np.arange(4)).patches,
                                  own.patches)
    for bad, match in (([0, 1, 2], "4 integer patch indices"), ([0, 1, 2, 4], r"lie in 0\.\.3"),
                       ([0.0, 1.0, 2.0, 3.0], "integer patch indices")):
        with pytest.raises(ValueError, match=match):
            tokenize_caption(image, caption, layout, colour_from=bad)
    with pytest.raises(ValueError, match="needs layout.caption_route_tokens"):
        tokenize_caption(image, caption, LAYOUT, colour_from=[0, 1, 2, 3])


def test_colour_tokens_may_read_the_same_patches_of_another_image():
    image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    painted = (255 - image).astype(np.uint8)  # the same size, other pixels everywhere
    caption = TEXT.encode("a red circle")
    layout = TokenLayout(TEXT.vocab_size, caption_route_tokens=True)
    own, other = tokenize_caption(image, caption, layout), tokenize_caption(painted, caption, layout)
    read = tokenize_caption(image, caption, layout, colour_image=painted)
    np.testing.assert_array_equal(read.patches[0::2], own.patches[0::2])  # the shape tokens read the image
    np.testing.assert_array_equal(read.patches[1::2], other.patches[0::2])  # the colour tokens the other, in place
    np.testing.assert_array_equal(read.patch_rows, own.patch_rows)
    with pytest.raises(ValueError, match="4 patches like the caption image's"):
        tokenize_caption(image, caption, layout, colour_image=painted[:16])
    with pytest.raises(ValueError, match="either other patches"):
        tokenize_caption(image, caption, layout, colour_from=[0, 1, 2, 3], colour_image=painted)
    with pytest.raises(ValueError, match="needs layout.caption_route_tokens"):
        tokenize_caption(image, caption, LAYOUT, colour_image=painted)


def test_slice_keeps_the_patches_inside_it():
    episode = _random_episode(np.random.default_rng(2), n_steps=4, n_cont=2, n_disc=0, image=True)
    seq = tokenize_episode(episode, np.zeros(4, int), DISCRETE_6, LAYOUT)
    start, stop = seq.timestep_starts()[1], seq.timestep_starts()[3]
    part = seq.slice(start, stop)
    assert len(part) == stop - start and len(part.patches) == 2 * 6
    assert (part.kinds[part.patch_token_index] == K.IMAGE).all()
    np.testing.assert_array_equal(part.patches, seq.patches[6:18])


def test_timesteps_of_concatenated_sequences_stay_apart():
    step = tokenize_timestep({"continuous": np.zeros(2)}, 1, DISCRETE_6, LAYOUT)  # both stamped timestep 0
    joined = TokenizedSequence.concatenate([step, step, tokenize_text(np.array([5, 6]), LAYOUT), step])
    assert joined.timestep_starts().tolist() == [0, 4, 10]


def test_text_sequence_rejects_non_text_ids():
    with pytest.raises(ValueError, match=f"0..{TEXT.vocab_size - 1}"):
        tokenize_text(np.array([LAYOUT.separator_id]), LAYOUT)


@pytest.mark.parametrize(
    ("observation", "action", "message"),
    [
        ({"continuous": np.array([np.nan, 1.0])}, 0, r"observation\['continuous'\].*NaN"),
        ({"continuous": np.array([np.inf])}, 0, r"observation\['continuous'\].*infinite"),
        ({"continuous": np.array(["x"])}, 0, r"observation\['continuous'\].*dtype"),
        ({"discrete": np.array([1024])}, 0, r"observation\['discrete'\].*0..1023"),
        ({"discrete": np.array([-1])}, 0, r"observation\['discrete'\].*0..1023"),
        ({"discrete": np.array([1.5])}, 0, r"observation\['discrete'\].*integer"),
        ({"image": np.zeros((16, 16), np.uint8)}, 0, r"observation\['image'\].*\(H, W, 3\)"),
        ({"image": np.zeros((16, 16, 4), np.uint8)}, 0, r"observation\['image'\].*3 channels"),
        ({"image": np.zeros((16, 16, 3), np.int16)}, 0, r"observation\['image'\].*dtype"),
        ({}, 0, "empty"),
        ({"continuous": np.zeros(0)}, 0, r"observation\['continuous'\].*empty"),
        ({"pixels": np.zeros(3)}, 0, "unknown keys"),
        ({"continuous": np.zeros(2)}, np.array([0, 1]), r"action.*shape"),
        ({"continuous": np.zeros(2)}, 6, r"action.*0..5"),
        ({"text": "hi"}, 0, "text tokenizer"),
        ("not a dict", 0, "expected a dict"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_key(observation, action, message):
    with pytest.raises(ValueError, match=message):
        tokenize_timestep(observation, action, DISCRETE_6, LAYOUT)


def test_bad_continuous_action_is_a_value_error():
    spec = ActionSpec("continuous", 2)
    with pytest.raises(ValueError, match="action.*NaN"):
        tokenize_timestep({"continuous": np.zeros(2)}, np.array([0.0, np.nan]), spec, LAYOUT)
    with pytest.raises(ValueError, match=r"action.*shape \(1, 2\)"):
        tokenize_timestep({"continuous": np.zeros(2)}, np.array([0.0]), spec, LAYOUT)


@pytest.mark.parametrize(("kind", "size", "n"), [("other", 1, None), ("discrete", 1, None), ("discrete", 1, 1025),
                                                  ("continuous", 0, None)])
def test_bad_action_specs(kind, size, n):
    with pytest.raises(ValueError, match="ActionSpec"):
        ActionSpec(kind, size, n)


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 6)),
                  elements=st.floats(allow_nan=False, allow_infinity=False, width=64)))
def test_any_finite_continuous_observation_tokenizes_in_range(values):
    seq = tokenize_episode({"continuous": values}, None, None, LAYOUT)
    assert LAYOUT.is_continuous(seq.ids[seq.kinds == K.CONTINUOUS]).all()
    assert len(seq) == values.shape[0] * (values.shape[1] + 1)


def test_a_learner_driven_episode_reads_what_ran_and_targets_the_labels():
    observations = {"continuous": np.arange(12, dtype=np.float32).reshape(4, 3)}
    spec = ActionSpec("continuous", size=2)
    labels = np.array([[0.5, -0.5], [0.5, -0.5], [0.2, 0.1], [0.9, 0.0]])
    ran = np.array([[0.0, 0.0], [-0.7, 0.3], [0.2, 0.1], [-0.1, 0.8]])
    learner = tokenize_episode(observations, labels, spec, LAYOUT, executed=ran)
    as_labelled, as_ran = (tokenize_episode(observations, a, spec, LAYOUT) for a in (labels, ran))
    np.testing.assert_array_equal(learner.ids, as_ran.ids)
    np.testing.assert_array_equal(learner.target_ids(), as_labelled.ids)
    assert as_labelled.targets is None and as_labelled.target_ids() is as_labelled.ids
    with pytest.raises(ValueError, match="labels"):
        tokenize_episode(observations, None, spec, LAYOUT, executed=ran)


def test_targets_follow_their_tokens_through_concatenation_and_slicing():
    observations = {"continuous": np.zeros((3, 1), np.float32)}
    spec = ActionSpec("discrete", n=3)
    prompt = tokenize_episode(observations, np.array([0, 1, 2]), spec, LAYOUT)  # no targets of its own
    window = tokenize_episode(observations, np.array([2, 2, 2]), spec, LAYOUT, executed=np.array([1, 0, 1]))
    both = TokenizedSequence.concatenate([prompt, window])
    np.testing.assert_array_equal(both.target_ids(), np.concatenate([prompt.ids, window.target_ids()]))
    np.testing.assert_array_equal(both.ids, np.concatenate([prompt.ids, window.ids]))
    np.testing.assert_array_equal(both.slice(len(prompt), len(both)).target_ids(), window.target_ids())
    assert TokenizedSequence.concatenate([prompt, prompt]).targets is None
