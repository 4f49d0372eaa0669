"""The token id layout: one table of ids shared by every modality.

| ids                  | what                                                              |
| -------------------- | ----------------------------------------------------------------- |
| 0 .. V-1             | text, a SentencePiece model of vocabulary V                       |
| V .. V+1023          | continuous values, 1024 bins (mu-law for observations)            |
| V+1024 .. V+2047     | discrete values and discrete actions, 0..1023                     |
| V+2048               | the separator `|` between observation and action                  |
| V+2049               | padding (no loss is ever taken on it)                             |
| V+2050               | the placeholder id of an image patch (embedded from pixels, not this id) |

The embedding table is rounded up to a multiple of 64 (fast matmuls); the ids past the last special are
never produced. `TokenLayout` is the only place that adds these offsets; everything else asks it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from generalist.tokenizers.images import frame_channels
from generalist.tokenizers.values import N_BINS, check_discrete

TABLE_MULTIPLE = 64


@dataclass(frozen=True)
class TokenLayout:
    """Every id offset of the shared token table, derived from the text vocabulary size, and the shape of an
    image token: the channels of its patches, and how many consecutive frames (in which colour, at which size:
    0 is as recorded) one timestep of a control task's image stacks (`stack_frames`); and whether a caption's
    patch is two tokens (`caption_route_tokens`: the model reads its shape, then its colour, at the two)."""

    text_vocab_size: int
    image_channels: int = 3
    frame_stack: int = 1
    frame_colour: str = "rgb"
    frame_size: int = 0
    caption_route_tokens: bool = False

    def __post_init__(self) -> None:
        if self.text_vocab_size < 1:
            raise ValueError(f"text_vocab_size must be positive, got {self.text_vocab_size}")
        needed = max(3, frame_channels(self.frame_stack, self.frame_colour))
        if self.image_channels < needed:
            raise ValueError(f"image_channels {self.image_channels} cannot hold {self.frame_stack} {self.frame_colour} "
                             f"frames or an RGB image: at least {needed} are needed")
        if self.frame_size < 0:
            raise ValueError(f"frame_size is a side in pixels (0: as recorded), got {self.frame_size}")

    @property
    def stacks_frames(self) -> bool:
        """Whether a control task's image timestep is more than its one recorded RGB frame."""
        return self.frame_stack > 1 or self.frame_colour != "rgb" or self.frame_size > 0

    @property
    def continuous_offset(self) -> int:
        """First id of the 1024 continuous bins."""
        return self.text_vocab_size

    @property
    def discrete_offset(self) -> int:
        """First id of the 1024 discrete values."""
        return self.text_vocab_size + N_BINS

    @property
    def discrete_range(self) -> range:
        """The ids of the 1024 discrete values."""
        return range(self.discrete_offset, self.discrete_offset + N_BINS)

    @property
    def separator_id(self) -> int:
        """The `|` between a timestep's observation and its action."""
        return self.text_vocab_size + 2 * N_BINS

    @property
    def pad_id(self) -> int:
        """Padding of batched sequences."""
        return self.separator_id + 1

    @property
    def patch_id(self) -> int:
        """Placeholder id at image-patch positions; the model embeds the pixels instead."""
        return self.separator_id + 2

    @property
    def n_ids(self) -> int:
        """Number of ids in use."""
        return self.patch_id + 1

    @property
    def table_size(self) -> int:
        """Embedding table size: `n_ids` rounded up to a multiple of 64."""
        return -(-self.n_ids // TABLE_MULTIPLE) * TABLE_MULTIPLE

    def continuous_ids(self, bins: npt.ArrayLike) -> np.ndarray:
        """Continuous bins 0..1023 to their ids."""
        return check_discrete(bins, "continuous bins") + self.continuous_offset

    def discrete_ids(self, values: npt.ArrayLike) -> np.ndarray:
        """Discrete values 0..1023 to their ids."""
        return check_discrete(values, "discrete values") + self.discrete_offset

    def ids_to_continuous_bins(self, ids: npt.ArrayLike) -> np.ndarray:
        """Continuous ids back to bins 0..1023; any other id is a `ValueError`."""
        return self._range_to_values(ids, self.continuous_offset, "continuous")

    def ids_to_discrete(self, ids: npt.ArrayLike) -> np.ndarray:
        """Discrete ids back to values 0..1023; any other id is a `ValueError`."""
        return self._range_to_values(ids, self.discrete_offset, "discrete")

    def is_text(self, ids: npt.ArrayLike) -> np.ndarray:
        """Boolean mask of text ids."""
        ids = np.asarray(ids)
        return (ids >= 0) & (ids < self.text_vocab_size)

    def is_continuous(self, ids: npt.ArrayLike) -> np.ndarray:
        """Boolean mask of continuous-bin ids."""
        ids = np.asarray(ids)
        return (ids >= self.continuous_offset) & (ids < self.continuous_offset + N_BINS)

    def is_discrete(self, ids: npt.ArrayLike) -> np.ndarray:
        """Boolean mask of discrete-value ids."""
        ids = np.asarray(ids)
        return (ids >= self.discrete_offset) & (ids < self.discrete_offset + N_BINS)

    def _range_to_values(self, ids: npt.ArrayLike, offset: int, kind: str) -> np.ndarray:
        array = np.asarray(ids)
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{kind} ids: expected integers, got dtype {array.dtype}")
        values = array.astype(np.int64) - offset
        if values.size and (values.min() < 0 or values.max() >= N_BINS):
            raise ValueError(
                f"{kind} ids must lie in {offset}..{offset + N_BINS - 1}, got {array.min()}..{array.max()}"
            )
        return values
