"""Exported checkpoints: bf16 weights, shipped demonstrations, and evaluation without recorded data."""

import subprocess
import sys

import numpy as np
import pytest
import safetensors
import torch

from generalist import pretrained
from generalist.checkpoint import load_weights, save_model
from generalist.datasets.recording import CollectConfig, collect
from generalist.datasets.storage import EpisodeDataset
from generalist.model import Generalist, preset
from generalist.pretrained import DEMONSTRATIONS, export_checkpoint
from generalist.tokenizers import TextTokenizer


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = Generalist(preset("tiny", text_vocab_size=TextTokenizer.default().vocab_size, context=256)).eval()
    checkpoint = save_model(model, root / "ckpt", TextTokenizer.default())
    collect(CollectConfig(tasks=("cartpole",), episodes=3, out=root / "data", max_episode_steps=40, progress=False))
    out = export_checkpoint(checkpoint, root / "out", root / "data", ["cartpole"], episodes=2, steps=10)
    return model, root, out


def test_export_halves_the_weights_and_keeps_them_within_bf16_rounding(exported):
    model, root, out = exported
    with safetensors.safe_open(out / "model.safetensors", "pt") as file:
        assert {file.get_tensor(name).dtype for name in file.keys()} == {torch.bfloat16}
    full, half = (root / "ckpt" / "model.safetensors").stat().st_size, (out / "model.safetensors").stat().st_size
    assert half < 0.51 * full
    loaded = load_weights(out)
    for (name, before), after in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert after.dtype == torch.float32, name
        assert torch.allclose(before, after, rtol=2**-8, atol=1e-30), name


def test_demonstrations_are_the_last_steps_of_the_last_episodes(exported):
    _, root, out = exported
    source, shipped = EpisodeDataset(root / "data" / "cartpole"), EpisodeDataset(out / DEMONSTRATIONS / "cartpole")
    assert len(shipped) == 2 and shipped.action_spec == source.action_spec
    for kept, original in zip(range(2), (1, 2), strict=True):
        length = source.episode_length(original)
        want, got = source.window(original, length - 10), shipped.window(kept)
        assert np.array_equal(want["actions"], got["actions"])
        assert np.array_equal(want["observations"]["continuous"], got["observations"]["continuous"])


def test_export_refuses_a_used_directory_and_missing_data(exported, tmp_path):
    _, root, out = exported
    with pytest.raises(ValueError, match="not empty"):
        export_checkpoint(root / "ckpt", out, root / "data", ["cartpole"])
    with pytest.raises(FileNotFoundError, match="no recorded episodes at"):
        export_checkpoint(root / "ckpt", tmp_path / "new", root / "data", ["pendulum"])
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_evaluate_prompts_with_the_shipped_demonstrations_when_there_is_no_data(exported, tmp_path):
    _, _, out = exported
    command = [sys.executable, "-m", "generalist.cli", "evaluate", "--checkpoint", str(out), "--tasks", "cartpole",
               "--episodes", "1", "--num-envs", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| cartpole | demo | 1 |" in result.stdout and "Error" not in result.stdout


def test_no_shipped_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="pass --checkpoint"):
        pretrained.default_checkpoint()


@pytest.mark.slow
def test_export_command(exported, tmp_path):
    _, root, _ = exported
    out = tmp_path / "shipped"
    command = [sys.executable, "-m", "generalist.cli", "export", "--checkpoint", str(root / "ckpt"), "--out",
               str(out), "--data-dir", str(root / "data"), "--tasks", "cartpole", "--episodes", "1", "--steps", "5"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out} (") and "MiB)" in result.stdout
    assert EpisodeDataset(out / DEMONSTRATIONS / "cartpole").episode_length(0) == 5
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "is not empty" in again.stderr


def test_demonstrations_keep_what_an_evaluation_prompt_holds_by_default(exported, tmp_path):
    model, root, _ = exported
    out = export_checkpoint(root / "ckpt", tmp_path / "out", root / "data", ["cartpole"], episodes=1)
    per_step = 4 + 1 + 1  # four observation values, the separator, the action
    fits = model.config.context // 2 // per_step
    assert EpisodeDataset(out / DEMONSTRATIONS / "cartpole").episode_length(0) == fits == 21
