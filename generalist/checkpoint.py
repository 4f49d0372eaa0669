"""The one module that knows the on-disk layout of checkpoints and run directories.

A checkpoint is a directory holding the model (`model.safetensors`, `config.json`: the model is rebuilt from
it alone, nanoGPT's `GPTConfig(**model_args)`), its text tokenizer (`text.model`), and, when training wrote
it, the optimizer's moments (`optimizer.safetensors`) and `trainer.json` (step, tokens seen, minutes trained,
the resolved training config); an exported one (pretrained.py) carries `demonstrations/<task>/` instead, the
recorded episodes its evaluation is prompted with. A run directory keeps its checkpoints in
`checkpoints/step-NNNNNNN/` with `checkpoints/latest` naming the newest. Everything else asks this module:
`resolve` turns a run directory or a checkpoint directory into the checkpoint to load, `load_model` loads one.

Design choices:
- Every file is written beside its final name and renamed into place, and a checkpoint directory is written
  as `.step-NNNNNNN.partial` and renamed: a crash never leaves a half-written file or checkpoint under a final
  name. Weights and optimizer state are safetensors, never pickle.
- Loading checks every file before the model is built: a missing, truncated or mismatched file is an error
  naming that file, and no partly loaded model is ever returned.
- Interim checkpoints (not milestones) only guard against a crash: the next checkpoint replaces them, and
  they never push a milestone (a learning-curve point) out of the ones kept.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from generalist.atomic import write_atomically
from generalist.config import TrainConfig
from generalist.flags import from_json_dict, to_json_dict
from generalist.model import Generalist, ModelConfig
from generalist.tokenizers import TextTokenizer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TEXT_TOKENIZER_FILE = "text.model"
OPTIMIZER_STATE = "optimizer.safetensors"
TRAINER_STATE = "trainer.json"
DEMONSTRATIONS = "demonstrations"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
STEP_PREFIX = "step-"


# ------------------------------------------------------------------------------------------- the model


def save_model(
    model: Generalist, directory: str | Path, text_tokenizer: TextTokenizer, dtype: torch.dtype | None = None
) -> Path:
    """Write model.safetensors, config.json and the SentencePiece model (text.model) to `directory`.

    With `dtype` (bf16 to ship a checkpoint at half the size) the weights are stored in it; `load_weights`
    casts them back to the model's float32.
    """
    if text_tokenizer.vocab_size != model.config.text_vocab_size:
        raise ValueError(
            f"the text tokenizer has {text_tokenizer.vocab_size} ids; the model was built for "
            f"{model.config.text_vocab_size}"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: tensor.detach().to("cpu", dtype if dtype is not None and tensor.is_floating_point() else None)
        .contiguous()
        for name, tensor in model.state_dict().items()
    }
    write_atomically(directory / WEIGHTS_FILE,
                     lambda path: safetensors.torch.save_file(tensors, path, metadata={"format": "pt"}))
    write_atomically(directory / CONFIG_FILE,
                     lambda path: path.write_text(json.dumps(model.config.to_dict(), indent=2) + "\n"))
    text_tokenizer.save(directory / TEXT_TOKENIZER_FILE)  # itself whole or not at all
    return directory


def load_weights(directory: str | Path, device: torch.device | str = "cpu") -> Generalist:
    """Rebuild a model, in eval mode, from `save_model`'s files in a checkpoint directory."""
    directory = Path(directory)
    paths = [directory / name for name in (CONFIG_FILE, WEIGHTS_FILE, TEXT_TOKENIZER_FILE)]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing checkpoint file")
    config = _read_config(paths[0])
    tensors = _read_weights(paths[1])
    text_tokenizer = TextTokenizer.load(paths[2])
    if text_tokenizer.vocab_size != config.text_vocab_size:
        raise ValueError(f"{paths[2]}: {text_tokenizer.vocab_size} text ids, but {paths[0]} says "
                         f"text_vocab_size={config.text_vocab_size}")
    with torch.device("meta"):  # shapes only: nothing is allocated until the weights are known to fit
        expected = Generalist(config).state_dict()
    missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{paths[1]}: does not fit {paths[0]}: missing {missing}, unexpected {unexpected}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape or not tensor.is_floating_point():
            raise ValueError(f"{paths[1]}: {name} is {tensor.dtype} {tuple(tensor.shape)}, but {paths[0]} "
                             f"needs a float tensor of shape {tuple(expected[name].shape)}")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{paths[1]}: {name} holds NaN or infinite values")
    model = Generalist(config)
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval()


