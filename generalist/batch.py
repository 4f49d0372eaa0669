"""Tokenized sequences to one padded batch of tensors: what the model reads.

Sequences are right-padded to a common length with `layout.pad_id`, kind PAD, no local position and no loss.
Right padding is safe under causal attention: a real token never attends to the padding after it, and no
target lies on padding. Image patches of every sequence are flattened into one (N, C, P, P) tensor with the
(row, token) each patch sits at, so the patch network runs once over the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import copy
from dataclasses import dataclass, fields

import numpy as np
import torch

from generalist.tokenizers import NO_POSITION, NO_TIMESTEP, PATCH_SIZE, TokenizedSequence, TokenKind, TokenLayout


@dataclass
class Batch:
    """B sequences of up to T tokens, with N image patches among them (shapes below)."""

    ids: torch.Tensor  # (B, T) int64, ids of the shared table; patch placeholders at patches, pad_id at padding
    kinds: torch.Tensor  # (B, T) uint8, TokenKind
    local_positions: torch.Tensor  # (B, T) int64, >= 0, NO_POSITION or ACTION_POSITION
    loss_mask: torch.Tensor  # (B, T) bool, True on targets (text and action tokens)
    patches: torch.Tensor  # (N, C, P, P) float32 in [-0.25, 0.25]
    patch_rows: torch.Tensor  # (N, 2) int64, row bucket range [lo, hi)
    patch_cols: torch.Tensor  # (N, 2) int64, column bucket range [lo, hi)
    patch_batch_index: torch.Tensor  # (N,) int64, the row of the batch each patch sits in
    patch_token_index: torch.Tensor  # (N,) int64, the token each patch sits at
    lengths: torch.Tensor  # (B,) int64, tokens of each sequence before padding
    tasks: torch.Tensor  # (B,) int64, each row's task as an index into the mixture's tasks; -1 when none
    targets: torch.Tensor  # (B, T) int64, the ids the loss predicts: `ids` but where a sequence gave others
    patch_colour_only: torch.Tensor  # (N,) bool, patches read by the colour route alone (`drop_patch_routes`)
    patch_shape_only: torch.Tensor  # (N,) bool, patches read by the mask's shape alone (`drop_patch_routes`)
    patch_in_episode: torch.Tensor  # (N,) bool, patches of an episode's observation (else of a caption's image)
    patch_route_swap: torch.Tensor  # (N,) bool, one-route patches that read the other route of another object
    patch_colour_swap: torch.Tensor  # (N,) bool, caption patches whose colour token is another object's colour

    @property
    def shape(self) -> tuple[int, int]:
        """(B, T)."""
        return tuple(self.ids.shape)

    @property
    def n_tokens(self) -> int:
        """Tokens that are not padding."""
        return int(self.lengths.sum())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch on `device`."""
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self) -> Batch:
        """The same batch in pinned memory (DataLoader calls this when `pin_memory=True`)."""
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})


