"""The checkpoint shipped inside the package, and `export`, which turns a run's checkpoint into one.

An exported checkpoint is what `checkpoint.save_model` writes (weights in bf16 to halve its size; they are cast back to
float32 when loaded) plus `demonstrations/<task>/`: the ends of a few recorded expert episodes of every control
task the model was trained on, in the recorded-dataset format. Evaluation prompts each episode with a
demonstration (Gato section 4.1), so with these inside the checkpoint `generalist evaluate` works on a fresh
clone that has recorded no data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from generalist.checkpoint import DEMONSTRATIONS, is_model_directory, load_model, save_model, trained_weights
from generalist.config import EvalConfig
from generalist.datasets.mixture import ControlSource
from generalist.datasets.recording import SETTINGS, open_writer, recorded_setting
from generalist.datasets.storage import EpisodeDataset
from generalist.envs import control_tasks
from generalist.envs.rollout import Episode
from generalist.model import Generalist

PRETRAINED_DIR = Path(__file__).with_name("pretrained")


def default_checkpoint() -> Path:
    """The checkpoint shipped with the package; an error saying how to get one if it is not there."""
    if not is_model_directory(PRETRAINED_DIR):
        raise FileNotFoundError(
            f"no checkpoint shipped at {PRETRAINED_DIR}: pass --checkpoint (a run directory or a checkpoint)"
        )
    return PRETRAINED_DIR


def trained_control_tasks(checkpoint: str | Path) -> list[str]:
    """The control tasks of the mixture a training checkpoint was trained on (from its trainer.json)."""
    return control_tasks(trained_weights(checkpoint))


def export_demonstrations(source: Path, target: Path, episodes: int, steps: int) -> Path:
    """Copy the last `steps` timesteps of the last `episodes` episodes of a recorded dataset to `target`."""
    dataset = EpisodeDataset(source)
    if target.exists():
        raise ValueError(f"{target} exists: export into a new directory")
    index = dataset.index
    chosen = range(max(len(dataset) - episodes, 0), len(dataset))
    settings = {key: recorded_setting(index, key) for key in SETTINGS}
    writer = open_writer(target, settings, len(chosen), index["min_return"], index["baseline"])
    for number in chosen:
        info = dataset.episodes[number]
        start = max(info.length - steps, 0)
        window = dataset.window(number, start)
        writer.add(Episode(
            seed=info.seed, episode_return=float(window["rewards"].sum()), length=info.length - start,
            terminated=info.terminated, observations=dict(window["observations"]),
            actions=window["actions"], rewards=window["rewards"],
        ))
    writer.index["complete"] = True
    writer.flush()
    return target


def _prompt_steps(task: str, source: Path, model: Generalist) -> int:
    """Timesteps of `task` that fit the evaluation's demonstration prompt (the default `EvalConfig`'s budget)."""
    per_step = ControlSource(task, EpisodeDataset(source), model.config.layout).tokens_per_step()
    return max(EvalConfig().prompt_budget(model.config.context) // per_step, 1)


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    data_dir: str | Path = "data",
    tasks: Sequence[str] | None = None,
    episodes: int = 4,
    steps: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write `checkpoint`'s model in `dtype` and demonstrations of `tasks` (default: those it trained on) to `out`.

    Each demonstration keeps its episode's last `steps` timesteps; by default as many as the evaluation's prompt
    holds (half the context), so that prompting from the export equals prompting from the recorded data.
    """
    out = Path(out)
    if episodes < 1 or (steps is not None and steps < 1):
        raise ValueError(f"--episodes and --steps must be at least 1 (an export without demonstrations cannot prompt "
                         f"an evaluation), got {episodes} and {steps}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file: export into a new directory")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: export into a new directory")
    model, tokenizer = load_model(checkpoint)
    tasks = list(tasks) if tasks is not None else trained_control_tasks(checkpoint)
    sources = [Path(data_dir) / task for task in tasks]
    for source in sources:  # every source checked before anything is written
        if not (source / "index.json").is_file():
            raise FileNotFoundError(f"no recorded episodes at {source}: record them or pass --data-dir")
    save_model(model, out, tokenizer, dtype=dtype)
    for task, source in zip(tasks, sources, strict=True):
        kept = steps if steps is not None else _prompt_steps(task, source, model)
        export_demonstrations(source, out / DEMONSTRATIONS / task, episodes, kept)
    return out
