"""Dialogue and text corpora: splits disjoint by conversation, chat format round trips."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from generalist.datasets.text import (
    ASSISTANT_MARKER,
    USER_MARKER,
    chatterbot_conversations,
    format_chat,
    jokes,
    parse_chat,
    split_conversations,
    tokenizer_corpus,
)
from generalist.tokenizers.text import TextTokenizer


@pytest.fixture(scope="module")
def conversations():
    return chatterbot_conversations()


def test_conversations_are_real_and_unique(conversations):
    assert len(conversations) > 800
    assert len(set(conversations)) == len(conversations)
    assert all(isinstance(turn, str) and turn for c in conversations for turn in c)


def test_splits_are_disjoint_by_conversation_and_stable(conversations):
    train, heldout = split_conversations(conversations)
    assert not set(train) & set(heldout)
    assert len(train) + len(heldout) == len(conversations)
    assert 0.05 < len(heldout) / len(conversations) < 0.2
    assert split_conversations(list(reversed(conversations)))[1] == list(reversed(heldout))



def test_tokenizer_corpus_leaves_heldout_dialogues_out(conversations):
    train, heldout = split_conversations(conversations)
    corpus = tokenizer_corpus()
    chat_lines = [line for line in corpus if line.startswith((USER_MARKER, ASSISTANT_MARKER))]
    # Every turn opens one line with its marker: the corpus holds the train turns, not the held-out ones.
    assert len(chat_lines) == sum(len(c) for c in train) < sum(len(c) for c in train + heldout)


turn_text = st.text(st.characters(blacklist_characters="\n"), max_size=30).filter(
    lambda t: USER_MARKER not in t and ASSISTANT_MARKER not in t
)


@given(st.lists(turn_text, min_size=1, max_size=6))
def test_chat_format_round_trips(turns):
    assert parse_chat(format_chat(turns)) == tuple(turns)


def test_chat_format_through_the_tokenizer(conversations):
    tokenizer = TextTokenizer.default()
    for conversation in conversations[:50]:
        text = format_chat(conversation)
        assert parse_chat(tokenizer.decode(tokenizer.encode(text))) == conversation


def test_chat_format_rejects_what_would_not_parse_back():
    with pytest.raises(ValueError, match="chat marker"):
        format_chat(["hi <|assistant|> there"])
    with pytest.raises(ValueError, match="at least one turn"):
        format_chat([])
    with pytest.raises(ValueError, match="must start with"):
        parse_chat("hello")
    with pytest.raises(ValueError, match="expected '<\\|assistant\\|>'"):
        parse_chat("<|user|> a\n<|user|> b")


def test_jokes_ship_offline():
    assert len(jokes()) > 200
