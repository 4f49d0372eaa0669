"""Collating tokenized sequences into one padded batch: padding, patches and their indices."""

import numpy as np
import pytest
import torch

from generalist.batch import (
    balanced_action_weights,
    collate,
    decisive_actions,
    drop_patch_routes,
    shuffle_action_inputs,
    shuffle_word_inputs,
    swap_colour_tokens,
    word_weights,
)
from generalist.tokenizers import (
    NO_POSITION,
    ActionSpec,
    TokenKind,
    TokenLayout,
    tokenize_caption,
    tokenize_episode,
    tokenize_text,
)

LAYOUT = TokenLayout(4096)


def _sequences():
    rng = np.random.default_rng(0)
    episode = tokenize_episode(
        {"image": rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), "continuous": rng.normal(size=(2, 3))},
        np.array([1, 0]), ActionSpec("discrete", n=2), LAYOUT,
    )
    text = tokenize_text(np.array([5, 6, 7]), LAYOUT)
    caption = tokenize_caption(rng.integers(0, 256, (16, 48, 3), dtype=np.uint8), np.array([9, 10]), LAYOUT)
    return [episode, text, caption]


def test_rows_hold_each_sequence_then_padding():
    sequences = _sequences()
    batch = collate(sequences, LAYOUT)
    longest = max(len(s) for s in sequences)
    assert batch.shape == (3, longest)
    assert batch.lengths.tolist() == [len(s) for s in sequences]
    for row, sequence in enumerate(sequences):
        n = len(sequence)
        assert batch.ids[row, :n].tolist() == sequence.ids.tolist()
        assert batch.kinds[row, :n].tolist() == sequence.kinds.tolist()
        assert batch.local_positions[row, :n].tolist() == sequence.local_positions.tolist()
        assert batch.loss_mask[row, :n].tolist() == sequence.loss_mask.tolist()
        assert (batch.ids[row, n:] == LAYOUT.pad_id).all()
        assert (batch.kinds[row, n:] == TokenKind.PAD).all()
        assert (batch.local_positions[row, n:] == NO_POSITION).all()
        assert not batch.loss_mask[row, n:].any()
    assert batch.n_tokens == sum(len(s) for s in sequences)


def test_patches_are_flattened_with_their_row_and_token():
    sequences = _sequences()
    batch = collate(sequences, LAYOUT)
    assert len(batch.patches) == sum(len(s.patches) for s in sequences) == 8 + 0 + 3
    assert batch.patch_batch_index.tolist() == [0] * 8 + [2] * 3
    # Every patch sits on a patch placeholder, and the pixels are those of its own sequence.
    assert (batch.ids[batch.patch_batch_index, batch.patch_token_index] == LAYOUT.patch_id).all()
    assert (batch.ids == LAYOUT.patch_id).sum() == len(batch.patches)
    np.testing.assert_array_equal(batch.patches[8:].numpy(), sequences[2].patches)
    np.testing.assert_array_equal(batch.patch_rows[:8].numpy(), sequences[0].patch_rows)
    np.testing.assert_array_equal(batch.patch_cols[8:].numpy(), sequences[2].patch_cols)
    assert batch.patches.dtype == torch.float32


def test_fixed_length_and_errors():
    sequences = _sequences()
    batch = collate(sequences, LAYOUT, length=64)
    assert batch.shape == (3, 64)
    with pytest.raises(ValueError, match="does not fit"):
        collate(sequences, LAYOUT, length=5)
    with pytest.raises(ValueError, match="no sequences"):
        collate([], LAYOUT)
    with pytest.raises(ValueError, match="2 task labels for 3 sequences"):
        collate(sequences, LAYOUT, tasks=[0, 1])


def test_rows_carry_their_task_labels_or_none():
    sequences = _sequences()
    assert collate(sequences, LAYOUT, tasks=[2, 0, 1]).tasks.tolist() == [2, 0, 1]
    assert collate(sequences, LAYOUT).tasks.tolist() == [-1, -1, -1]


