"""Text corpora that ship offline, the chat turn format, and the corpus the text tokenizer is trained on.

- Dialogue: the English conversations of `chatterbot-corpus` (BSD-3; about 2,000 short conversations in YAML),
  deduplicated and split by whole conversation into train and held-out (`split_conversations`).
- Chit-chat: `chitchat-dataset` (MIT; 7,168 real two-person conversations, about 2.5M words, read from the
  installed package), normalized from texting style (`normalize_turn`), deduplicated, and split by conversation:
  a conversation is held out when the SHA-256 of its id falls in the first 5% (`chitchat_split`).
- Jokes: `pyjokes` (BSD-3), 283 one-liners.
- Prose: Python's `pydoc_data` topics (about 65k words of reference text, in the standard library).

Chat format: each turn on its own line, `<|user|> text` or `<|assistant|> text`, alternating from the user.
The markers are user-defined symbols of the SentencePiece model, so each is one token; a turn that contains a
marker or a newline followed by one cannot be formatted (it would not parse back) and is a `ValueError`.
"""

from __future__ import annotations

import functools
import hashlib
import json
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


def _hash_fraction(text: str) -> float:
    """The SHA-256 of `text` read as a fraction in [0, 1): the same on every machine, whatever the order."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def is_heldout(conversation: Conversation, heldout_fraction: float = 0.1) -> bool:
    """Whether a conversation belongs to the held-out split: decided by a hash of its text, so it is stable."""
    return _hash_fraction("\n".join(conversation)) < heldout_fraction


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


_SPACES = re.compile(r"\s+")
# Contractions typed without their apostrophe that are never another word; "ill", "id", "well", "were", "its"
# are left alone, as they are words too.
_APOSTROPHES = {
    "im": "I'm", "ive": "I've", "dont": "don't", "doesnt": "doesn't", "didnt": "didn't", "cant": "can't",
    "wont": "won't", "isnt": "isn't", "arent": "aren't", "wasnt": "wasn't", "werent": "weren't",
    "havent": "haven't", "hasnt": "hasn't", "couldnt": "couldn't", "wouldnt": "wouldn't", "shouldnt": "shouldn't",
    "thats": "that's", "whats": "what's", "youre": "you're", "theyre": "they're", "theres": "there's",
    "lets": "let's", "hes": "he's", "shes": "she's", "youve": "you've", "yall": "y'all",
}
_WORD = re.compile(r"[A-Za-z']+")


def normalize_turn(text: str) -> str:
    """One chit-chat turn from texting style to plain written English: whitespace collapsed, a lone "i" made "I",
    apostrophes put back into unambiguous contractions ("im", "dont"), a letter repeated more than twice cut to
    two ("sooooo"; punctuation such as an ellipsis is left alone), and the first letter capitalized."""
    text = _SPACES.sub(" ", text).strip()

    def word(match: re.Match[str]) -> str:
        token = match.group(0)
        lower = token.lower()
        if lower == "i":
            return "I"
        if lower.startswith("i'"):
            return "I" + token[1:]
        if lower in _APOSTROPHES:
            fixed = _APOSTROPHES[lower]
            return fixed[0].upper() + fixed[1:] if token[0].isupper() else fixed
        return token

    text = re.sub(r"([A-Za-z])\1{2,}", r"\1\1", _WORD.sub(word, text))
    return text[:1].upper() + text[1:]


@functools.lru_cache(maxsize=1)
def chitchat_conversations() -> tuple[tuple[str, Conversation], ...]:
    """(id, turns) of every chitchat-dataset conversation: each turn the messages one speaker sent in a row,
    joined and normalized; empty turns dropped, consecutive turns of one speaker merged, conversations of one
    turn (3,150 of them: nobody answered) and exact repeats dropped (4,010 remain); in the order of their ids.
    Read once per process (8 s)."""
    try:
        data_file = resources.files("chitchat_dataset").joinpath("dataset.json")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the chit-chat corpus needs the chitchat-dataset package: pip install -e . (it is a dependency)"
        ) from None
    data = json.loads(data_file.read_text(encoding="utf-8"))
    seen: dict[Conversation, str] = {}
    for key in sorted(data):
        turns: list[str] = []
        speakers: list[str] = []
        for group in data[key]["messages"]:
            text = normalize_turn(" ".join(message["text"] for message in group))
            if not text or any(marker in text for marker in CHAT_MARKERS):
                continue
            if speakers and group[0]["sender"] == speakers[-1]:
                turns[-1] = f"{turns[-1]} {text}"
            else:
                turns.append(text)
                speakers.append(group[0]["sender"])
        if len(turns) >= 2:
            seen.setdefault(tuple(turns), key)
    return tuple((key, turns) for turns, key in seen.items())


CHITCHAT_HELDOUT = 0.05
"""Share of chit-chat conversations held out, by the hash of their id."""


def chitchat_split() -> tuple[list[Conversation], list[Conversation]]:
    """(train, held-out) chit-chat conversations: held out when the SHA-256 of the conversation's id, read as a
    fraction, is below `CHITCHAT_HELDOUT`; the same on every machine."""
    train, heldout = [], []
    for key, turns in chitchat_conversations():
        (heldout if _hash_fraction(key) < CHITCHAT_HELDOUT else train).append(turns)
    return train, heldout


def words(text: str) -> list[str]:
    """The words of a text, lower-cased (letters and apostrophes): what reply checks and per-word perplexity count."""
    return [w.lower() for w in _WORD.findall(text)]


CHAT_PROMPTS = (
    "hello",
    "hi, how are you?",
    "good morning!",
    "what is your name?",
    "who made you?",
    "are you a robot?",
    "what can you do?",
    "how old are you?",
    "where are you from?",
    "what do you like to do for fun?",
    "do you have any pets?",
    "what is your favorite food?",
    "what did you do today?",
    "i am tired today",
    "what music do you like?",
    "tell me a joke",
    "what is the weather like?",
    "what is python?",
    "what is the capital of france?",
    "goodbye",
)
"""The fixed chat prompts whose replies docs/RESULTS.md shows for every shipped model: greetings, questions about
itself, small talk, a joke, and questions outside the corpora."""


TOKENIZER_CORPORA = ("shipped", "chitchat")
"""What a text tokenizer may be trained on: the shipped corpus, or it and the chit-chat train split."""


def tokenizer_lines(corpus: str = "shipped") -> list[str]:
    """The lines of a tokenizer corpus (`TOKENIZER_CORPORA`): `tokenizer_corpus()`, plus with "chitchat" the
    chit-chat train conversations in chat format (held-out ones never)."""
    if corpus not in TOKENIZER_CORPORA:
        raise ValueError(f"tokenizer corpus must be one of {TOKENIZER_CORPORA}, got {corpus!r}")
    lines = tokenizer_corpus()
    if corpus == "chitchat":
        lines += [line for c in chitchat_split()[0] for line in format_chat(c).splitlines()]
    return lines


def corpus_vocabulary() -> set[str]:
    """Every word of the project's text corpora (train splits): what a reply's words are checked against."""
    lines = [*tokenizer_corpus(), *(turn for c in chitchat_split()[0] for turn in c)]
    return {w for line in lines for w in words(line)}


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
