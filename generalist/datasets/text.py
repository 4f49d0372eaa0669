"""Text corpora that ship offline, the chat turn format, and the corpus the text tokenizer is trained on.

- Dialogue: the English conversations of `chatterbot-corpus` (BSD-3; about 2,000 short conversations in YAML),
  deduplicated and split by whole conversation into train and held-out (`split_conversations`).
- Jokes: `pyjokes` (BSD-3), 283 one-liners.
- Prose: Python's `pydoc_data` topics (about 65k words of reference text, in the standard library).

Chat format: each turn on its own line, `<|user|> text` or `<|assistant|> text`, alternating from the user.
The markers are user-defined symbols of the SentencePiece model, so each is one token; a turn that contains a
marker or a newline followed by one cannot be formatted (it would not parse back) and is a `ValueError`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from importlib import resources
from pydoc_data.topics import topics

import pyjokes
import yaml

from generalist.datasets.scenes import grammar_sentences

USER_MARKER = "<|user|>"
ASSISTANT_MARKER = "<|assistant|>"
CHAT_MARKERS = (USER_MARKER, ASSISTANT_MARKER)
_TURN_START = re.compile(rf"(?:^|\n)({re.escape(USER_MARKER)}|{re.escape(ASSISTANT_MARKER)}) ")

Conversation = tuple[str, ...]


def format_chat(turns: Sequence[str]) -> str:
    """Turns (user first, then alternating) to the chat text the model reads and writes."""
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    lines = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, str):
            raise ValueError(f"turn {index}: expected a str, got {type(turn).__name__}")
        if any(marker in turn for marker in CHAT_MARKERS):
            raise ValueError(f"turn {index}: contains a chat marker {CHAT_MARKERS}: {turn!r}")
        lines.append(f"{CHAT_MARKERS[index % 2]} {turn}")
    return "\n".join(lines)


def parse_chat(text: str) -> Conversation:
    """Chat text back to its turns; text that does not start with the user marker is a `ValueError`."""
    pieces = _TURN_START.split(text)
    if pieces[0] != "" or len(pieces) < 3:
        raise ValueError(f"chat text must start with {USER_MARKER!r} followed by a space")
    markers, turns = pieces[1::2], pieces[2::2]
    for index, marker in enumerate(markers):
        if marker != CHAT_MARKERS[index % 2]:
            raise ValueError(f"turn {index}: expected {CHAT_MARKERS[index % 2]!r}, got {marker!r}")
    return tuple(turns)


def chatterbot_conversations() -> list[Conversation]:
    """The English conversations of chatterbot-corpus, deduplicated, in a fixed order."""
    folder = resources.files("chatterbot_corpus").joinpath("data", "english")
    seen: dict[Conversation, None] = {}
    for entry in sorted(folder.iterdir(), key=lambda path: path.name):
        if not entry.name.endswith(".yml"):
            continue
        data = yaml.safe_load(entry.read_text(encoding="utf-8"))
        for conversation in data.get("conversations", []):
            turns = tuple(str(turn).strip() for turn in conversation if str(turn).strip())
            if turns and not any(marker in turn for turn in turns for marker in CHAT_MARKERS):
                seen.setdefault(turns, None)
    return list(seen)


def is_heldout(conversation: Conversation, heldout_fraction: float = 0.1) -> bool:
    """Whether a conversation belongs to the held-out split: decided by a hash of its text, so it is stable."""
    digest = hashlib.sha256("\n".join(conversation).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction


def split_conversations(
    conversations: Sequence[Conversation], heldout_fraction: float = 0.1
) -> tuple[list[Conversation], list[Conversation]]:
    """(train, held-out): whole conversations, disjoint, the same on every machine."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}")
    train = [c for c in conversations if not is_heldout(c, heldout_fraction)]
    heldout = [c for c in conversations if is_heldout(c, heldout_fraction)]
    return train, heldout


def heldout_conversations() -> list[Conversation]:
    """The conversations chat perplexity is measured on: the share of the corpus training never reads."""
    return split_conversations(chatterbot_conversations())[1]


def jokes() -> list[str]:
    """pyjokes' English one-liners."""
    return list(pyjokes.get_jokes(language="en", category="all"))


def python_reference_lines() -> list[str]:
    """The lines of Python's `pydoc_data` topics: about 65k words of English reference prose, in the stdlib."""
    return [line for text in topics.values() for line in text.splitlines() if line.strip()]


def tokenizer_corpus() -> list[str]:
    """The lines the shipped text tokenizer is trained on: prose, jokes, train dialogues, the caption grammar.

    Held-out conversations are left out, so that their perplexity is measured on text the tokenizer never saw.
    """
    train, _ = split_conversations(chatterbot_conversations())
    chat_lines = [line for c in train for line in format_chat(c).splitlines()]
    return [*python_reference_lines(), *jokes(), *chat_lines, *grammar_sentences()]
