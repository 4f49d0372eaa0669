"""The SentencePiece text tokenizer: exact round trips on any Unicode string, training, loading."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from generalist.tokenizers.text import TextTokenizer, TextTokenizerConfig, train_text_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.default()


@pytest.mark.parametrize(
    "text",
    [
        "The agent balances the pole.",
        "  leading, inner   and trailing spaces  ",
        "中文字符和日本語のテキスト",
        "emoji 👋🏽 and a flag 🇫🇷",
        "controls \x00\x01\x1b\x7f\t\r\n",
        "the meta space \u2581 itself, twice \u2581\u2581",
        "",
    ],
)
def test_round_trip_is_exact(tokenizer, text):
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int64
    assert np.all((ids >= 0) & (ids < tokenizer.vocab_size))
    assert tokenizer.decode(ids) == text


@given(st.text(max_size=60))
def test_round_trip_on_any_unicode(text):
    tokenizer = TextTokenizer.default()
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_batch_encoding_matches_single(tokenizer):
    texts = ["one", "two words", "a\u2581b", ""]
    for single, batched in zip(map(tokenizer.encode, texts), tokenizer.encode_batch(texts), strict=True):
        np.testing.assert_array_equal(single, batched)


def test_chat_markers_are_single_tokens(tokenizer):
    ids = tokenizer.encode("<|user|> hi\n<|assistant|> hello")
    assert tokenizer.id_to_piece(int(ids[0])) == "<|user|>"
    assert "<|assistant|>" in [tokenizer.id_to_piece(int(i)) for i in ids]


def test_special_ids_sit_inside_the_vocabulary(tokenizer):
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 2, 3)
    assert tokenizer.vocab_size == 3072


def test_train_save_load(tmp_path):
    lines = [f"the quick brown fox number {i} jumps over the lazy dog" for i in range(200)]
    path = tmp_path / "tiny.model"
    trained = train_text_tokenizer(lines, TextTokenizerConfig(vocab_size=298), out=path)
    loaded = TextTokenizer.load(path)
    assert loaded.vocab_size == trained.vocab_size == 298
    np.testing.assert_array_equal(loaded.encode("the lazy fox 42"), trained.encode("the lazy fox 42"))
    assert loaded.decode(loaded.encode("ünïcødé ☃")) == "ünïcødé ☃"


def test_bad_inputs(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="empty corpus"):
        train_text_tokenizer(["", "  "])
    with pytest.raises(ValueError, match="Vocabulary size too high"):
        train_text_tokenizer(["tiny corpus"], TextTokenizerConfig(vocab_size=5000))
    with pytest.raises(FileNotFoundError, match="missing.model"):
        TextTokenizer.load(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.model"):
        TextTokenizer.load(tmp_path / "junk.model")
    with pytest.raises(ValueError, match="expected a str"):
        tokenizer.encode(b"bytes")
    with pytest.raises(ValueError, match="0..3071"):
        tokenizer.decode(np.array([5000]))


def test_text_that_is_not_utf8_is_a_value_error():
    tokenizer = TextTokenizer.default()
    bad = b"hi \xff".decode("utf-8", errors="surrogateescape")  # what Python makes of such bytes in argv
    with pytest.raises(ValueError, match="not valid UTF-8 at character 3"):
        tokenizer.encode(bad)
    with pytest.raises(ValueError, match="not valid UTF-8"):
        tokenizer.encode_batch(["fine", bad])
