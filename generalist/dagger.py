"""Learner-driven recordings (DAgger, Ross, Gordon and Bagnell 2011): a trained agent drives, the expert labels.

Behaviour cloning learns from the expert's states only; acting, the agent's small mistakes lead it to states the
expert never visits, where its errors compound. Our experts are programs that can label any state, so a
recording can be driven by the trained agent (`generalist collect --policy CHECKPOINT`) while every step stores
the expert's action as its label, the executed action beside it. Training then reads these recordings beside
the expert's (`TrainConfig.learner_data_dir`, `learner_share`).

Design choices:
- The agent acts as in evaluation (`evaluate.agent_actor`): prompted by a demonstration from the expert
  recordings (`CollectConfig.prompt_data`), greedy, in fp32, on CUDA when available.
- `beta` mixes per step: with that probability the expert's action is executed instead (DAgger's mixture
  policy), drawn from a generator seeded by the episode's seed.
- The dataset's index records the driver (the resolved checkpoint and its training step) and beta among its
  settings: a rerun with the same command resumes it, a recording with another checkpoint (a next round) goes
  into a directory of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from generalist.checkpoint import TRAINER_STATE, demonstrations_dir, load_model, read_trainer_state, resolve
from generalist.config import CollectConfig, EvalConfig
from generalist.datasets.recording import Driver
from generalist.datasets.storage import EpisodeDataset
from generalist.evaluate import agent_actor, prompt_dir
from generalist.precision import resolve_device


def driven_games(dataset: EpisodeDataset) -> dict[str, Any]:
    """What the agent did in a learner-driven recording: its games' count, mean length and return and, for
    discrete actions, the share of steps whose action that ran was the expert's label (`agreement`) and each
    action id's share among the actions that ran (`ran`, the expert's own where beta chose it) and among the
    labels (`asked`)."""
    infos = list(dataset)
    summary: dict[str, Any] = {
        "episodes": len(infos),
        "mean_length": float(np.mean([info.length for info in infos])) if infos else 0.0,
        "mean_return": float(np.mean([info.episode_return for info in infos])) if infos else 0.0,
    }
    spec = dataset.action_spec
    if spec.kind != "discrete" or not infos:
        return summary
    ran = np.concatenate([dataset.executed_actions(e).reshape(-1) for e in range(len(infos))])
    asked = np.concatenate([dataset.actions(e).reshape(-1) for e in range(len(infos))])

    def shares(ids: np.ndarray) -> dict[int, float]:
        return {int(a): float(share) for a, share in enumerate(np.bincount(ids, minlength=spec.n) / len(ids))}

    return summary | {"agreement": float((ran == asked).mean()), "ran": shares(ran), "asked": shares(asked)}


def learner_driver(checkpoint: str | Path, task: str, config: CollectConfig) -> Driver:
    """The agent of `checkpoint` as the driver of `task`'s recording; a clear error if it cannot act there."""
    path = resolve(checkpoint)
    trained = (path / TRAINER_STATE).is_file()
    state = read_trainer_state(path) if trained else None
    if state is not None and state["train_config"].weights.get(task, 0) <= 0:
        raise ValueError(f"{path} was not trained on {task!r} (its mixture: "
                         f"{', '.join(state['train_config'].weights)}): it cannot drive a recording of it")
    eval_config = EvalConfig(data_dir=config.prompt_data, seed=config.first_seed)
    demonstrations = demonstrations_dir(path)
    prompts = prompt_dir(eval_config, task, demonstrations)
    if not (prompts / task).is_dir():
        raise FileNotFoundError(f"no expert recordings of {task!r} at {prompts / task} to prompt the agent: record "
                                f"them with `generalist collect --tasks {task}` or pass --prompt-data")
    model, _ = load_model(path, resolve_device(eval_config.device))
    actor = agent_actor(model, task, eval_config, demonstrations)
    return Driver(actor, {"checkpoint": str(path.resolve()), "step": None if state is None else state["step"]})
