"""The token layout owns every id offset of docs/DESIGN.md's table."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from generalist.tokenizers.layout import TokenLayout


def test_offsets_follow_the_text_vocabulary():
    layout = TokenLayout(32000)
    assert layout.continuous_offset == 32000
    assert layout.discrete_offset == 33024
    assert layout.separator_id == 34048
    assert layout.pad_id == 34049 and layout.patch_id == 34050
    assert layout.table_size % 64 == 0 and layout.table_size >= layout.n_ids


@given(st.integers(1, 100_000))
def test_ranges_are_disjoint_and_fit_the_table(vocab):
    layout = TokenLayout(vocab)
    every = np.arange(layout.table_size)
    counts = layout.is_text(every).astype(int) + layout.is_continuous(every) + layout.is_discrete(every)
    assert counts.max() == 1
    assert counts[: vocab + 2048].all() and not counts[vocab + 2048 :].any()
    assert layout.table_size - layout.n_ids < 64


def test_bins_and_ids_convert_both_ways():
    layout = TokenLayout(100)
    bins = np.array([0, 5, 1023])
    assert layout.ids_to_continuous_bins(layout.continuous_ids(bins)).tolist() == bins.tolist()
    assert layout.ids_to_discrete(layout.discrete_ids(bins)).tolist() == bins.tolist()
    assert layout.continuous_ids(bins).tolist() == [100, 105, 1123]
    assert layout.discrete_ids(bins).tolist() == [1124, 1129, 2147]


def test_ids_of_another_range_do_not_decode():
    layout = TokenLayout(100)
    with pytest.raises(ValueError, match="continuous ids"):
        layout.ids_to_continuous_bins(np.array([layout.discrete_offset]))
    with pytest.raises(ValueError, match="discrete ids"):
        layout.ids_to_discrete(np.array([layout.separator_id]))
    with pytest.raises(ValueError, match="0..1023"):
        layout.continuous_ids(np.array([1024]))


def test_vocabulary_must_be_positive():
    with pytest.raises(ValueError, match="text_vocab_size"):
        TokenLayout(0)
