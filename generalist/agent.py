"""Acting and writing with a trained model: a KV cache over B contexts, constrained sampling, context sliding.

Nothing here lives on the `nn.Module` (docs/STYLE.md item 8): the model's `hidden(batch, cache)` reads and writes a
`KVCache` view owned by an `Engine`, which keeps each row's token context. `Agent` plays B episodes at once on
top of it; `generate` writes text with it.

Design choices:
- Rows are ragged. Each row holds its own number of cached tokens; new tokens of a row are written at that
  row's next slots, get that row's rotary positions, and attend under a mask to that row's slots only. So B
  episodes with different prompts, or text observations of different lengths, step together in one pass and
  each gets exactly the logits it would get alone.
- A step tokenizes the B observations in one tokenizer call, then feeds every token not yet cached in one
  pass: the previous step's last action token (never fed on its own: nothing needed its logits), the new
  observation, patches included, and the separator. Then the action tokens are decoded one at a time, each
  restricted to the ids valid for its slot, greedy or sampled with a temperature. A continuous slot may instead
  act on the expectation over its bins (`continuous_decoding="mean"`): the env gets that value, and the context
  the bin nearest to it. A prompt given to `reset` is fed in the same pass as the first observation.
- The model must be in eval mode: patch positions are then the middle of their buckets and nothing drops
  out, so acting is reproducible and equal to a full forward.
- Context sliding. When a step would not fit the context, the oldest whole timesteps are dropped. A kept token
  attended to the dropped ones when it was cached, so its cached keys and values are not those of a forward
  over the kept context: the kept tokens after the prompt are re-encoded (re-prefilled) from rotary position
  `len(prompt)` on. That makes the cache exactly a full forward over the context it keeps (tested), at the
  price of one prefill per slide. To pay it rarely, a slide frees `slide_fraction` of the context at once
  (default a quarter: the model then sees between 3/4 and all of the context; 0 frees only what the step
  needs and re-prefills at every step past a full context).
- The prompt is kept by default: a demonstration conditions the task (Gato's prompt conditioning) and training puts it
  at the start of prompted windows, which is where it stays. Its cache is never recomputed: it attends to
  nothing that is dropped. `keep_prompt=False` lets its timesteps slide out like any other.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from generalist.batch import Batch, collate
from generalist.model import Generalist, padded_size
from generalist.tokenizers import (
    ACTION_POSITION,
    N_BINS,
    NO_POSITION,
    PATCH_SIZE,
    ActionSpec,
    TextTokenizer,
    TokenizedSequence,
    TokenKind,
    TokenLayout,
    decode_actions,
    stack_frames,
    tokenize_episode,
    tokenize_text,
    tokenize_timestep,
)

EOS_ID = 3
"""End-of-sequence id of every text tokenizer of the project (`train_text_tokenizer` fixes it)."""


# ---------------------------------------------------------------------------------------------- sampling


def sample_tokens(
    logits: torch.Tensor,
    allowed: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One id per row (b,) from logits (b, v), restricted to `allowed` (v,) or (b, v); greedy at temperature 0."""
    logits = logits.float().masked_fill(~allowed, float("-inf"))
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (b, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    # exp(-inf) is exactly 0: a restricted id has probability 0 and is never drawn.
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)[:, 0]


CONTINUOUS_DECODINGS = ("mode", "mean")
"""How a continuous action slot is decoded: its most likely bin (or a sample at a temperature), or the
expectation over its bins."""


def expected_bin_value(logits: torch.Tensor, first_bin_id: int) -> torch.Tensor:
    """The expectation (b,) in [-1, 1] of a continuous action over its 1024 bins' centres, from logits (b, v)."""
    probabilities = F.softmax(logits[:, first_bin_id:first_bin_id + N_BINS].float(), dim=-1)  # (b, 1024)
    centres = (torch.arange(N_BINS, device=logits.device, dtype=torch.float32) + 0.5) * (2.0 / N_BINS) - 1.0
    return probabilities @ centres