def test_a_batch_without_patches_and_to_device():
    batch = collate([tokenize_text(np.array([1, 2]), LAYOUT)], LAYOUT)
    assert batch.patches.shape == (0, 3, 16, 16) and batch.patch_batch_index.shape == (0,)
    moved = batch.to("cpu")
    assert torch.equal(moved.ids, batch.ids) and torch.equal(moved.lengths, batch.lengths)


def _two_slot_episode(steps: int, rng: np.random.Generator):
    # Continuous actions of 2 slots whose first slot is always negative and second always positive: a token
    # moved to another slot would show.
    actions = np.stack([-rng.uniform(0.2, 1, steps), rng.uniform(0.2, 1, steps)], axis=1)
    observations = {"continuous": rng.normal(size=(steps, 3))}
    return tokenize_episode(observations, actions, ActionSpec("continuous", 2), LAYOUT)


def test_shuffled_actions_come_from_the_same_slot_of_the_same_row():
    rng = np.random.default_rng(1)
    batch = collate([_two_slot_episode(40, rng), _two_slot_episode(25, rng), tokenize_text(np.arange(9), LAYOUT)],
                    LAYOUT)
    assert shuffle_action_inputs(batch, 0.0) is batch
    shuffled = shuffle_action_inputs(batch, 1.0, torch.Generator().manual_seed(0))
    is_action = batch.kinds == TokenKind.ACTION
    assert torch.equal(shuffled.ids[~is_action], batch.ids[~is_action])  # observations, text, padding kept
    for row in range(2):
        actions = batch.ids[row][is_action[row]].view(-1, 2)
        moved = shuffled.ids[row][is_action[row]].view(-1, 2)
        for slot in range(2):
            assert set(moved[:, slot].tolist()) <= set(actions[:, slot].tolist())
        assert (moved != actions).float().mean() > 0.8  # nearly all changed: the source is its own 1 time in n
    assert torch.equal(shuffled.kinds, batch.kinds) and torch.equal(shuffled.loss_mask, batch.loss_mask)


def test_about_the_given_share_of_actions_is_shuffled():
    rng = np.random.default_rng(2)
    batch = collate([_two_slot_episode(100, rng) for _ in range(4)], LAYOUT)
    shuffled = shuffle_action_inputs(batch, 0.3, torch.Generator().manual_seed(0))
    changed = (shuffled.ids != batch.ids)[batch.kinds == TokenKind.ACTION].float().mean().item()
    assert 0.25 < changed < 0.32  # 0.3 x (1 - 1/100): a token drawn to its own timestep keeps its value


def test_decisive_actions_are_where_a_discrete_slot_changes_from_the_step_before():
    observations = {"continuous": np.zeros((5, 2), np.float32)}
    one = tokenize_episode(observations, np.array([0, 0, 2, 2, 0]), ActionSpec("discrete", n=3), LAYOUT)
    two = tokenize_episode(observations, np.array([[0.1, 0.5], [0.1, 0.9], [0.1, 0.9], [-0.3, 0.9], [-0.3, 0.9]]),
                           ActionSpec("continuous", size=2), LAYOUT)
    batch = collate([one, two], LAYOUT)
    decisive = decisive_actions(batch, LAYOUT.discrete_range)
    actions = batch.kinds == TokenKind.ACTION
    assert not decisive[~actions].any()
    assert decisive[0][actions[0]].tolist() == [False, False, True, False, True]
    # Row 2 is continuous: its slots change (slot 1 at step 1, slot 0 at step 3) but a continuous expert's bins
    # change at nearly every step, so none is decisive.
    assert not decisive[1].any()
    # Read as discrete ids, the same changes are decisive, each token on its own.
    everything = decisive_actions(batch, range(0, LAYOUT.n_ids))
    assert everything[1][actions[1]].tolist() == [False, False, False, True, False, False, True, False, False, False]


