"""The chit-chat corpus (chitchat-dataset): normalized turns, a stable split by conversation, reply checks and
per-word perplexity."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from generalist.batch import collate
from generalist.datasets.mixture import Shard, build_sources
from generalist.datasets.text import (
    CHAT_PROMPTS,
    CHITCHAT_HELDOUT,
    USER_MARKER,
    chitchat_conversations,
    chitchat_split,
    format_chat,
    normalize_turn,
    words,
)
from generalist.evaluate import ReplyChecks, chat_perplexities, reply_checks
from generalist.tokenizers import TextTokenizer, TokenLayout, tokenize_text

TEXT = TextTokenizer.default()


@pytest.mark.parametrize(("typed", "written"), [
    ("im sooooo tired   lol", "I'm soo tired lol"),
    ("well... ok!!!", "Well... ok!!!"),  # punctuation keeps its repeats
    ("i dont know whats up", "I don't know what's up"),
    ("Dont worry, i'll go", "Don't worry, I'll go"),
    ("we were well, its fine", "We were well, its fine"),  # words that are also words are left alone
    ("", ""),
])
def test_texting_style_is_normalized(typed, written):
    assert normalize_turn(typed) == written


@given(st.text(max_size=80))
def test_normalizing_twice_changes_nothing(text):
    once = normalize_turn(text)
    assert normalize_turn(once) == once
    assert "  " not in once and once == once.strip()


def test_the_corpus_is_real_two_person_conversations_split_by_id():
    conversations = chitchat_conversations()
    assert len(conversations) == 4010  # of 7,168: one-turn conversations and repeats dropped
    keys = [key for key, _ in conversations]
    assert len(set(keys)) == len(keys) and len({turns for _, turns in conversations}) == len(conversations)
    assert all(len(turns) >= 2 and all(turns) for _, turns in conversations)
    train, heldout = chitchat_split()
    assert len(train) + len(heldout) == len(conversations) and not set(train) & set(heldout)
    assert abs(len(heldout) / len(conversations) - CHITCHAT_HELDOUT) < 0.01
    assert sum(len(words(turn)) for c in train for turn in c) > 2_000_000


def test_the_chitchat_task_trains_on_its_train_split_only():
    layout = TokenLayout(TEXT.vocab_size)
    source = build_sources(["chitchat"], "unused", layout, TEXT)["chitchat"]
    heldout = {format_chat(c) for c in chitchat_split()[1]}
    assert not heldout & set(source.documents)
    sample = source.sample(np.random.default_rng(0), Shard(), 256)
    assert USER_MARKER in TEXT.decode(sample.ids.tolist()) or len(sample) == 256


def test_reply_checks():
    checks = reply_checks(["Hello there friend", "the the the cat", "xqzt"], {"hello", "there", "the", "cat"})
    assert checks.known_words == pytest.approx(6 / 8)
    assert (checks.longest_word_run, checks.longest_phrase_run) == (3, 3)
    looping = reply_checks(["Well, I'm not sure. I'm not sure. I'm not sure. I'm not"], {"a"})
    assert (looping.known_words, looping.longest_word_run, looping.longest_phrase_run) == (0.0, 1, 3)
    assert reply_checks(["a b a b a"], {"a"}) == ReplyChecks(0.6, 1, 2)
    assert reply_checks(["a b c d"], {"a"}).longest_phrase_run == 1
    assert reply_checks([""], {"a"}).longest_phrase_run == 0
    assert len(CHAT_PROMPTS) == 20


def test_per_word_perplexity_is_the_same_loss_over_the_words(tiny_model):
    conversations = chitchat_split()[1][:3]
    scores = chat_perplexities(tiny_model, TEXT, conversations)
    # Both are exp(summed loss / count): per word = per token ^ (tokens / words).
    assert math.log(scores.per_word) == pytest.approx(math.log(scores.per_token) * scores.tokens / scores.words,
                                                      rel=1e-6)
    layout = tiny_model.config.layout
    ids = [np.append(TEXT.encode(format_chat(c)), TEXT.eos_id)[: tiny_model.config.context] for c in conversations]
    with torch.no_grad():
        output = tiny_model(collate([tokenize_text(i, layout) for i in ids], layout))
    assert scores.tokens == output.n_text
    assert scores.words < scores.tokens  # a word is one token or more


@pytest.mark.slow
def test_chat_prompts_command_answers_every_prompt_and_checks_the_replies():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "generalist.cli", "chat", "--prompts", "--max-new-tokens", "8"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line[len("user> "):] for line in lines if line.startswith("user> ")] == list(CHAT_PROMPTS)
    assert sum(line.startswith("assistant> ") for line in lines) == 20
    assert lines[-1].startswith("words of the training corpora: ") and "longest run of one word: " in lines[-1]