def value_to_bin(value: torch.Tensor) -> torch.Tensor:
    """Values in [-1, 1] (b,) to the bins 0..1023 holding them, as `continuous_to_bins(mu_law=False)` bins them."""
    return ((value + 1.0) * (N_BINS / 2.0)).floor().long().clamp(0, N_BINS - 1)


# -------------------------------------------------------------------------------------------- the cache


class KVCache:
    """Keys and values of every layer for B rows of up to `capacity` tokens, and how many each row holds."""

    def __init__(self, n_layer: int, n_rows: int, n_head: int, head_width: int, capacity: int,
                 device: torch.device) -> None:
        self.shape = (n_rows, n_head, capacity, head_width)
        self.capacity = capacity
        self.device = device
        self.keys: list[torch.Tensor | None] = [None] * n_layer  # (B, h, capacity, k), allocated at first write
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.lengths = torch.zeros(n_rows, dtype=torch.long, device=device)  # cached tokens per row

    def layer(self, layer: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and value buffers of `layer`, made on first use in the dtype of what is written."""
        if self.keys[layer] is None or self.keys[layer].dtype != dtype:
            self.keys[layer] = torch.zeros(self.shape, dtype=dtype, device=self.device)
            self.values[layer] = torch.zeros(self.shape, dtype=dtype, device=self.device)
        return self.keys[layer], self.values[layer]

    def write(self, rows: torch.Tensor | None, counts: torch.Tensor, t: int) -> CacheWrite:
        """A view for one forward of t tokens per row, of which the first `counts` (r,) are real."""
        return CacheWrite(self, rows, counts, t)

    def advance(self, rows: torch.Tensor | None, counts: torch.Tensor) -> None:
        """Count the tokens just written as cached."""
        if rows is None:
            self.lengths += counts
        else:
            self.lengths[rows] += counts


class CacheWrite:
    """One forward's view of a `KVCache` (the model's `AttentionCache`): positions, write slots and the mask."""

    def __init__(self, cache: KVCache, rows: torch.Tensor | None, counts: torch.Tensor, t: int) -> None:
        self.cache, self.rows = cache, rows
        start = cache.lengths if rows is None else cache.lengths[rows]  # (r,)
        offsets = torch.arange(t, device=cache.device)
        positions = start[:, None] + offsets[None, :]  # (r, t)
        if int((start + counts).max()) > cache.capacity:
            raise ValueError(f"a row would hold more than the context of {cache.capacity} tokens")
        # Padding tokens past a row's count are never written; their outputs are junk and never read.
        self.positions = positions
        self.read_row, self.read_token = (offsets[None, :] < counts[:, None]).nonzero(as_tuple=True)  # (w,)
        self.write_row = self.read_row if rows is None else rows[self.read_row]
        self.write_slot = positions[self.read_row, self.read_token]
        # Slots past every row's last token are masked out; reading up to a multiple of SHAPE_MULTIPLE of them
        # keeps the number of attention shapes small (model.py: a kernel per new shape in bf16 on a CPU).
        self.end = min(padded_size(int((start + counts).max())), cache.capacity)
        slots = torch.arange(self.end, device=cache.device)
        self.mask = (slots[None, None, :] <= positions[:, :, None]).unsqueeze(1)  # (r, 1, t, end): causal per row

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        keys, values = self.cache.layer(layer, k.dtype)
        keys[self.write_row, :, self.write_slot] = k[self.read_row, :, self.read_token]
        values[self.write_row, :, self.write_slot] = v[self.read_row, :, self.read_token]
        if self.rows is None:  # every row: views, no copy
            keys, values = keys[:, :, : self.end], values[:, :, : self.end]
        else:
            keys, values = keys[self.rows, :, : self.end], values[self.rows, :, : self.end]
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=self.mask)


# ------------------------------------------------------------------------------------------- the engine


def _loose_tokens(ids: torch.Tensor, kind: TokenKind) -> Batch:
    """One token per row (b,) as a batch, embedded as a token of `kind` (text or action) would be."""
    b = len(ids)
    local = ACTION_POSITION if kind == TokenKind.ACTION else NO_POSITION
    empty = torch.zeros((0, 2), dtype=torch.long, device=ids.device)
    return Batch(
        ids=ids[:, None],
        kinds=torch.full((b, 1), int(kind), dtype=torch.uint8, device=ids.device),
        local_positions=torch.full((b, 1), local, dtype=torch.long, device=ids.device),
        loss_mask=torch.ones((b, 1), dtype=torch.bool, device=ids.device),
        patches=torch.zeros((0, 1, 1, 1), device=ids.device),
        patch_rows=empty,
        patch_cols=empty,
        patch_batch_index=empty[:, 0],
        patch_token_index=empty[:, 0],
        lengths=torch.ones(b, dtype=torch.long, device=ids.device),
        tasks=torch.full((b,), -1, dtype=torch.long, device=ids.device),
        targets=ids[:, None],
        patch_colour_only=torch.zeros(0, dtype=torch.bool, device=ids.device),
        patch_shape_only=torch.zeros(0, dtype=torch.bool, device=ids.device),
        patch_in_episode=torch.zeros(0, dtype=torch.bool, device=ids.device),
        patch_route_swap=torch.zeros(0, dtype=torch.bool, device=ids.device),
        patch_colour_swap=torch.zeros(0, dtype=torch.bool, device=ids.device),
    )


class Engine:
    """The model, a KV cache and the token context of B rows, each a list of units (whole timesteps).

    The first `n_protected[row]` units of a row (its kept prompt) never slide out. Tokens past a row's cached
    count are fed at the next `feed`.
    """

    def __init__(self, model: Generalist, n_rows: int) -> None:
        if model.training:
            # Training mode samples patch positions and drops activations: acting would not be reproducible.
            raise ValueError("put the model in eval mode (model.eval()) before acting or generating")
        config = model.config
        self.model, self.layout, self.context_size = model, config.layout, config.context
        self.device = next(model.parameters()).device
        self.cache = KVCache(config.n_layer, n_rows, config.n_head, config.head_width, config.context, self.device)
        self.units: list[list[TokenizedSequence]] = [[] for _ in range(n_rows)]
        self.n_protected = [0] * n_rows
        self.totals = np.zeros(n_rows, np.int64)  # tokens in each row's context

    @property
    def n_rows(self) -> int:
        """B: rows of the engine."""
        return len(self.units)

    def set_context(self, row: int, units: Sequence[TokenizedSequence], n_protected: int = 0) -> None:
        """Replace a row's context (nothing cached); its first `n_protected` units never slide out."""
        self.units[row] = [unit for unit in units if len(unit)]
        for before, unit in itertools.pairwise(self.units[row]):
            self._check_whole_images(before, unit)
        self.n_protected[row] = min(n_protected, len(self.units[row]))
        self.totals[row] = sum(len(unit) for unit in self.units[row])
        self.cache.lengths[row] = 0
        if self.totals[row] > self.context_size:
            raise ValueError(f"a context of {self.totals[row]} tokens does not fit the model's {self.context_size}")

    def append(self, row: int, unit: TokenizedSequence) -> None:
        """Add a unit (a timestep) at the end of a row's context, to be fed at the next `feed`."""
        if self.units[row] and len(unit):
            self._check_whole_images(self.units[row][-1], unit)
        self.units[row].append(unit)
        self.totals[row] += len(unit)

    def _check_whole_images(self, before: TokenizedSequence, unit: TokenizedSequence) -> None:
        # The cache only ever stops between units, so an image split across two units is fed in two parts; a model
        # that centres patches per image would then centre each part on its own mean, unlike a full forward.
        if self.model.config.centre_patches and before.kinds[-1] == unit.kinds[0] == TokenKind.IMAGE:
            raise ValueError("a model that centres its patches per image must be fed whole images, not part of one")

    def extend_last(self, row: int, tokens: TokenizedSequence) -> None:
        """Add tokens to the last unit of a row (a timestep's action after its observation)."""
        self.units[row][-1] = TokenizedSequence.concatenate([self.units[row][-1], tokens])
        self.totals[row] += len(tokens)

    def context(self, row: int) -> TokenizedSequence:
        """A row's whole context, as one sequence (what a full forward would read)."""
        return TokenizedSequence.concatenate(self.units[row])

    def make_room(self, row: int, need: int, slide_fraction: float) -> bool:
        """Drop a row's oldest unprotected units unless `need` more tokens fit; return whether it slid.

        A slide frees `slide_fraction` of the context beyond `need` when it can, and re-encodes what follows the
        protected units (their cache stays: they attend to nothing that is dropped).
        """
        if self.totals[row] + need <= self.context_size:
            return False
        target = self.context_size - int(slide_fraction * self.context_size)
        units, first = self.units[row], self.n_protected[row]
        while len(units) > first and self.totals[row] + need > target:
            self.totals[row] -= len(units.pop(first))
        if self.totals[row] + need > self.context_size:
            raise ValueError(
                f"{need} new tokens do not fit a context of {self.context_size} beside the {self.totals[row]} kept "
                "(a prompt too long for the context?)"
            )
        protected = sum(len(unit) for unit in units[:first])
        self.cache.lengths[row] = min(int(self.cache.lengths[row]), protected)
        return True

    def _tail(self, row: int) -> TokenizedSequence:
        """The tokens of a row that are not cached yet."""
        n_uncached = int(self.totals[row] - self.cache.lengths[row])
        units, covered = [], 0
        for unit in reversed(self.units[row]):
            if covered >= n_uncached:
                break
            units.append(unit)
            covered += len(unit)
        return TokenizedSequence.concatenate(units[::-1]).slice(covered - n_uncached, covered)

    @torch.no_grad()
    def feed(self) -> torch.Tensor:
        """Feed every row's uncached tokens; return each row's next-token logits (B, v) after its last token.

        Rows whose tails differ much in length (a row just reset or slid beside rows that stepped) go in separate
        passes, so short rows are not padded to the longest.
        """
        tails = [self._tail(row) for row in range(self.n_rows)]
        if any(len(tail) == 0 for tail in tails):
            raise ValueError("every row needs at least one new token to feed")
        logits = torch.empty((self.n_rows, self.layout.table_size), device=self.device)
        for rows in _length_groups(np.array([len(tail) for tail in tails])):
            batch = collate([tails[row] for row in rows], self.layout).to(self.device)
            index = None if len(rows) == self.n_rows else torch.as_tensor(rows, device=self.device)
            hidden = self._forward(batch, index, batch.lengths)
            last = hidden[torch.arange(len(rows), device=self.device), batch.lengths - 1]  # (r, d)
            logits[torch.as_tensor(rows, device=self.device)] = self.model.output_logits(last).float()
        return logits

    @torch.no_grad()
    def feed_loose(self, ids: torch.Tensor, kind: TokenKind) -> torch.Tensor:
        """Feed one token per row (B,) straight to the cache; return the next logits (B, v).

        The fast path of decoding: the caller must then add these tokens to the rows' contexts (`extend_last`).
        """
        counts = torch.ones(self.n_rows, dtype=torch.long, device=self.device)
        hidden = self._forward(_loose_tokens(ids.to(self.device), kind), None, counts)
        return self.model.output_logits(hidden[:, -1]).float()

    def _forward(self, batch: Batch, rows: torch.Tensor | None, counts: torch.Tensor) -> torch.Tensor:
        view = self.cache.write(rows, counts, batch.ids.shape[1])
        hidden = self.model.hidden(batch, view)  # (r, t, d)
        self.cache.advance(rows, counts)
        return hidden


