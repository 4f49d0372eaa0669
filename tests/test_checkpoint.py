"""Checkpoints: save then load gives the same logits; bad checkpoints give errors that name the file."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from generalist.batch import collate
from generalist.checkpoint import (
    CONFIG_FILE,
    TEXT_TOKENIZER_FILE,
    WEIGHTS_FILE,
    load_text_tokenizer,
    load_weights,
    save_checkpoint,
    save_model,
    trained_scene_size,
)
from generalist.config import TrainConfig
from generalist.model import Generalist, tiny
from generalist.tokenizers import ActionSpec, TextTokenizer, tokenize_caption, tokenize_episode, tokenize_text

TEXT = TextTokenizer.default()
CONFIG = tiny(n_layer=2, d_model=64, n_head=4, d_ff=128, context=128)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py says why


def _batch(layout):
    rng = np.random.default_rng(0)
    episode = tokenize_episode(
        {"image": rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), "continuous": rng.normal(size=(2, 5))},
        np.array([2, 1]), ActionSpec("discrete", n=3), layout,
    )
    caption = tokenize_caption(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), TEXT.encode("a caption"), layout)
    return collate([episode, tokenize_text(TEXT.encode("hello checkpoint"), layout), caption], layout)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = Generalist(CONFIG).eval()
    save_model(model, tmp_path / "checkpoint", TEXT)
    return model, tmp_path / "checkpoint"


@pytest.mark.parametrize("overrides", [{"tie_embeddings": True}, {"tie_embeddings": False},
                                       {"caption_patch_input": "mask+colour", "caption_mask_background": "nearest"}])
def test_save_then_load_gives_identical_logits(tmp_path, overrides):
    torch.manual_seed(0)
    model = Generalist(dataclasses.replace(CONFIG, **overrides)).eval()
    directory = save_model(model, tmp_path / "checkpoint", TEXT)
    assert sorted(p.name for p in directory.iterdir()) == sorted([CONFIG_FILE, TEXT_TOKENIZER_FILE, WEIGHTS_FILE])
    loaded = load_weights(directory)
    assert loaded.config == model.config and not loaded.training
    batch = _batch(CONFIG.layout)
    with torch.no_grad():
        assert torch.equal(model.logits(batch), loaded.logits(batch))
    assert load_text_tokenizer(directory).encode("same ids").tolist() == TEXT.encode("same ids").tolist()


def test_weights_are_safetensors_not_pickle(saved):
    _, directory = saved
    raw = (directory / WEIGHTS_FILE).read_bytes()
    header_size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_size])
    assert "blocks.0.attention.qkv.weight" in header and raw[:2] != b"\x80\x04"  # no pickle protocol marker


@pytest.mark.parametrize("name", [CONFIG_FILE, WEIGHTS_FILE, TEXT_TOKENIZER_FILE])
def test_a_missing_file_is_named(saved, name):
    _, directory = saved
    (directory / name).unlink()
    with pytest.raises(FileNotFoundError, match=name):
        load_weights(directory)


def test_a_truncated_weights_file_is_named(saved):
    _, directory = saved
    path = directory / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=WEIGHTS_FILE):
        load_weights(directory)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=WEIGHTS_FILE):
        load_weights(directory)


def test_weights_that_do_not_fit_the_config_are_named(saved):
    _, directory = saved
    config_path = directory / CONFIG_FILE
    values = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**values, "d_ff": 96}))
    with pytest.raises(ValueError, match=rf"{WEIGHTS_FILE}.*feed_forward.*shape"):
        load_weights(directory)
    config_path.write_text(json.dumps({**values, "n_layer": 3}))
    with pytest.raises(ValueError, match=rf"{WEIGHTS_FILE}.*missing.*blocks\.2"):
        load_weights(directory)


def test_bad_configs_are_named(saved):
    _, directory = saved
    config_path = directory / CONFIG_FILE
    values = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**values, "n_layers": 2}))
    with pytest.raises(ValueError, match=rf"{CONFIG_FILE}.*unknown model config keys.*n_layers"):
        load_weights(directory)
    config_path.write_text('{"n_layer": 2,')
    with pytest.raises(ValueError, match=CONFIG_FILE):
        load_weights(directory)
    config_path.write_text(json.dumps({**values, "text_vocab_size": 1000}))
    with pytest.raises(ValueError, match=TEXT_TOKENIZER_FILE):
        load_weights(directory)


def test_a_tokenizer_of_another_vocabulary_is_refused_on_save(tmp_path):
    model = Generalist(dataclasses.replace(CONFIG, text_vocab_size=1000))
    with pytest.raises(ValueError, match=str(TEXT.vocab_size)):
        save_model(model, tmp_path, TEXT)


def test_a_checkpoint_names_the_scene_size_it_was_trained_on(saved, tmp_path):
    model, plain = saved
    assert trained_scene_size(plain) == 64  # no trainer state (the shipped checkpoint): the default size
    optimizer = torch.optim.AdamW(model.parameters())
    config = TrainConfig(run_dir=Path(tmp_path) / "run", weights={"varied_scenes": 1.0}, scene_size=48)
    checkpoint = save_checkpoint(config.run_dir, model, optimizer, TEXT, config, step=1, tokens=10)
    assert trained_scene_size(checkpoint) == 48