def test_rows_carry_their_targets_and_decisive_steps_are_where_the_targets_change():
    observations = {"continuous": np.zeros((4, 2), np.float32)}
    spec = ActionSpec("discrete", n=3)
    learner = tokenize_episode(observations, np.array([2, 2, 1, 1]), spec, LAYOUT, executed=np.array([0, 1, 0, 1]))
    expert = tokenize_episode(observations, np.array([0, 1, 1, 1]), spec, LAYOUT)
    batch = collate([learner, expert, tokenize_text(np.array([5, 6]), LAYOUT)], LAYOUT)
    assert batch.targets[0].tolist() == learner.target_ids().tolist()
    assert batch.ids[0].tolist() == learner.ids.tolist() and batch.ids[0].tolist() != batch.targets[0].tolist()
    assert torch.equal(batch.targets[1:], batch.ids[1:])  # no targets of their own: the ids, padding included
    actions = batch.kinds == TokenKind.ACTION
    # The labels change once (2 -> 1), the ids read at every step: decisive follows the labels.
    assert decisive_actions(batch, LAYOUT.discrete_range)[0][actions[0]].tolist() == [False, False, True, False]
    # Against the actions that ran (0, 1, 0, 1) before each label (2, 2, 1, 1): steps 1 and 3 differ.
    after_ran = decisive_actions(batch, LAYOUT.discrete_range, after_ran=True)
    assert after_ran[0][actions[0]].tolist() == [False, True, False, True]
    assert torch.equal(after_ran[1:], decisive_actions(batch, LAYOUT.discrete_range)[1:])  # the expert's: the same


def test_held_decisive_steps_are_where_the_expert_would_change_an_action_held_for_two_steps():
    observations = {"continuous": np.zeros((5, 2), np.float32)}
    spec = ActionSpec("discrete", n=3)
    ran = np.array([0, 0, 1, 1, 0])
    learner = tokenize_episode(observations, np.array([2, 2, 1, 0, 0]), spec, LAYOUT, executed=ran)
    expert = tokenize_episode(observations, np.array([0, 0, 1, 2, 2]), spec, LAYOUT)
    batch = collate([learner, expert], LAYOUT)
    actions = batch.kinds == TokenKind.ACTION
    after_ran = decisive_actions(batch, LAYOUT.discrete_range, after_ran=True)
    assert after_ran[0][actions[0]].tolist() == [False, True, True, True, True]
    # Only steps 2 and 4 follow two steps that ran the same action (0, 0 and 1, 1); step 3 follows a change.
    held = decisive_actions(batch, LAYOUT.discrete_range, after_ran=True, held=True)
    assert held[0][actions[0]].tolist() == [False, False, True, False, True]
    # The expert changes after holding 0 (step 2), then again right after (step 3): only the first is held.
    assert held[1][actions[1]].tolist() == [False, False, True, False, False]
    assert not held[~actions].any()


def test_balanced_weights_follow_each_rows_task_and_action():
    observations = {"continuous": np.zeros((3, 2), np.float32)}
    spec = ActionSpec("discrete", n=3)
    first = tokenize_episode(observations, np.array([0, 2, 1]), spec, LAYOUT)
    second = tokenize_episode(observations, np.array([2, 2, 0]), spec, LAYOUT)
    batch = collate([first, second, tokenize_text(np.array([5, 6]), LAYOUT), first], LAYOUT, tasks=[0, 1, 0, -1])
    table = torch.tensor([[0.5, 2.0, 4.0], [1.0, 3.0, 0.25]])
    weights = balanced_action_weights(batch, table, LAYOUT.discrete_range)
    actions = batch.kinds == TokenKind.ACTION
    assert weights[0][actions[0]].tolist() == [0.5, 4.0, 2.0]
    assert weights[1][actions[1]].tolist() == [0.25, 0.25, 1.0]
    assert (weights[~actions] == 1.0).all()  # observations, separators, text, padding
    assert (weights[3] == 1.0).all()  # a row with no task


