"""Timesteps, episodes, captions and text to one token sequence.

One timestep is `[observation text][image patches][continuous values][discrete values] | [action]`
(docs/DESIGN.md): the observation keys of the contract in that fixed order, each value array flattened row-major,
and a nested dict of arrays under `continuous` or `discrete` flattened in sorted key order. The separator
follows every observation; the action follows the separator.

Every token carries:
- `ids`: its id in the shared table (`TokenLayout`); image patches hold the placeholder `layout.patch_id`;
- `kinds`: a `TokenKind`;
- `local_positions`: observation tokens that are not patches get their index among the timestep's
  non-patch observation tokens (0, 1, ...); action tokens get `ACTION_POSITION`, one shared position; the
  rest (patches, separators, text outside an episode) `NO_POSITION`;
- `loss_mask`: True on text and action tokens only (the target mask: the model predicts token t+1 at t);
- `timesteps`: the index of its timestep in the episode, `NO_TIMESTEP` outside an episode.
Image patches are kept apart: their pixels, the bucket ranges of their row and column, and the index of the
token they sit at.

Episodes are tokenized as array work: every timestep of a task has the same structure, so each segment of
the timestep (text, patches, values, separator, action) is built for all steps at once and scattered into
place. Only text observations, whose length varies per step, are encoded string by string.

Bad input is a `ValueError` naming the key and what was expected: NaN or infinite values, the wrong dtype,
an image of the wrong rank or channel count, a discrete value outside 0..1023, an action of the wrong shape,
an empty observation. Continuous observations beyond +-256 saturate to the end bins by design (values.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from generalist.tokenizers.images import PATCH_SIZE, images_to_patches, patch_intervals
from generalist.tokenizers.layout import TokenLayout
from generalist.tokenizers.values import N_BINS, bins_to_continuous, check_discrete, continuous_to_bins

OBSERVATION_KEYS = ("text", "image", "continuous", "discrete")
NO_POSITION = -1
ACTION_POSITION = -2
NO_TIMESTEP = -1


class TokenKind(IntEnum):
    """What a token stands for."""

    TEXT = 0
    IMAGE = 1
    CONTINUOUS = 2
    DISCRETE = 3
    SEPARATOR = 4
    ACTION = 5
    PAD = 6


class TextEncoder(Protocol):
    """What the stream needs of a text tokenizer (`TextTokenizer` is one)."""

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class ActionSpec:
    """How an environment action becomes action tokens: `size` slots, discrete (n choices) or continuous."""

    kind: Literal["discrete", "continuous"]
    size: int = 1
    n: int | None = None
    """Discrete: choices per slot, at most 1024. Continuous: unused (1024 bins over [-1, 1])."""

    def __post_init__(self) -> None:
        if self.kind not in ("discrete", "continuous"):
            raise ValueError(f"ActionSpec.kind must be 'discrete' or 'continuous', got {self.kind!r}")
        if self.size < 1:
            raise ValueError(f"ActionSpec.size must be at least 1, got {self.size}")
        if self.kind == "discrete" and (self.n is None or not 1 <= self.n <= N_BINS):
            raise ValueError(f"a discrete ActionSpec needs 1 <= n <= {N_BINS}, got n={self.n}")

    def valid_id_ranges(self, layout: TokenLayout) -> list[tuple[int, int]]:
        """The half-open id range [lo, hi) that each action slot may take."""
        if self.kind == "discrete":
            lo = layout.discrete_offset
            return [(lo, lo + self.n)] * self.size
        lo = layout.continuous_offset
        return [(lo, lo + N_BINS)] * self.size

    def valid_id_mask(self, layout: TokenLayout) -> np.ndarray:
        """Boolean (size, layout.table_size): which ids each action slot may take."""
        mask = np.zeros((self.size, layout.table_size), dtype=bool)
        for slot, (lo, hi) in enumerate(self.valid_id_ranges(layout)):
            mask[slot, lo:hi] = True
        return mask


@dataclass
class TokenizedSequence:
    """A token stream and everything the model needs to embed it and mask its loss.

    Shapes: T tokens, N image patches of C channels and P pixels a side.
    """

    ids: np.ndarray  # (T,) int64
    kinds: np.ndarray  # (T,) uint8, TokenKind
    local_positions: np.ndarray  # (T,) int64
    loss_mask: np.ndarray  # (T,) bool
    timesteps: np.ndarray  # (T,) int64
    patches: np.ndarray  # (N, C, P, P) float32
    patch_rows: np.ndarray  # (N, 2) int64, bucket range [lo, hi) of the patch's row
    patch_cols: np.ndarray  # (N, 2) int64, bucket range [lo, hi) of the patch's column
    patch_token_index: np.ndarray  # (N,) int64, index of the token each patch sits at
    # (T,) int64, what the loss predicts where it differs from what the model reads (a learner-driven window
    # reads the actions it executed and predicts the expert's labels); None: the ids themselves.
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def target_ids(self) -> np.ndarray:
        """(T,) ids the loss predicts: `targets` where given, else the ids read."""
        return self.ids if self.targets is None else self.targets

    @classmethod
    def empty(cls, channels: int = 3, patch_size: int = PATCH_SIZE) -> TokenizedSequence:
        """A sequence of no tokens."""
        return _from_segments(0, [], np.zeros((0, channels, patch_size, patch_size), np.float32))

    @classmethod
    def concatenate(cls, sequences: Sequence[TokenizedSequence]) -> TokenizedSequence:
        """Sequences one after the other (a prompt, then an episode window)."""
        if not sequences:
            return cls.empty()
        starts = np.cumsum([0] + [len(s) for s in sequences[:-1]])
        return cls(
            ids=np.concatenate([s.ids for s in sequences]),
            kinds=np.concatenate([s.kinds for s in sequences]),
            local_positions=np.concatenate([s.local_positions for s in sequences]),
            loss_mask=np.concatenate([s.loss_mask for s in sequences]),
            timesteps=np.concatenate([s.timesteps for s in sequences]),
            # Sequences without patches (text, actions) do not decide the patches' channel count.
            patches=np.concatenate([s.patches for s in sequences if len(s.patches)] or [sequences[0].patches]),
            patch_rows=np.concatenate([s.patch_rows for s in sequences]),
            patch_cols=np.concatenate([s.patch_cols for s in sequences]),
            patch_token_index=np.concatenate(
                [s.patch_token_index + start for s, start in zip(sequences, starts, strict=True)]
            ),
            targets=(None if all(s.targets is None for s in sequences)
                     else np.concatenate([s.target_ids() for s in sequences])),
        )

    def slice(self, start: int, stop: int) -> TokenizedSequence:
        """Tokens start..stop-1 with the patches that sit among them."""
        start, stop, _ = slice(start, stop).indices(len(self))
        keep = (self.patch_token_index >= start) & (self.patch_token_index < stop)
        return TokenizedSequence(
            ids=self.ids[start:stop],
            kinds=self.kinds[start:stop],
            local_positions=self.local_positions[start:stop],
            loss_mask=self.loss_mask[start:stop],
            timesteps=self.timesteps[start:stop],
            patches=self.patches[keep],
            patch_rows=self.patch_rows[keep],
            patch_cols=self.patch_cols[keep],
            patch_token_index=self.patch_token_index[keep] - start,
            targets=None if self.targets is None else self.targets[start:stop],
        )

    def timestep_starts(self) -> np.ndarray:
        """Token indices where a new timestep begins (windows aligned to timesteps start there).

        A timestep begins where the timestep index changes, or right after an action token: a prompt ending at
        step k followed by a window starting at step k is two timesteps, not one.
        """
        steps, kinds = self.timesteps, self.kinds
        after_action = (kinds[:-1] == TokenKind.ACTION) & (kinds[1:] != TokenKind.ACTION)
        change = np.flatnonzero((steps[1:] != steps[:-1]) | after_action) + 1
        starts = np.concatenate([[0], change]) if len(steps) else change
        return starts[steps[starts] != NO_TIMESTEP]


@dataclass(frozen=True)
class _Segment:
    """Tokens of one kind for every step: flat ids and how many belong to each step."""

    kind: TokenKind
    ids: np.ndarray  # (sum(counts),)
    counts: np.ndarray  # (n_steps,)


def _ragged_arange(counts: np.ndarray) -> np.ndarray:
    """For counts [2, 3]: [0, 1, 0, 1, 2]."""
    total = int(counts.sum())
    starts = np.cumsum(counts) - counts
    return np.arange(total) - np.repeat(starts, counts)


_OBSERVATION_VALUE_KINDS = (TokenKind.TEXT, TokenKind.CONTINUOUS, TokenKind.DISCRETE)


def _from_segments(
    n_steps: int,
    segments: list[_Segment],
    patches: np.ndarray,
    patch_rows: np.ndarray | None = None,
    patch_cols: np.ndarray | None = None,
    episodic: bool = True,
) -> TokenizedSequence:
    """Interleave per-step segments (in timestep order) into one sequence."""
    counts = np.stack([s.counts for s in segments]) if segments else np.zeros((0, n_steps), np.int64)
    step_lengths = counts.sum(axis=0)
    segment_starts = np.cumsum(step_lengths) - step_lengths + np.cumsum(counts, axis=0) - counts
    # Local positions count non-patch observation tokens only: where each such segment starts among them.
    is_value = np.array([s.kind in _OBSERVATION_VALUE_KINDS for s in segments], dtype=bool)
    value_counts = counts * is_value[:, None]
    local_starts = np.cumsum(value_counts, axis=0) - value_counts

    total = int(step_lengths.sum())
    ids = np.empty(total, np.int64)
    kinds = np.empty(total, np.uint8)
    local_positions = np.full(total, NO_POSITION, np.int64)
    timesteps = np.full(total, NO_TIMESTEP, np.int64)
    patch_token_index = np.zeros(0, np.int64)
    for index, segment in enumerate(segments):
        within = _ragged_arange(segment.counts)
        where = np.repeat(segment_starts[index], segment.counts) + within
        ids[where] = segment.ids
        kinds[where] = segment.kind
        if episodic:
            timesteps[where] = np.repeat(np.arange(n_steps), segment.counts)
            if segment.kind in _OBSERVATION_VALUE_KINDS:
                local_positions[where] = np.repeat(local_starts[index], segment.counts) + within
            elif segment.kind == TokenKind.ACTION:
                local_positions[where] = ACTION_POSITION
        if segment.kind == TokenKind.IMAGE:
            patch_token_index = where
    loss_mask = (kinds == TokenKind.TEXT) | (kinds == TokenKind.ACTION)
    empty_range = np.zeros((0, 2), np.int64)
    return TokenizedSequence(
        ids=ids,
        kinds=kinds,
        local_positions=local_positions,
        loss_mask=loss_mask,
        timesteps=timesteps,
        patches=patches,
        patch_rows=empty_range if patch_rows is None else patch_rows,
        patch_cols=empty_range if patch_cols is None else patch_cols,
        patch_token_index=patch_token_index,
    )


def _flatten_values(value: Any, n_steps: int, key: str) -> np.ndarray:
    """Values (n_steps, ...) or a dict of them (sorted keys) to (n_steps, k), row-major."""
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"observation[{key!r}]: empty dict")
        parts = [_flatten_values(value[k], n_steps, f"{key}.{k}") for k in sorted(value)]
        return np.concatenate(parts, axis=1)
    array = np.asarray(value)
    if array.ndim == 0 or array.shape[0] != n_steps:
        raise ValueError(f"observation[{key!r}]: expected a leading dimension of {n_steps} steps, got {array.shape}")
    flat = array.reshape(n_steps, -1)
    if flat.shape[1] == 0:
        raise ValueError(f"observation[{key!r}]: empty array of shape {array.shape}")
    return flat


def _observation_segments(
    observations: Mapping[str, Any],
    n_steps: int,
    layout: TokenLayout,
    text_encoder: TextEncoder | None,
    image_channels: int,
) -> tuple[list[_Segment], np.ndarray, np.ndarray, np.ndarray]:
    """Segments of a stacked observation dict, with its patches and their bucket ranges."""
    unknown = set(observations) - set(OBSERVATION_KEYS)
    if unknown:
        raise ValueError(f"observation: unknown keys {sorted(unknown)}; expected any of {list(OBSERVATION_KEYS)}")
    if not observations:
        raise ValueError(f"observation: empty; expected any of the keys {list(OBSERVATION_KEYS)}")
    segments: list[_Segment] = []
    patches = np.zeros((0, image_channels, PATCH_SIZE, PATCH_SIZE), np.float32)
    rows = cols = np.zeros((0, 2), np.int64)
    if "text" in observations:
        texts = observations["text"]
        if isinstance(texts, str) or len(texts) != n_steps:
            raise ValueError(f"observation['text']: expected a sequence of {n_steps} strings")
        if text_encoder is None:
            raise ValueError("observation['text']: a text tokenizer is needed to tokenize text observations")
        if not all(isinstance(text, str) for text in texts):
            raise ValueError("observation['text']: expected str values")
        encoded = text_encoder.encode_batch(list(texts))
        counts = np.array([len(e) for e in encoded], np.int64)
        flat = np.concatenate(encoded) if encoded else np.zeros(0, np.int64)
        segments.append(_Segment(TokenKind.TEXT, flat.astype(np.int64), counts))
    if "image" in observations:
        images = np.asarray(observations["image"])
        if images.ndim != 4 or images.shape[0] != n_steps:
            raise ValueError(
                f"observation['image']: expected one (H, W, {image_channels}) image per step, got shape "
                f"{images.shape[1:] if images.ndim else images.shape}"
            )
        step_patches, n_rows, n_cols = images_to_patches(images, image_channels, name="observation['image']")
        n_patches = n_rows * n_cols
        patches = step_patches.reshape(-1, *step_patches.shape[2:])
        step_rows, step_cols = patch_intervals(n_rows, n_cols)
        rows, cols = np.tile(step_rows, (n_steps, 1)), np.tile(step_cols, (n_steps, 1))
        segments.append(
            _Segment(TokenKind.IMAGE, np.full(n_steps * n_patches, layout.patch_id, np.int64),
                     np.full(n_steps, n_patches, np.int64))
        )
    if "continuous" in observations:
        values = _flatten_values(observations["continuous"], n_steps, "continuous")
        bins = continuous_to_bins(values, mu_law=True, name="observation['continuous']")
        segments.append(
            _Segment(TokenKind.CONTINUOUS, layout.continuous_ids(bins).ravel(),
                     np.full(n_steps, values.shape[1], np.int64))
        )
    if "discrete" in observations:
        values = _flatten_values(observations["discrete"], n_steps, "discrete")
        checked = check_discrete(values, "observation['discrete']")
        segments.append(
            _Segment(TokenKind.DISCRETE, layout.discrete_ids(checked).ravel(),
                     np.full(n_steps, values.shape[1], np.int64))
        )
    return segments, patches, rows, cols


def _action_bins(actions: npt.ArrayLike, spec: ActionSpec, n_steps: int) -> np.ndarray:
    """Actions (n_steps, size) or (n_steps,) for size 1, to bins (n_steps, size)."""
    array = np.asarray(actions)
    if array.shape not in ((n_steps, spec.size),) + (((n_steps,),) if spec.size == 1 else ()):
        raise ValueError(
            f"action: expected shape {(n_steps, spec.size)} for {n_steps} steps of a {spec.kind} action of "
            f"size {spec.size}, got {array.shape}"
        )
    array = array.reshape(n_steps, spec.size)
    if spec.kind == "discrete":
        values = check_discrete(array, "action")
        if values.size and values.max() >= spec.n:
            raise ValueError(f"action: discrete actions must lie in 0..{spec.n - 1}, got {values.max()}")
        return values
    # Continuous actions are in [-1, 1] by contract; binning clips anything past the ends to the end bins.
    return continuous_to_bins(array, mu_law=False, name="action")


def _action_segment(actions: npt.ArrayLike, spec: ActionSpec, layout: TokenLayout, n_steps: int) -> _Segment:
    bins = _action_bins(actions, spec, n_steps)
    ids = layout.discrete_ids(bins) if spec.kind == "discrete" else layout.continuous_ids(bins)
    return _Segment(TokenKind.ACTION, ids.ravel(), np.full(n_steps, spec.size, np.int64))


def _n_steps(observations: Mapping[str, Any]) -> int:
    if not observations:
        raise ValueError(f"observation: empty; expected any of the keys {list(OBSERVATION_KEYS)}")
    key = sorted(observations)[0]
    value = observations[key]
    while isinstance(value, Mapping):
        if not value:
            raise ValueError(f"observation[{key!r}]: empty dict")
        value = value[sorted(value)[0]]
    return len(value)


def tokenize_episode(
    observations: Mapping[str, Any],
    actions: npt.ArrayLike | None,
    spec: ActionSpec | None,
    layout: TokenLayout,
    text_encoder: TextEncoder | None = None,
    image_channels: int | None = None,
    executed: npt.ArrayLike | None = None,
) -> TokenizedSequence:
    """A whole episode, observations stacked over steps (key -> (n_steps, ...)), to one sequence.

    With `actions=None` every step is an observation and its separator only (what a policy feeds before
    sampling the action). With `executed` (the actions the env ran, where a learner drove and `actions` are the
    expert's labels) the action tokens read the executed actions and `targets` holds the labels: acting, a
    policy reads its own past actions, so that is the history it must learn to act from.
    """
    n_steps = _n_steps(observations)
    segments, patches, rows, cols = _observation_segments(
        observations, n_steps, layout, text_encoder, image_channels or layout.image_channels
    )
    segments.append(_Segment(TokenKind.SEPARATOR, np.full(n_steps, layout.separator_id, np.int64),
                             np.ones(n_steps, np.int64)))
    if actions is not None:
        if spec is None:
            raise ValueError("action: an ActionSpec is needed to tokenize actions")
        segments.append(_action_segment(actions, spec, layout, n_steps))
    sequence = _from_segments(n_steps, segments, patches, rows, cols)
    if executed is not None:
        if actions is None:
            raise ValueError("executed: the labels `actions` are needed beside the executed actions")
        sequence.targets = sequence.ids.copy()
        # Action tokens lie step by step, slot by slot: the order of the action segment's ids.
        sequence.ids[sequence.kinds == TokenKind.ACTION] = _action_segment(executed, spec, layout, n_steps).ids
    return sequence


def _stack_one(observation: Mapping[str, Any]) -> dict[str, Any]:
    """One observation as a stacked episode of one step."""
    if not isinstance(observation, Mapping):
        raise ValueError(f"observation: expected a dict, got {type(observation).__name__}")

    def stack(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: stack(v) for k, v in value.items()}
        if isinstance(value, str):
            return [value]
        return np.asarray(value)[None]

    return {key: stack(value) for key, value in observation.items()}


def tokenize_timestep(
    observation: Mapping[str, Any],
    action: npt.ArrayLike | None,
    spec: ActionSpec | None,
    layout: TokenLayout,
    text_encoder: TextEncoder | None = None,
    image_channels: int | None = None,
) -> TokenizedSequence:
    """One observation (and its action, unless None) to `[observation] | [action]`."""
    actions = None if action is None else np.asarray(action)[None]
    return tokenize_episode(_stack_one(observation), actions, spec, layout, text_encoder, image_channels)


def tokenize_actions(actions: npt.ArrayLike, spec: ActionSpec, layout: TokenLayout) -> np.ndarray:
    """A batch of actions (B, size) or (B,) to their ids (B, size)."""
    array = np.asarray(actions)
    ids = _action_segment(array, spec, layout, array.shape[0] if array.ndim else 0).ids
    return ids.reshape(-1, spec.size)


def decode_actions(ids: npt.ArrayLike, spec: ActionSpec, layout: TokenLayout) -> np.ndarray:
    """Action ids (B, size) back to env actions: int64 (B,) for one discrete slot, else (B, size).

    Continuous actions decode to bin centres in [-1, 1] (float32); discrete to their integers.
    """
    array = np.asarray(ids)
    if array.ndim != 2 or array.shape[1] != spec.size:
        raise ValueError(f"action ids: expected shape (batch, {spec.size}), got {array.shape}")
    if spec.kind == "discrete":
        values = layout.ids_to_discrete(array)
        if values.size and values.max() >= spec.n:
            raise ValueError(f"action ids decode to {values.max()}, outside the {spec.n} discrete actions")
        return values[:, 0] if spec.size == 1 else values
    return bins_to_continuous(layout.ids_to_continuous_bins(array), mu_law=False).astype(np.float32)


def tokenize_text(ids: npt.ArrayLike, layout: TokenLayout) -> TokenizedSequence:
    """Text ids (a dialogue, a caption) as a sequence of text tokens."""
    array = np.asarray(ids)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"text ids: expected a 1-D integer array, got shape {array.shape} {array.dtype}")
    if array.size and not layout.is_text(array).all():
        raise ValueError(f"text ids must lie in 0..{layout.text_vocab_size - 1}")
    segment = _Segment(TokenKind.TEXT, array.astype(np.int64), np.array([array.size], np.int64))
    patches = np.zeros((0, layout.image_channels, PATCH_SIZE, PATCH_SIZE), np.float32)
    return _from_segments(1, [segment], patches, episodic=False)


def _patch_sources(colour_from: npt.ArrayLike | None, n_patches: int) -> np.ndarray:
    """`colour_from` checked as one patch index (0..n-1) per patch; every patch its own when None."""
    if colour_from is None:
        return np.arange(n_patches)
    sources = np.asarray(colour_from)
    if sources.shape != (n_patches,) or not np.issubdtype(sources.dtype, np.integer):
        raise ValueError(f"colour_from: expected {n_patches} integer patch indices, got {sources.dtype} "
                         f"{sources.shape}")
    if sources.size and (sources.min() < 0 or sources.max() >= n_patches):
        raise ValueError(f"colour_from: patch indices must lie in 0..{n_patches - 1}")
    return sources


def tokenize_caption(
    image: npt.ArrayLike, caption_ids: npt.ArrayLike, layout: TokenLayout, image_channels: int | None = None,
    colour_from: npt.ArrayLike | None = None, colour_image: npt.ArrayLike | None = None,
) -> TokenizedSequence:
    """An image's patches then its caption's text ids (loss on the caption only); each patch twice in a row with
    `layout.caption_route_tokens` (the model reads one route at each, the shape's then the colour's), the second
    the pixels of the patch `colour_from` names (raster order; default its own: a scene's colours moved between
    its objects, `scenes.recolour_objects`), or of the same patch of `colour_image` (an image of the same size:
    the scene with its objects painted in one another's colours, `scenes.generate_scene(colour_source=)`)."""
    image_channels = image_channels or layout.image_channels
    patches, n_rows, n_cols = images_to_patches(image, image_channels, name="caption image")
    if patches.ndim != 4:
        raise ValueError(f"caption image: expected one (H, W, {image_channels}) image")
    rows, cols = patch_intervals(n_rows, n_cols)
    if colour_from is not None and colour_image is not None:
        raise ValueError("colour tokens read either other patches (colour_from) or another image (colour_image)")
    if layout.caption_route_tokens:
        if colour_image is None:
            colour_patches = patches[_patch_sources(colour_from, len(patches))]
        else:
            colour_patches, *_ = images_to_patches(colour_image, image_channels, name="colour image")
            if colour_patches.shape != patches.shape:
                raise ValueError(f"colour image: expected {patches.shape[0]} patches like the caption image's, "
                                 f"got {colour_patches.shape[0]} of shape {colour_patches.shape[1:]}")
        patches = np.stack([patches, colour_patches], axis=1).reshape(-1, *patches.shape[1:])
        rows, cols = np.repeat(rows, 2, axis=0), np.repeat(cols, 2, axis=0)
    elif colour_from is not None or colour_image is not None:
        raise ValueError("colour_from and colour_image name what colour tokens read: each needs "
                         "layout.caption_route_tokens")
    image_segment = _Segment(
        TokenKind.IMAGE, np.full(len(patches), layout.patch_id, np.int64), np.array([len(patches)], np.int64)
    )
    text = tokenize_text(caption_ids, layout)
    image_part = _from_segments(1, [image_segment], patches, rows, cols, episodic=False)
    return TokenizedSequence.concatenate([image_part, text])
