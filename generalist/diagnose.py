"""Why a control policy fails: does it read the observation, or copy its own last action?

Behaviour cloning scores actions on expert histories, but the agent acts on its own. A model can predict the
next expert action well by repeating the previous one (LunarLander's expert repeats 75% of its actions), then,
acting, repeat its own first choice for the whole episode: the copycat problem. Four numbers tell it apart
from compounding error or a bug, per task:

- teacher-forced accuracy: the share of action tokens of recorded episodes predicted exactly (argmax over the
  task's valid tokens) with the true action history in context;
- the same with the history's actions shuffled (`shuffle_action_inputs`): what the observations alone explain;
- on-policy agreement: the share of the agent's own steps where its action tokens equal what the expert would
  do in the same state (the expert labels the states the agent visits);
- how often the agent and the expert repeat their previous action.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from generalist.batch import action_slots, collate, shuffle_action_inputs
from generalist.config import EvalConfig
from generalist.datasets.mixture import ControlSource
from generalist.datasets.storage import EpisodeDataset
from generalist.envs import get_task, make
from generalist.envs.rollout import LabelledActor, ScriptedActor, Transition, rollout, single_env
from generalist.evaluate import acting_precision, agent_actor, prompt_dir
from generalist.model import Generalist
from generalist.tokenizers import TokenKind, tokenize_actions


@dataclass
class Diagnosis:
    """A task's copycat test (shares in [0, 1])."""

    task: str
    teacher_forced: float
    teacher_forced_shuffled: float
    on_policy_agreement: float
    agent_repeats: float
    expert_repeats: float
    steps: int  # on-policy steps measured


def teacher_forced_accuracy(
    model: Generalist, task: str, data_dir: str | Path, episodes: int = 8, shuffle: float = 0.0, seed: int = 0
) -> float:
    """Share of action tokens predicted exactly in windows from the middle of recorded episodes."""
    layout = model.config.layout
    source = ControlSource(task, EpisodeDataset(Path(data_dir) / task), layout)
    steps = model.config.context // source.tokens_per_step()
    windows = []
    for episode in range(min(episodes, len(source.episodes))):
        length = source.episodes.episode_length(episode)
        start = max(0, (length - steps) // 2)
        windows.append(source.tokenize_window(episode, start, min(length, start + steps)))
    batch = collate(windows, layout)
    inputs = shuffle_action_inputs(batch, shuffle, torch.Generator().manual_seed(seed))
    rows, columns = (batch.kinds[:, 1:] == TokenKind.ACTION).nonzero(as_tuple=True)
    allowed = torch.as_tensor(get_task(task).action_spec().valid_id_mask(layout))  # (slots, v)
    slots = action_slots(batch.kinds)[rows, columns + 1]
    with torch.no_grad():
        device = next(model.parameters()).device
        logits = model.logits(inputs.to(device))[rows.to(device), columns.to(device)].float().cpu()
        logits = logits.masked_fill(~allowed[slots], -torch.inf)
    return float((logits.argmax(-1) == batch.ids[rows, columns + 1]).float().mean())


def on_policy(
    model: Generalist, task: str, config: EvalConfig, demonstrations: Path | None = None, max_steps: int = 1000
) -> tuple[float, float, float, int]:
    """Agreement with the expert on the agent's own states, the agent's and the expert's repeat rates, steps.

    `config.episodes` episodes on seeds config.seed, config.seed + 1, ..., each cut at `max_steps`; the expert
    labels every state the agent reaches (`LabelledActor`).
    """
    spec = get_task(task)
    layout, action_spec = model.config.layout, spec.action_spec()
    env = make(task)
    actor = LabelledActor(agent_actor(model, task, config, demonstrations),
                          ScriptedActor([spec.expert()], env.action_space))
    agent_ids, expert_ids, starts = [], [], []

    def keep(step: Transition) -> None:
        agent_ids.append(tokenize_actions(step.actions.executed[:1], action_spec, layout)[0])
        expert_ids.append(tokenize_actions(step.actions.labels[:1], action_spec, layout)[0])

    try:
        with acting_precision(model, config):
            rollout(single_env(env), actor, [itertools.count(config.seed)], quotas=[config.episodes],
                    max_steps=max_steps, on_start=lambda rows, observations: starts.append(len(agent_ids)),
                    on_step=keep)
    finally:
        env.close()
    agent, labels = np.stack(agent_ids), np.stack(expert_ids)  # (steps, slots)
    agreement = float((agent == labels).all(axis=1).mean())
    starts = starts[: config.episodes]  # the loop starts no episode after the last, but be exact
    return agreement, repeat_rate(agent, starts), repeat_rate(labels, starts), len(agent)


def repeat_rate(ids: np.ndarray, episode_starts: list[int]) -> float:
    """Share of steps (N, slots) whose action equals the step before, episodes' first steps not counted."""
    first = np.zeros(len(ids), bool)
    first[episode_starts] = True
    same = np.concatenate([[False], (ids[1:] == ids[:-1]).all(axis=1)])
    return float(same[~first].mean()) if (~first).any() else float("nan")


def diagnose(model: Generalist, task: str, config: EvalConfig, demonstrations: Path | None = None) -> Diagnosis:
    """The copycat test of one task: teacher-forced accuracy with true and shuffled history, on-policy numbers.

    The recorded episodes (and prompts) come from `prompt_dir(config, task, demonstrations)`.
    """
    model.eval()
    data_dir = prompt_dir(config, task, demonstrations)
    agreement, agent_repeats, expert_repeats, steps = on_policy(model, task, config, demonstrations)
    return Diagnosis(
        task=task,
        teacher_forced=teacher_forced_accuracy(model, task, data_dir),
        teacher_forced_shuffled=teacher_forced_accuracy(model, task, data_dir, shuffle=1.0),
        on_policy_agreement=agreement,
        agent_repeats=agent_repeats,
        expert_repeats=expert_repeats,
        steps=steps,
    )


DIAGNOSIS_HEADER = (
    "| task | teacher-forced | with shuffled history | on-policy agreement | agent repeats | expert repeats | steps |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def format_diagnosis(d: Diagnosis) -> str:
    """One markdown row of the table under `DIAGNOSIS_HEADER`."""
    return (f"| {d.task} | {d.teacher_forced:.1%} | {d.teacher_forced_shuffled:.1%} | {d.on_policy_agreement:.1%} | "
            f"{d.agent_repeats:.1%} | {d.expert_repeats:.1%} | {d.steps} |")
