"""Collating tokenized sequences into one padded batch: padding, patches and their indices."""

import numpy as np
import pytest
import torch

from generalist.datasets.batching import collate
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


def test_a_batch_without_patches_and_to_device():
    batch = collate([tokenize_text(np.array([1, 2]), LAYOUT)], LAYOUT)
    assert batch.patches.shape == (0, 3, 16, 16) and batch.patch_batch_index.shape == (0,)
    moved = batch.to("cpu")
    assert torch.equal(moved.ids, batch.ids) and torch.equal(moved.lengths, batch.lengths)