def collate(
    sequences: Sequence[TokenizedSequence],
    layout: TokenLayout,
    length: int | None = None,
    tasks: Sequence[int] | None = None,
) -> Batch:
    """Sequences to a right-padded `Batch` of length `length` (default: the longest sequence).

    `tasks` labels each row with its task's index, so training can report a loss per task.
    """
    if not sequences:
        raise ValueError("collate: no sequences")
    if tasks is not None and len(tasks) != len(sequences):
        raise ValueError(f"collate: {len(tasks)} task labels for {len(sequences)} sequences")
    lengths = np.array([len(s) for s in sequences], np.int64)
    width = int(lengths.max()) if length is None else length
    if lengths.max() > width:
        raise ValueError(f"collate: a sequence of {lengths.max()} tokens does not fit the length {width}")
    n_rows = len(sequences)
    ids = np.full((n_rows, width), layout.pad_id, np.int64)
    kinds = np.full((n_rows, width), TokenKind.PAD, np.uint8)
    local_positions = np.full((n_rows, width), NO_POSITION, np.int64)
    loss_mask = np.zeros((n_rows, width), bool)
    targets = ids.copy()
    for row, sequence in enumerate(sequences):
        n = len(sequence)
        ids[row, :n] = sequence.ids
        targets[row, :n] = sequence.target_ids()
        kinds[row, :n] = sequence.kinds
        local_positions[row, :n] = sequence.local_positions
        loss_mask[row, :n] = sequence.loss_mask
    n_patches = np.array([len(s.patches) for s in sequences], np.int64)
    if n_patches.sum():
        patches = np.concatenate([s.patches for s in sequences if len(s.patches)])
        patch_rows = np.concatenate([s.patch_rows for s in sequences if len(s.patches)])
        patch_cols = np.concatenate([s.patch_cols for s in sequences if len(s.patches)])
        patch_token_index = np.concatenate([s.patch_token_index for s in sequences if len(s.patches)])
        in_episode = np.concatenate([s.timesteps[s.patch_token_index] != NO_TIMESTEP for s in sequences
                                     if len(s.patches)])
    else:
        channels = next((s.patches.shape[1] for s in sequences if s.patches.ndim == 4), 3)
        patches = np.zeros((0, channels, PATCH_SIZE, PATCH_SIZE), np.float32)
        patch_rows = patch_cols = np.zeros((0, 2), np.int64)
        patch_token_index = np.zeros(0, np.int64)
        in_episode = np.zeros(0, bool)
    return Batch(
        ids=torch.from_numpy(ids),
        kinds=torch.from_numpy(kinds),
        local_positions=torch.from_numpy(local_positions),
        loss_mask=torch.from_numpy(loss_mask),
        patches=torch.from_numpy(np.ascontiguousarray(patches, np.float32)),
        patch_rows=torch.from_numpy(patch_rows.astype(np.int64)),
        patch_cols=torch.from_numpy(patch_cols.astype(np.int64)),
        patch_batch_index=torch.from_numpy(np.repeat(np.arange(n_rows, dtype=np.int64), n_patches)),
        patch_token_index=torch.from_numpy(patch_token_index.astype(np.int64)),
        lengths=torch.from_numpy(lengths),
        tasks=torch.full((n_rows,), -1, dtype=torch.int64) if tasks is None else torch.tensor(tasks, dtype=torch.int64),
        targets=torch.from_numpy(targets),
        patch_colour_only=torch.zeros(len(patch_token_index), dtype=torch.bool),
        patch_shape_only=torch.zeros(len(patch_token_index), dtype=torch.bool),
        patch_in_episode=torch.from_numpy(in_episode),
        patch_route_swap=torch.zeros(len(patch_token_index), dtype=torch.bool),
        patch_colour_swap=torch.zeros(len(patch_token_index), dtype=torch.bool),
    )


def action_slots(kinds: torch.Tensor) -> torch.Tensor:
    """(B, T) kinds to each action token's place among its timestep's action tokens (other tokens: meaningless)."""
    index = torch.arange(kinds.shape[1], device=kinds.device).expand_as(kinds)
    last_separator = torch.where(kinds == TokenKind.SEPARATOR, index, -1).cummax(dim=1).values
    return index - last_separator - 1


def decisive_actions(batch: Batch, discrete_ids: range, after_ran: bool = False, held: bool = False) -> torch.Tensor:
    """(B, T) bool: the discrete action tokens whose target differs from the same slot's one timestep earlier in
    the row (with `after_ran`, from the action the row reads there: the one that ran, in a driven game's row; with
    `held` as well, only where the row read that action at the two timesteps before: the expert would change what
    the agent holds, as at a Breakout stall, not what the agent had just changed itself, as when it jitters).

    Where the expert changes its action is what predicting "as before" gets wrong (Pong's expert keeps its
    action at 87% of its steps); a row's first timestep is never decisive (nothing before it to differ from).
    Only targets in `discrete_ids` (the layout's discrete values) count: a continuous expert's bin changes at
    nearly every step, so weighting its changes would only weight its task against the others.
    """
    discrete = (batch.targets >= discrete_ids.start) & (batch.targets < discrete_ids.stop)
    rows, columns = ((batch.kinds == TokenKind.ACTION) & discrete).nonzero(as_tuple=True)  # (a,) each, row-major
    decisive = torch.zeros_like(batch.loss_mask)
    if len(rows) < 2:
        return decisive
    slots = action_slots(batch.kinds)[rows, columns]
    # Sorted by (row, slot, column), consecutive entries of one (row, slot) are consecutive timesteps.
    width = batch.ids.shape[1]
    order = ((rows * (int(slots.max()) + 1) + slots) * width + columns).argsort()
    rows, slots, columns = rows[order], slots[order], columns[order]
    ids = batch.targets[rows, columns]
    before = batch.ids[rows, columns] if after_ran else ids  # an expert's row reads its labels: the same there
    same = (rows[1:] == rows[:-1]) & (slots[1:] == slots[:-1])  # entry i + 1 follows entry i in its (row, slot)
    changed = same & (ids[1:] != before[:-1])
    if held:  # and entry i read what entry i - 1 read, in the same (row, slot)
        kept = torch.zeros_like(changed)
        kept[1:] = same[:-1] & (before[1:-1] == before[:-2])
        changed &= kept
    decisive[rows[1:][changed], columns[1:][changed]] = True
    return decisive


