"""`generalist tokenize`: the token stream of one CartPole step, one Atari frame and one sentence, as tables."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from generalist.envs import get_task, make
from generalist.tokenizers.layout import TokenLayout
from generalist.tokenizers.stream import (
    ACTION_POSITION,
    NO_POSITION,
    ActionSpec,
    TokenizedSequence,
    TokenKind,
    tokenize_text,
    tokenize_timestep,
)
from generalist.tokenizers.text import TextTokenizer
from generalist.tokenizers.values import bins_to_continuous

HEADER = f"{'token':>5}  {'kind':<10}  {'id':>6}  {'local':>5}  {'loss':>4}  meaning"


def _local(position: int) -> str:
    return {NO_POSITION: "-", ACTION_POSITION: "act"}.get(position, str(position))


def format_table(seq: TokenizedSequence, meaning: Callable[[int], str], max_rows: int = 12) -> str:
    """A readable table of a sequence's tokens, eliding the middle past `max_rows` rows."""
    rows = [
        f"{i:>5}  {TokenKind(seq.kinds[i]).name.lower():<10}  {seq.ids[i]:>6}  "
        f"{_local(int(seq.local_positions[i])):>5}  {'yes' if seq.loss_mask[i] else '':>4}  {meaning(i)}"
        for i in _shown(len(seq), max_rows)
    ]
    if len(seq) > max_rows:
        head = max_rows // 2
        rows.insert(head, f"{'...':>5}  ({len(seq) - max_rows} more tokens)")
    return "\n".join([HEADER, *rows])


def _shown(n: int, max_rows: int) -> list[int]:
    if n <= max_rows:
        return list(range(n))
    head = max_rows // 2
    return list(range(head)) + list(range(n - (max_rows - head), n))


def _cartpole_step(layout: TokenLayout, seed: int) -> tuple[str, str]:
    env = gym.make("CartPole-v1")
    observation, _ = env.reset(seed=seed)
    env.close()
    x, x_dot, theta, theta_dot = observation
    action = int(theta + 0.5 * theta_dot + 0.01 * x + 0.1 * x_dot > 0)  # a balancing controller's choice
    seq = tokenize_timestep({"continuous": observation}, action, ActionSpec("discrete", n=2), layout)
    names = ["cart position", "cart velocity", "pole angle", "pole angular velocity"]

    def meaning(i: int) -> str:
        kind = seq.kinds[i]
        if kind == TokenKind.CONTINUOUS:
            value_bin = int(layout.ids_to_continuous_bins(seq.ids[i : i + 1])[0])
            decoded = float(bins_to_continuous(np.array([value_bin]))[0])
            position = int(seq.local_positions[i])
            return f"{names[position]} {observation[position]:+.4f} -> bin {value_bin} (decodes {decoded:+.4f})"
        if kind == TokenKind.SEPARATOR:
            return "| separator: the action follows"
        return f"action {action} (push {get_task('cartpole').action_name(action).lower()})"

    title = f"CartPole-v1, one timestep (reset seed {seed}): 4 mu-law binned values, separator, 1 action"
    return title, format_table(seq, meaning, max_rows=len(seq))


def _atari_frame(layout: TokenLayout, seed: int, max_rows: int) -> tuple[str, str]:

    env = make("pong", seed=seed)
    observation, _ = env.reset()
    raw_shape = env.unwrapped.observation_space.shape  # the emulator's frame, before the contract wrapper
    env.close()
    frame = observation["image"]
    seq = tokenize_timestep(observation, 0, get_task("pong").action_spec(), layout)
    patch_of_token = {int(t): p for p, t in enumerate(seq.patch_token_index)}

    def meaning(i: int) -> str:
        kind = seq.kinds[i]
        if kind == TokenKind.IMAGE:
            p = patch_of_token[i]
            (r_lo, r_hi), (c_lo, c_hi) = seq.patch_rows[p], seq.patch_cols[p]
            return (
                f"patch {p}: row buckets {r_lo}..{r_hi}, column buckets {c_lo}..{c_hi}, "
                f"mean pixel {seq.patches[p].mean():+.3f}"
            )
        if kind == TokenKind.SEPARATOR:
            return "| separator: the action follows"
        return f"action 0 ({get_task('pong').action_name(0)})"

    n_rows, n_cols = -(-frame.shape[0] // 16), -(-frame.shape[1] // 16)
    title = (
        f"ALE/Pong-v5, one frame (reset seed {seed}): the {raw_shape[0]}x{raw_shape[1]} screen cropped to the "
        f"playing field and averaged to {frame.shape[0]}x{frame.shape[1]}x3 by the env wrapper, "
        f"{n_rows}x{n_cols} = {len(seq.patches)} patches of 16x16, separator, 1 action"
    )
    return title, format_table(seq, meaning, max_rows)


def _sentence(layout: TokenLayout, text: str, max_rows: int) -> tuple[str, str]:
    tokenizer = TextTokenizer.default()
    ids = tokenizer.encode(text)
    seq = tokenize_text(ids, layout)

    def meaning(i: int) -> str:
        return f"piece {tokenizer.id_to_piece(int(seq.ids[i]))!r}"

    title = f"A sentence, {len(text)} characters -> {len(ids)} SentencePiece tokens: {text!r}"
    decoded = tokenizer.decode(ids)
    footer = f"decodes back exactly: {decoded == text}"
    return title, format_table(seq, meaning, max_rows) + "\n" + footer


def run_demo(seed: int = 0, text: str = "Hello, agent!", max_rows: int = 12) -> None:
    """Print the three tables of `generalist tokenize`."""
    tokenizer = TextTokenizer.default()
    layout = TokenLayout(tokenizer.vocab_size)
    print(
        f"Token layout (text vocabulary V={layout.text_vocab_size}): text 0..{layout.continuous_offset - 1}, "
        f"continuous {layout.continuous_offset}..{layout.discrete_offset - 1}, "
        f"discrete {layout.discrete_offset}..{layout.separator_id - 1}, separator {layout.separator_id}, "
        f"pad {layout.pad_id}, patch placeholder {layout.patch_id}; table size {layout.table_size}",
        flush=True,
    )
    for title, table in (
        _cartpole_step(layout, seed),
        _atari_frame(layout, seed, max_rows),
        _sentence(layout, text, max_rows),
    ):
        print(f"\n{title}\n{table}", flush=True)