def _length_groups(lengths: np.ndarray, waste: float = 2.0) -> list[list[int]]:
    """Rows grouped longest first so that padding each group to its longest costs at most `waste` x its tokens."""
    groups: list[list[int]] = []
    for row in np.argsort(-lengths, kind="stable").tolist():
        if groups and lengths[groups[-1][0]] * (len(groups[-1]) + 1) <= waste * (
            lengths[groups[-1]].sum() + lengths[row]
        ):
            groups[-1].append(row)
        else:
            groups.append([row])
    return [sorted(group) for group in groups]  # in row order: a group of every row is the cache's own order


# -------------------------------------------------------------------------------------------- the policy


@dataclass
class ActionStep:
    """What one `Agent.step` chose, for B episodes."""

    actions: np.ndarray  # (B,) int64 for one discrete slot, else (B, size): env actions
    ids: np.ndarray  # (B, size) int64: the action tokens
    logits: torch.Tensor  # (B, size, v) float32: each slot's logits before the restriction to valid ids


def _action_tokens(ids: np.ndarray, timestep: int, channels: int) -> TokenizedSequence:
    """Action ids (size,) as the tokens a tokenized timestep would end with."""
    size = len(ids)
    return TokenizedSequence(
        ids=ids.astype(np.int64),
        kinds=np.full(size, TokenKind.ACTION, np.uint8),
        local_positions=np.full(size, ACTION_POSITION, np.int64),
        loss_mask=np.ones(size, bool),
        timesteps=np.full(size, timestep, np.int64),
        patches=np.zeros((0, channels, PATCH_SIZE, PATCH_SIZE), np.float32),
        patch_rows=np.zeros((0, 2), np.int64),
        patch_cols=np.zeros((0, 2), np.int64),
        patch_token_index=np.zeros(0, np.int64),
    )