def test_word_weights_weigh_the_chosen_ids_only_in_the_chosen_tasks_rows():
    caption = tokenize_caption(np.zeros((16, 16, 3), np.uint8), np.array([9, 10, 9, 11]), LAYOUT)
    text = tokenize_text(np.array([9, 10, 9, 11]), LAYOUT)
    batch = collate([caption, text, caption], LAYOUT, tasks=[1, 0, -1])
    weights = word_weights(batch, torch.tensor([9, 11]), torch.tensor([False, True]), 4.0)
    targets = batch.loss_mask[0]
    chosen = torch.isin(batch.targets[0], torch.tensor([9, 11])) & targets
    assert chosen.sum() >= 2  # at least the caption's second 9 and its 11 are targets
    assert (weights[0][chosen] == 4.0).all() and (weights[0][~chosen] == 1.0).all()
    assert (weights[1] == 1.0).all() and (weights[2] == 1.0).all()  # another task's row, a row with no task


def test_shuffled_words_become_another_word_of_their_set_in_the_chosen_tasks_rows_only():
    caption = tokenize_caption(np.zeros((16, 16, 3), np.uint8), np.array([4, 9, 10, 9, 11, 12, 11]), LAYOUT)
    rows = [caption, tokenize_text(np.array([9, 10, 9, 11]), LAYOUT), caption]
    batch = collate(rows, LAYOUT, tasks=[1, 0, -1])
    words, chosen_tasks = torch.tensor([11, 9, 12]), torch.tensor([False, True])
    assert shuffle_word_inputs(batch, words, chosen_tasks, 0.0) is batch
    shuffled = shuffle_word_inputs(batch, words, chosen_tasks, 1.0, torch.Generator().manual_seed(0))
    is_word = torch.isin(batch.ids[0], words) & (batch.kinds[0] == TokenKind.TEXT)
    assert is_word.sum() == 5
    assert (shuffled.ids[0][is_word] != batch.ids[0][is_word]).all()  # probability 1: every word another
    assert set(shuffled.ids[0][is_word].tolist()) <= {9, 11, 12}
    assert torch.equal(shuffled.ids[0][~is_word], batch.ids[0][~is_word])  # patches, other text, padding kept
    assert torch.equal(shuffled.ids[1:], batch.ids[1:])  # another task's row, a row with no task
    assert torch.equal(shuffled.targets, batch.targets) and torch.equal(shuffled.loss_mask, batch.loss_mask)


def test_about_the_given_share_of_words_is_shuffled_to_each_other_word_alike():
    text = tokenize_text(np.tile(np.array([5, 6, 7, 8]), 500), LAYOUT)
    batch = collate([text, text], LAYOUT, tasks=[0, 0])
    shuffled = shuffle_word_inputs(batch, torch.tensor([5, 6, 7]), torch.tensor([True]), 0.3,
                                   torch.Generator().manual_seed(0))
    is_word = batch.ids < 8
    assert 0.27 < (shuffled.ids != batch.ids)[is_word].float().mean().item() < 0.33
    assert torch.equal(shuffled.ids[~is_word], batch.ids[~is_word])
    from_five = shuffled.ids[(batch.ids == 5) & (shuffled.ids != 5)]
    assert 0.4 < (from_five == 6).float().mean().item() < 0.6 and set(from_five.tolist()) == {6, 7}


def test_dropping_a_patch_route_flags_the_patches_of_chosen_rows_of_the_chosen_tasks_only():
    caption = tokenize_caption(np.zeros((32, 32, 3), np.uint8), np.array([9, 10]), LAYOUT)  # 4 patches
    batch = collate([caption, caption, tokenize_text(np.array([9, 10]), LAYOUT), caption], LAYOUT,
                    tasks=[1, 1, 1, 0])
    assert not (batch.patch_colour_only.any() or batch.patch_shape_only.any()) and len(batch.patch_colour_only) == 12
    chosen_tasks = torch.tensor([False, True])
    unchanged, none, neither = drop_patch_routes(batch, chosen_tasks, 0.0)
    assert unchanged is batch and not none.any() and not neither.any()
    for shape, colour in ((1.0, 0.0), (0.0, 1.0)):
        dropped, without_shape, without_colour = drop_patch_routes(batch, chosen_tasks, shape, colour)
        rows = without_shape if shape else without_colour
        assert rows.tolist() == [True, True, True, False]  # the other task's row kept (the text row: no patches)
        assert not (without_colour if shape else without_shape).any()
        flags, other = ((dropped.patch_colour_only, dropped.patch_shape_only) if shape else
                        (dropped.patch_shape_only, dropped.patch_colour_only))
        assert flags.tolist() == [True] * 8 + [False] * 4 and not other.any()
        assert not (batch.patch_colour_only.any() or batch.patch_shape_only.any())  # the batch itself unchanged
        assert torch.equal(dropped.ids, batch.ids) and torch.equal(dropped.patches, batch.patches)
    many = collate([caption] * 400, LAYOUT, tasks=[1] * 400)
    _, some, _ = drop_patch_routes(many, chosen_tasks, 0.25, 0.0, torch.Generator().manual_seed(0))
    assert 0.19 < some.float().mean().item() < 0.31
    dropped, without_shape, without_colour = drop_patch_routes(many, chosen_tasks, 0.25, 0.5,
                                                               torch.Generator().manual_seed(0))
    assert torch.equal(without_shape, some)  # the same draw: a colour dropout beside leaves these rows as they were
    assert not (without_shape & without_colour).any()  # no row loses both routes
    assert 0.44 < without_colour.float().mean().item() < 0.56
    assert torch.equal(dropped.patch_shape_only, without_colour[many.patch_batch_index])
    for shape, colour in ((-0.1, 0.0), (0.6, 0.5)):
        with pytest.raises(ValueError, match="summing to at most 1"):
            drop_patch_routes(many, chosen_tasks, shape, colour)


def test_a_swap_flags_exactly_the_one_route_patches_of_the_same_rows_as_dropping():
    caption = tokenize_caption(np.zeros((32, 32, 3), np.uint8), np.array([9, 10]), LAYOUT)  # 4 patches
    many = collate([caption] * 200, LAYOUT, tasks=[1] * 100 + [0] * 100)
    assert not many.patch_route_swap.any()  # nothing swapped unless asked
    plain, *_ = drop_patch_routes(many, torch.tensor([False, True]), 0.25, 0.5, torch.Generator().manual_seed(0))
    assert not plain.patch_route_swap.any()
    swapped, without_shape, without_colour = drop_patch_routes(
        many, torch.tensor([False, True]), 0.25, 0.5, torch.Generator().manual_seed(0), swap=True)
    assert torch.equal(without_shape[many.patch_batch_index], plain.patch_colour_only)  # the same rows as dropping
    assert torch.equal(without_colour[many.patch_batch_index], plain.patch_shape_only)
    one_route = swapped.patch_colour_only | swapped.patch_shape_only
    assert one_route.any() and torch.equal(swapped.patch_route_swap, one_route)
    assert not one_route[many.patch_batch_index >= 100].any()  # rows of a task not chosen keep both routes


def test_a_colour_swap_flags_the_caption_patches_of_a_share_of_the_chosen_tasks_rows():
    caption = tokenize_caption(np.zeros((32, 32, 3), np.uint8), np.array([9, 10]), LAYOUT)  # 4 patches
    many = collate([caption] * 400, LAYOUT, tasks=[1] * 200 + [0] * 200)
    assert not many.patch_colour_swap.any()  # nothing swapped unless asked
    swapped, rows = swap_colour_tokens(many, torch.tensor([False, True]), 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(swapped.patch_colour_swap, rows[many.patch_batch_index])
    assert not rows[200:].any() and 0.19 < rows[:200].float().mean().item() < 0.31  # the chosen task's rows only
    assert not many.patch_colour_swap.any() and torch.equal(swapped.patches, many.patches)  # the batch unchanged
    none, rows = swap_colour_tokens(many, torch.tensor([False, True]), 0.0)
    assert not rows.any() and not none.patch_colour_swap.any()
    every, rows = swap_colour_tokens(many, torch.tensor([False, True]), 1.0)
    assert rows[:200].all() and every.patch_colour_swap.sum() == 200 * 4
    for share in (-0.1, 1.5):
        with pytest.raises(ValueError, match="colour swap is a share"):
            swap_colour_tokens(many, torch.tensor([False, True]), share)