def balanced_action_weights(batch: Batch, table: torch.Tensor, discrete_ids: range) -> torch.Tensor:
    """(B, T) loss weights: a discrete action target weighs its task's row of `table` (tasks, actions) at its
    value, every other token 1 (as do rows labelled with no task)."""
    weights = torch.ones(batch.targets.shape, dtype=torch.float32, device=batch.targets.device)
    value = batch.targets - discrete_ids.start
    chosen = (
        (batch.kinds == TokenKind.ACTION) & (value >= 0) & (value < table.shape[1]) & (batch.tasks[:, None] >= 0)
    )
    rows, columns = chosen.nonzero(as_tuple=True)
    weights[rows, columns] = table.to(weights.device)[batch.tasks[rows], value[rows, columns]]
    return weights


def rows_of_tasks(batch: Batch, chosen_tasks: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the rows whose task `chosen_tasks` (tasks,) bool marks; a row labelled with no task is none's."""
    return (batch.tasks >= 0) & chosen_tasks.to(batch.tasks.device)[batch.tasks.clamp(min=0)]


def word_weights(batch: Batch, word_ids: torch.Tensor, weighted_tasks: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, T) loss weights: `weight` on the targets among the ids `word_ids` in rows whose task `weighted_tasks`
    (tasks,) bool marks, every other token 1 (as are rows labelled with no task)."""
    device = batch.targets.device
    weights = torch.ones(batch.targets.shape, dtype=torch.float32, device=device)
    in_task = rows_of_tasks(batch, weighted_tasks)
    chosen = batch.loss_mask & in_task[:, None] & torch.isin(batch.targets, word_ids.to(device))
    weights[chosen] = weight
    return weights


def shuffle_action_inputs(batch: Batch, probability: float, generator: torch.Generator | None = None) -> Batch:
    """The batch with each action token, with `probability`, read as the same slot of a random timestep of its row.

    Only the model's inputs change: the targets stay the true actions (`batch.targets`). In
    recorded expert play consecutive actions are mostly equal (LunarLander 75% of steps, Pendulum 82%), so a
    model can predict the next action by copying the last one; acting on its own history it then repeats its
    first choice (the copycat problem of behaviour cloning). Actions swapped for others of the same episode
    keep their distribution and make the observation the only reliable evidence. The random timestep may be the
    token's own, so slightly fewer than `probability` of the actions change.
    """
    if probability <= 0:
        return batch
    ids, kinds = batch.ids, batch.kinds
    n_rows, width = ids.shape
    index = torch.arange(width, device=ids.device).expand(n_rows, width)
    is_separator = kinds == TokenKind.SEPARATOR
    slot = action_slots(kinds)
    separators = torch.where(is_separator, index, width).sort(dim=1).values  # each row's separators first
    n_separators = is_separator.sum(dim=1, keepdim=True)
    uniform = torch.rand(n_rows, width, generator=generator, device=ids.device)
    other = torch.gather(separators, 1, (uniform * n_separators).long().clamp(max=width - 1))
    source = (other + 1 + slot).clamp(max=width - 1)
    same_slot = (torch.gather(kinds, 1, source) == TokenKind.ACTION) & (torch.gather(slot, 1, source) == slot)
    chosen = torch.rand(n_rows, width, generator=generator, device=ids.device) < probability
    swap = (kinds == TokenKind.ACTION) & chosen & same_slot & (n_separators > 0)
    shuffled = copy(batch)
    shuffled.ids = torch.where(swap, torch.gather(ids, 1, source), ids)
    return shuffled


def shuffle_word_inputs(
    batch: Batch, word_ids: torch.Tensor, shuffled_tasks: torch.Tensor, probability: float,
    generator: torch.Generator | None = None,
) -> Batch:
    """The batch with each text token among `word_ids`, in rows whose task `shuffled_tasks` (tasks,) bool marks,
    read with `probability` as another of `word_ids`, drawn uniformly; the targets stay the true words.

    As `shuffle_action_inputs` for actions: a caption's colour word otherwise tells the model which shapes follow
    it in the training pairs, and a held-out pair's shape is named from it rather than read from the image. With
    every colour word before every shape in the inputs, only the image tells. The ids must be whole words (one
    piece each), so that a swap leaves no piece of another word behind.
    """
    if probability <= 0 or len(word_ids) < 2:
        return batch
    device = batch.ids.device
    words = word_ids.to(device).sort().values
    in_task = rows_of_tasks(batch, shuffled_tasks)
    is_word = torch.isin(batch.ids, words) & (batch.kinds == TokenKind.TEXT) & in_task[:, None]
    chosen = is_word & (torch.rand(batch.ids.shape, generator=generator, device=device) < probability)
    # Another word, never the same: its place among the sorted words moved on by 1..n-1, cyclically.
    place = torch.searchsorted(words, batch.ids).clamp(max=len(words) - 1)
    step = torch.randint(1, len(words), batch.ids.shape, generator=generator, device=device)
    shuffled = copy(batch)
    shuffled.ids = torch.where(chosen, words[(place + step) % len(words)], batch.ids)
    return shuffled


def drop_patch_routes(
    batch: Batch, dropped_tasks: torch.Tensor, shape_probability: float, colour_probability: float = 0.0,
    generator: torch.Generator | None = None, swap: bool = False,
) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """The batch with each row whose task `dropped_tasks` (tasks,) bool marks read by one patch route alone: with
    `shape_probability` by the colour route (`patch_colour_only`), else with `colour_probability` by the mask's
    shape (`patch_shape_only`); and those rows (B,) bool, without the shape, then without the colour.

    With `patch_input="mask+colour"` a patch's shape comes from its mask and its colour from a linear map of its
    two mean colours; the transformer, reading both, learns to name the colour of the pairs it was shown from the
    shape (a held-out blue triangle named purple, docs/RESULTS.md), or the shape from the colour word before it.
    In a row with one route the other's words can only be read from that route, and the dropped route's words
    cannot be read at all: give them no loss there. One draw per row, so no row loses both routes.

    With `swap`, the one-route patches are flagged `patch_route_swap`: the model reads the other route of a patch
    that holds an object from another such patch of the same kind (their masks say which hold one; the model picks
    the donors), so a patch's colour meets another object's shape. The dropped route's words still get no loss
    (nor the size's, which the mask decides: `batch.word_weights` in training); the kept route's words must be
    named whatever the other route says, which only dropping it does not ask.
    """
    rows = batch.ids.shape[0]
    if shape_probability < 0 or colour_probability < 0 or shape_probability + colour_probability > 1:
        raise ValueError(f"the two route dropouts are shares of rows summing to at most 1, got {shape_probability} "
                         f"and {colour_probability}")
    if shape_probability + colour_probability == 0:
        none = torch.zeros(rows, dtype=torch.bool, device=batch.ids.device)
        return batch, none, none
    chance = torch.rand(rows, generator=generator, device=batch.ids.device)
    in_tasks = rows_of_tasks(batch, dropped_tasks)
    without_shape = in_tasks & (chance < shape_probability)
    without_colour = in_tasks & ~without_shape & (chance < shape_probability + colour_probability)
    dropped = copy(batch)
    dropped.patch_colour_only = without_shape[batch.patch_batch_index]
    dropped.patch_shape_only = without_colour[batch.patch_batch_index]
    if swap:
        dropped.patch_route_swap = dropped.patch_colour_only | dropped.patch_shape_only
    return dropped, without_shape, without_colour


def swap_colour_tokens(
    batch: Batch, swapped_tasks: torch.Tensor, probability: float, generator: torch.Generator | None = None,
) -> tuple[Batch, torch.Tensor]:
    """The batch with each row whose task `swapped_tasks` (tasks,) bool marks flagged with `probability` to read
    its caption patches' colour tokens as other objects' colours (`patch_colour_swap`); and those rows (B,) bool.

    With `route_tokens` a caption patch is a shape token and a colour token. The model learns a trained pair's
    shape from its colour token as well as from its shape token, and a held-out pair's colour token then pulls
    its shape towards the trained pairs' (docs/RESULTS.md, `lang-rtok-nodrop`). In a flagged row each colour
    token of a patch that holds an object carries the colour of another such patch of the batch (the model picks
    the donors: `model.OBJECT_CONTRAST` says which hold one), so its shape token meets colours it was never drawn
    with, held-out pairs' too, and the shape word must be read from the shape token alone. The row's colour words
    no longer match the image: the caller gives them no loss.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"the colour swap is a share of rows in [0, 1], got {probability}")
    rows = batch.ids.shape[0]
    if probability == 0:  # no draw: the random stream of a run without the swap stays as it was
        return batch, torch.zeros(rows, dtype=torch.bool, device=batch.ids.device)
    chance = torch.rand(rows, generator=generator, device=batch.ids.device)
    swapped_rows = rows_of_tasks(batch, swapped_tasks) & (chance < probability)
    swapped = copy(batch)
    swapped.patch_colour_swap = swapped_rows[batch.patch_batch_index] & ~batch.patch_in_episode
    return swapped, swapped_rows