def prompt_units(prompt: TokenizedSequence | None, keep: bool) -> tuple[list[TokenizedSequence], int]:
    """A prompt as context units and how many are protected: one protected unit, or its timesteps if not kept."""
    if prompt is None or len(prompt) == 0:
        return [], 0
    if keep:
        return [prompt], 1
    starts = prompt.timestep_starts().tolist()
    bounds = sorted({0, *starts, len(prompt)})
    return [prompt.slice(lo, hi) for lo, hi in pairwise(bounds)], 0


def _stack(values: Sequence[Any]) -> Any:
    """The same key of B observations stacked over a leading axis (strings to a list, dicts key by key)."""
    if isinstance(values[0], Mapping):
        return {key: _stack([value[key] for value in values]) for key in values[0]}
    if isinstance(values[0], str):
        return list(values)
    return np.stack([np.asarray(value) for value in values])


def tokenize_observations(
    observations: Sequence[Mapping[str, Any]],
    spec: ActionSpec,
    layout: TokenLayout,
    text_encoder: TextTokenizer | None,
    image_channels: int,
) -> list[TokenizedSequence]:
    """B observations to B `[observation] |` units: in one tokenizer call when they stack (one task's
    observations always do), one by one otherwise."""
    try:
        stacked = {key: _stack([obs[key] for obs in observations]) for key in observations[0]}
        if any(set(obs) != set(observations[0]) for obs in observations):
            raise ValueError("observations with different keys")
    except (ValueError, KeyError, TypeError):
        return [tokenize_timestep(obs, None, spec, layout, text_encoder, image_channels) for obs in observations]
    episode = tokenize_episode(stacked, None, spec, layout, text_encoder, image_channels)
    bounds = [*episode.timestep_starts().tolist(), len(episode)]
    return [episode.slice(lo, hi) for lo, hi in pairwise(bounds)]


class Agent:
    """B episodes of one task acting at once: `reset(prompts)`, then `act(observations)` every step."""

    def __init__(
        self,
        model: Generalist,
        spec: ActionSpec,
        text_tokenizer: TextTokenizer | None = None,
        temperature: float = 0.0,
        keep_prompt: bool = True,
        slide_fraction: float = 0.25,
        generator: torch.Generator | None = None,
        continuous_decoding: str = "mode",
        change_penalty: float = 1.0,
    ) -> None:
        if not 0.0 <= slide_fraction < 1.0:
            raise ValueError(f"slide_fraction must lie in [0, 1), got {slide_fraction}")
        if continuous_decoding not in CONTINUOUS_DECODINGS:
            raise ValueError(f"continuous_decoding must be one of {CONTINUOUS_DECODINGS}, got {continuous_decoding!r}")
        if not (math.isfinite(change_penalty) and change_penalty > 0.0):
            raise ValueError(f"change_penalty must be a positive number, got {change_penalty}")
        # The expectation over bins exists only for continuous slots; discrete actions decode as always.
        self.expected_value = continuous_decoding == "mean" and spec.kind == "continuous"
        self.model, self.spec, self.text_tokenizer = model, spec, text_tokenizer
        self.layout = model.config.layout
        self.temperature, self.keep_prompt, self.slide_fraction = temperature, keep_prompt, slide_fraction
        self.generator = generator
        self.log_change_penalty = math.log(change_penalty)
        self.engine: Engine | None = None
        self.n_slides = 0  # slides so far (for benchmarks and tests)
        self._steps: list[int] = []
        self._frames: list[list[np.ndarray]] = []  # each episode's last `frame_stack` RGB frames
        self._previous: torch.Tensor | None = None  # (B, size) each episode's previous action ids (-1: none yet)
        device = next(model.parameters()).device
        self._allowed = torch.as_tensor(spec.valid_id_mask(self.layout), device=device)  # (size, v)

    def reset(self, prompts: Sequence[TokenizedSequence | None], episodes: Sequence[int] | None = None) -> None:
        """Start episodes with a demonstration prompt each (None: no prompt).

        Without `episodes`, starts B = len(prompts) episodes afresh; with it, restarts only those rows (a vector
        env's finished episodes). The prompt is fed with the first observation, in the same pass.
        """
        if episodes is None:
            self.engine = Engine(self.model, len(prompts))
            self._steps = [0] * len(prompts)
            self._frames = [[] for _ in prompts]
            self._previous = torch.full((len(prompts), self.spec.size), -1, device=self._allowed.device)
            episodes = range(len(prompts))
        elif self.engine is None:
            raise ValueError("reset(prompts) all episodes before restarting some of them")
        if len(episodes) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts for {len(episodes)} episodes")
        for row, prompt in zip(episodes, prompts, strict=True):
            units, n_protected = prompt_units(prompt, self.keep_prompt)
            self.engine.set_context(row, units, n_protected)
            self._steps[row] = 0
            self._frames[row] = []
            self._previous[row] = -1

    def context(self, episode: int) -> TokenizedSequence:
        """The tokens episode `episode` conditions on now (its kept prompt and timesteps)."""
        return self._engine().context(episode)

    def act(self, observations: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """One action per episode for its new observation: (B,) int64 for one discrete slot, else (B, size)."""
        return self.step(observations).actions

    @torch.no_grad()
    def step(self, observations: Sequence[Mapping[str, Any]]) -> ActionStep:
        """Tokenize and feed the observations, then decode each action slot restricted to its valid ids."""
        engine = self._engine()
        if len(observations) != engine.n_rows:
            raise ValueError(f"{len(observations)} observations for {engine.n_rows} episodes")
        units = tokenize_observations(self._stack_frames(observations), self.spec, self.layout, self.text_tokenizer,
                                      self.model.config.image_channels)
        for row, unit in enumerate(units):
            unit = dataclasses.replace(unit, timesteps=np.full(len(unit), self._steps[row], np.int64))
            # The action's last token is added to the context but only fed with the next observation.
            self.n_slides += engine.make_room(row, len(unit) + self.spec.size, self.slide_fraction)
            engine.append(row, unit)
        logits = engine.feed()  # (B, v)
        chosen, slot_logits, values = [], [], []
        for slot in range(self.spec.size):
            slot_logits.append(logits)
            if self.expected_value:
                value = expected_bin_value(logits, self.layout.continuous_offset)  # (B,)
                values.append(value)
                ids = value_to_bin(value) + self.layout.continuous_offset
            else:
                ids = sample_tokens(self._penalize_changes(logits, slot), self._allowed[slot], self.temperature, None,
                                    self.generator)  # (B,)
            chosen.append(ids)
            if slot + 1 < self.spec.size:
                logits = engine.feed_loose(ids, TokenKind.ACTION)
        self._previous = torch.stack(chosen, dim=1)
        ids = self._previous.cpu().numpy()  # (B, size)
        for row in range(engine.n_rows):
            engine.extend_last(row, _action_tokens(ids[row], self._steps[row], self.layout.image_channels))
            self._steps[row] += 1
        actions = (torch.stack(values, dim=1).cpu().numpy() if self.expected_value
                   else decode_actions(ids, self.spec, self.layout))
        return ActionStep(actions, ids, torch.stack(slot_logits, dim=1))

    def _penalize_changes(self, logits: torch.Tensor, slot: int) -> torch.Tensor:
        """`logits` (B, v) with log(change_penalty) taken from every id but the episode's previous one in `slot`:
        training with decisive_weight W multiplied the odds of changing action by W, and a penalty of W divides
        them back (an episode's first step, which training never weighed, is left alone)."""
        if self.log_change_penalty == 0.0:
            return logits
        previous = self._previous[:, slot, None]  # (B, 1)
        ids = torch.arange(logits.shape[-1], device=logits.device)  # (v,)
        changes = (ids != previous) & (previous >= 0)  # (B, v)
        return logits - self.log_change_penalty * changes

    def _stack_frames(self, observations: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
        """Each image as the model reads it: with a frame-stacking model, the episode's last frames stacked by
        `stack_frames`, the function that stacks the recorded frames for training."""
        if not self.layout.stacks_frames:
            return observations
        k, colour = self.layout.frame_stack, self.layout.frame_colour
        stacked = []
        for row, observation in enumerate(observations):
            if "image" not in observation:
                stacked.append(observation)
                continue
            frame = np.asarray(observation["image"])
            if frame.ndim != 3 or frame.shape[-1] != 3:
                raise ValueError(f"observation['image']: this model stacks {k} {colour} frames itself from one RGB "
                                 f"frame (H, W, 3) per step; got shape {frame.shape}")
            self._frames[row] = [*self._frames[row], frame][-k:]
            history = np.stack(self._frames[row])
            image = stack_frames(history, k, colour, len(history) - 1, self.layout.frame_size)[0]
            stacked.append({**observation, "image": image})
        return stacked

    def _engine(self) -> Engine:
        if self.engine is None:
            raise ValueError("call reset(prompts) before acting")
        return self.engine


# ------------------------------------------------------------------------------------------------- text


@torch.no_grad()
def generate(
    model: Generalist,
    ids: Sequence[npt.ArrayLike | TokenizedSequence],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int = EOS_ID,
    generator: torch.Generator | None = None,
) -> list[np.ndarray]:
    """Continue each prompt with text ids only; returns the new ids of each.

    A prompt is a 1-D array of text ids, or a tokenized sequence (an image's patches, for a caption). A row
    stops at end-of-sequence (not included in its output), after `max_new_tokens`, or when its context is full.
    Greedy at temperature 0; else sampled, from the `top_k` most likely ids if given.
    """
    layout = model.config.layout
    engine = Engine(model, len(ids))
    for row, prompt in enumerate(ids):
        if isinstance(prompt, TokenizedSequence):
            sequence = prompt
        else:
            sequence = tokenize_text(np.asarray(prompt, dtype=np.int64), layout)
        if len(sequence) == 0:
            raise ValueError("generate: every prompt needs at least one id (a bos id, say)")
        engine.set_context(row, [sequence])
    allowed = torch.as_tensor(layout.is_text(np.arange(layout.table_size)), device=engine.device)  # (v,)
    outputs: list[list[int]] = [[] for _ in ids]
    room = engine.context_size - engine.totals  # tokens each row may still feed
    done = np.zeros(len(ids), bool)
    logits = engine.feed()
    for _ in range(max_new_tokens):
        tokens = sample_tokens(logits, allowed, temperature, top_k, generator)
        for row, token in enumerate(tokens.tolist()):
            if not done[row]:
                if token == eos_id:
                    done[row] = True
                else:
                    outputs[row].append(token)
                    done[row] = len(outputs[row]) >= room[row]
        if done.all():
            break
        # Finished rows feed nothing (count 0); the others feed their new token.
        counts = torch.as_tensor(~done, dtype=torch.long, device=engine.device)
        view = engine.cache.write(None, counts, 1)
        hidden = model.hidden(_loose_tokens(tokens, TokenKind.TEXT), view)
        engine.cache.advance(None, counts)
        logits = model.output_logits(hidden[:, -1]).float()
    return [np.array(row, np.int64) for row in outputs]


__all__ = [
    "EOS_ID",
    "ActionStep",
    "Agent",
    "Engine",
    "KVCache",
    "generate",
    "prompt_units",
    "sample_tokens",
]