def load_text_tokenizer(directory: str | Path) -> TextTokenizer:
    """The SentencePiece model saved beside a checkpoint's weights."""
    return TextTokenizer.load(Path(directory) / TEXT_TOKENIZER_FILE)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[Generalist, TextTokenizer]:
    """A checkpoint's (or a run directory's newest checkpoint's) model in eval mode, and its text tokenizer."""
    checkpoint = resolve(path)
    return load_weights(checkpoint, device), load_text_tokenizer(checkpoint)


def demonstrations_dir(path: str | Path) -> Path | None:
    """The recorded demonstrations an exported checkpoint carries (`demonstrations/<task>/`), or None."""
    directory = resolve(path) / DEMONSTRATIONS
    return directory if directory.is_dir() else None


def is_model_directory(path: str | Path) -> bool:
    """Whether `path` holds a model's config (a checkpoint or an exported model)."""
    return (Path(path) / CONFIG_FILE).is_file()


def read_model_config(path: str | Path) -> ModelConfig:
    """The model config of a checkpoint or exported model (a run directory: its newest checkpoint), weights unread."""
    return _read_config(resolve(path) / CONFIG_FILE)


def _read_config(path: Path) -> ModelConfig:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON model config ({error})") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object of model config fields")
    try:
        return ModelConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(path)
    except (safetensors.SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise ValueError(f"{path}: unreadable or truncated safetensors file ({error})") from error


# ---------------------------------------------------------------------------------- run directories


def is_run_directory(path: str | Path) -> bool:
    """Whether `path` is a training run's directory (it has a `latest` checkpoint pointer)."""
    return (Path(path) / CHECKPOINTS / LATEST).is_file()


def resolve(path: str | Path) -> Path:
    """The checkpoint directory `path` names: itself, or a run directory's newest checkpoint."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return latest_checkpoint(path) if is_run_directory(path) else path


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest complete checkpoint of a run; an error naming what is missing otherwise.

    A damaged newest checkpoint (a file missing or unreadable: a disk that failed under it) gives way to the
    newest whole one kept before it, with a warning naming both.
    """
    run_dir = Path(run_dir)
    pointer = run_dir / CHECKPOINTS / LATEST
    if not pointer.is_file():
        raise FileNotFoundError(f"{pointer}: no checkpoint to resume from in {run_dir}")
    checkpoint = run_dir / CHECKPOINTS / pointer.read_text().strip()
    problem = _damage(checkpoint)
    if problem is None:
        return checkpoint
    for earlier in reversed(list_checkpoints(run_dir)):
        if earlier != checkpoint and _damage(earlier) is None:
            warnings.warn(f"{checkpoint} is damaged ({problem}); using {earlier.name}, the newest whole checkpoint",
                          stacklevel=2)
            return earlier
    raise FileNotFoundError(f"{checkpoint}: the latest checkpoint is damaged ({problem}) and no earlier one is whole")


def _damage(checkpoint: Path) -> str | None:
    """What is wrong with a training checkpoint's files, or None (headers and trainer state only: fast)."""
    for name in (CONFIG_FILE, WEIGHTS_FILE, TEXT_TOKENIZER_FILE, OPTIMIZER_STATE, TRAINER_STATE):
        if not (checkpoint / name).is_file():
            return f"{name} missing"
    try:
        read_trainer_state(checkpoint)
        for name in (WEIGHTS_FILE, OPTIMIZER_STATE):
            with safetensors.safe_open(checkpoint / name, "pt"):
                pass
    except (ValueError, OSError, safetensors.SafetensorError) as error:
        return str(error)
    return None


def find_latest(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of a run, or None when it has none yet."""
    try:
        return latest_checkpoint(run_dir)
    except FileNotFoundError:
        return None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run's kept checkpoints, oldest first."""
    return sorted((Path(run_dir) / CHECKPOINTS).glob(f"{STEP_PREFIX}*"))


def checkpoint_step(checkpoint: Path) -> int:
    """The step a checkpoint directory was written at, from its name."""
    return int(checkpoint.name.removeprefix(STEP_PREFIX))


def legacy_train_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """A saved training config in today's fields: `bf16` (before `precision`) becomes precision fp32 or bf16."""
    values = dict(values)
    if "bf16" in values:
        values["precision"] = "bf16" if values.pop("bf16") else "fp32"
    values.pop("eval_episodes", None)  # the evaluation's settings moved to EvalConfig
    return values


def read_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    """Step, tokens, training minutes and training config of a checkpoint."""
    path = Path(checkpoint) / TRAINER_STATE
    try:
        state = json.loads(path.read_text())
        state["train_config"] = from_json_dict(TrainConfig, legacy_train_config(state["train_config"]), str(path))
        state.setdefault("minutes", 0.0)  # checkpoints from before the field was kept
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a trainer state ({error})") from error
    return state


def trained_weights(checkpoint: str | Path) -> Mapping[str, float]:
    """The task mixture a training checkpoint was trained on (from its trainer.json)."""
    checkpoint = resolve(checkpoint)
    if not (checkpoint / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{checkpoint / TRAINER_STATE}: not a training checkpoint; name the tasks")
    return read_trainer_state(checkpoint)["train_config"].weights


def trained_scene_size(checkpoint: str | Path) -> int:
    """The caption-scene size a checkpoint was trained on (what `generalist caption` resizes to); the default
    size for a checkpoint without a trainer state (the shipped one)."""
    checkpoint = resolve(checkpoint)
    if not (checkpoint / TRAINER_STATE).is_file():
        return TrainConfig().scene_size
    return read_trainer_state(checkpoint)["train_config"].scene_size


def save_checkpoint(
    run_dir: Path, model: Generalist, optimizer: torch.optim.Optimizer, tokenizer: TextTokenizer,
    config: TrainConfig, step: int, tokens: int, minutes: float = 0.0, milestone: bool = True,
) -> Path:
    """Write checkpoint `step` atomically and point `latest` at it; drop checkpoints past `keep_checkpoints`."""
    folder = run_dir / CHECKPOINTS
    final = folder / f"{STEP_PREFIX}{step:07d}"
    partial = folder / f".{STEP_PREFIX}{step:07d}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    save_model(model, partial, tokenizer)
    safetensors.torch.save_file(_optimizer_tensors(optimizer), partial / OPTIMIZER_STATE)
    state = {
        "step": step, "tokens": tokens, "minutes": minutes, "milestone": milestone,
        "train_config": to_json_dict(config),
    }
    (partial / TRAINER_STATE).write_text(json.dumps(state, indent=2) + "\n")
    # On disk before `latest` names it, as datasets are: a power loss leaves the previous checkpoint, not a hole.
    for path in partial.iterdir():
        _fsync(path)
    _fsync(partial)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    _fsync(folder)
    pointer = folder / f".{LATEST}.partial"
    pointer.write_text(final.name + "\n")
    _fsync(pointer)
    os.replace(pointer, folder / LATEST)
    _fsync(folder)
    milestones = [c for c in list_checkpoints(run_dir) if c != final and _is_milestone(c)]
    kept = set(milestones[max(len(milestones) - config.keep_checkpoints + milestone, 0) :]) | {final}
    for old in list_checkpoints(run_dir):
        if old not in kept:
            shutil.rmtree(old)
    return final


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's entries to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _is_milestone(checkpoint: Path) -> bool:
    try:
        return bool(json.loads((checkpoint / TRAINER_STATE).read_text()).get("milestone", True))
    except (OSError, json.JSONDecodeError):
        return True  # unreadable: not this function's to delete


def load_optimizer(optimizer: torch.optim.Optimizer, checkpoint: Path) -> None:
    """Restore AdamW's moments saved with a checkpoint into `optimizer`."""
    path = checkpoint / OPTIMIZER_STATE
    tensors = _read_weights(path)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    full = optimizer.state_dict()
    full["state"] = state
    try:
        optimizer.load_state_dict(full)
    except (ValueError, KeyError) as error:
        raise ValueError(f"{path}: does not fit the model's parameters ({error})") from error


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW's per-parameter moments and step counts as flat named tensors."""
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors
