"""Why a control policy fails: does it read the observation, or copy its own last action?

Behaviour cloning scores actions on expert histories, but the agent acts on its own. A model can predict the
next expert action well by repeating the previous one (LunarLander's expert repeats 75% of its actions), then,
acting, repeat its own first choice for the whole episode: the copycat problem. Four numbers tell it apart
from compounding error or a bug, per task:

- teacher-forced accuracy: the share of action tokens of recorded episodes predicted exactly (argmax over the
  task's valid tokens) with the true action history in context;
- the same with the history's actions shuffled (`shuffle_action_inputs`): what the observations alone explain;
- on-policy agreement: the share of the agent's own steps where its action tokens equal what the expert would
  do in the same state (the expert labels the states the agent visits), and the mean probability the agent gave
  the expert's action there (its first token, over the valid ones): an action the agent rates below its argmax,
  and so never takes greedily (Breakout's serve), shows there;
- how often the agent and the expert repeat their previous action.

For a policy that acts seldom differently from its last step (Pong's expert repeats 87% of its actions), the
average hides what matters, so the diagnosis also scores the decisive steps (where the expert's action differs
from its previous one), the same with the window's images shuffled in time (unchanged accuracy: no move is read
from the images), the cross-entropy of those steps' targets in both cases (a model can read the frames, raising the
probability of the expert's changes, while "as before" stays its argmax: Pong specialists whose accuracy did not
move: their loss rose 0.33-0.50 nats with the frames shuffled), and the distribution of the agent's and the
expert's actions on the agent's own states (an agent that learned only the action frequencies plays one
action). For image tasks it also measures the patch spread:
the share of a patch's embedding (what its pixels add, before its position) that differs from the mean of its
image's patches. Near 0, every patch of an image looks alike to the transformer, and no frame can be read
(uncentred Pong specialists: 0.01% to 0.8%; `centre_patches` makes it 100% by construction).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from generalist.batch import action_slots, collate, shuffle_action_inputs
from generalist.config import EvalConfig
from generalist.datasets.mixture import ControlSource
from generalist.datasets.storage import EpisodeDataset
from generalist.envs import TASKS, get_task, make
from generalist.envs.rollout import LabelledActor, ScriptedActor, Transition, rollout, single_env
from generalist.evaluate import acting_precision, agent_actor, prompt_dir
from generalist.model import Generalist, image_means
from generalist.tokenizers import TokenKind, TokenLayout, tokenize_actions


@dataclass
class Diagnosis:
    """A task's copycat test (shares in [0, 1]; NaN where a measure does not apply)."""

    task: str
    teacher_forced: float
    teacher_forced_shuffled: float
    on_policy_agreement: float
    agent_repeats: float
    expert_repeats: float
    steps: int  # on-policy steps measured
    decisive: float = float("nan")  # teacher-forced, on the steps where the expert changes its action
    decisive_steps: int = 0  # how many decisive steps the recorded windows hold
    decisive_frames_shuffled: float = float("nan")  # the same with the window's images shuffled in time
    decisive_loss: float = float("nan")  # teacher-forced cross-entropy (nats) of the decisive steps' targets
    decisive_loss_frames_shuffled: float = float("nan")  # the same with the window's images shuffled in time
    patch_spread: float = float("nan")  # mean distance of a patch embedding from its image's mean, over its norm
    agent_actions: dict[int, float] = field(default_factory=dict)  # on-policy share of each discrete action
    expert_actions: dict[int, float] = field(default_factory=dict)  # the expert's labels on the same states
    expert_probability: float = float("nan")  # on-policy: the agent's mean probability of the expert's action


@dataclass
class TeacherForced:
    """Per action token of recorded windows: whether the model predicted it, and whether its step is decisive."""

    correct: np.ndarray  # (n,) bool
    decisive: np.ndarray  # (n,) bool: the expert's action differs from its previous one (a window's first: False)
    loss: np.ndarray  # (n,) float: cross-entropy in nats of the target over the slot's valid ids

    @property
    def accuracy(self) -> float:
        """Share of action tokens predicted exactly."""
        return float(self.correct.mean()) if len(self.correct) else float("nan")

    @property
    def decisive_accuracy(self) -> float:
        """The same on the decisive steps only: what predicting "as before" cannot get right."""
        return float(self.correct[self.decisive].mean()) if self.decisive.any() else float("nan")

    @property
    def decisive_loss(self) -> float:
        """Mean cross-entropy of the decisive steps' targets: it falls when the model raises the probability of
        the expert's change, even while the change stays less likely than "as before" (argmax misses it)."""
        return float(self.loss[self.decisive].mean()) if self.decisive.any() else float("nan")


def teacher_forced(
    model: Generalist, task: str, data_dir: str | Path, episodes: int = 8, shuffle: float = 0.0,
    shuffle_images: bool = False, seed: int = 0, window_steps: int | None = None,
) -> TeacherForced:
    """Predict every action token of windows from the middle of recorded episodes, with the true history.

    `shuffle` reads that share of the history's actions as other timesteps' (`shuffle_action_inputs`);
    `shuffle_images` permutes the windows' images in time (if the accuracy stays, the images are not read).
    `window_steps` shortens the windows from as many timesteps as the context holds, so that models of
    different contexts are scored on the same steps.
    """
    layout = model.config.layout
    spec = get_task(task).action_spec()
    source = ControlSource(task, EpisodeDataset(Path(data_dir) / task), layout)
    steps = _window_steps(model, source.tokens_per_step(), window_steps)
    rng = np.random.default_rng(seed)
    windows = []
    for episode in range(min(episodes, len(source.episodes))):
        length = source.episodes.episode_length(episode)
        start = max(0, (length - steps) // 2)
        windows.append(source.tokenize_window(episode, start, min(length, start + steps),
                                              shuffle_images=rng if shuffle_images else None))
    batch = collate(windows, layout)
    inputs = shuffle_action_inputs(batch, shuffle, torch.Generator().manual_seed(seed))
    rows, columns = (batch.kinds[:, 1:] == TokenKind.ACTION).nonzero(as_tuple=True)
    allowed = torch.as_tensor(spec.valid_id_mask(layout))  # (slots, v)
    slots = action_slots(batch.kinds)[rows, columns + 1]
    with torch.no_grad():
        device = next(model.parameters()).device
        logits = model.logits(inputs.to(device))[rows.to(device), columns.to(device)].float().cpu()
        logits = logits.masked_fill(~allowed[slots], -torch.inf)
    targets = batch.targets[rows, columns + 1]
    correct = (logits.argmax(-1) == targets).numpy()
    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="none").numpy()
    # Tokens come row by row, `size` per step: a step is decisive when its ids differ from the step before it
    # in the same window.
    step_ids = targets.numpy().reshape(-1, spec.size)
    step_rows = rows.numpy().reshape(-1, spec.size)[:, 0]
    changed = np.concatenate([[False], (step_ids[1:] != step_ids[:-1]).any(axis=1) & (step_rows[1:] == step_rows[:-1])])
    return TeacherForced(correct, np.repeat(changed, spec.size), loss)


def patch_spread(model: Generalist, task: str, data_dir: str | Path, episodes: int = 8) -> float:
    """Over the images of recorded windows: the mean distance of a patch's embedding from the mean embedding of
    its image's patches, over the mean norm of a patch's embedding (positions excluded)."""
    layout = model.config.layout
    source = ControlSource(task, EpisodeDataset(Path(data_dir) / task), layout)
    windows = [source.tokenize_window(episode, 0, min(16, source.episodes.episode_length(episode)))
               for episode in range(min(episodes, len(source.episodes)))]
    batch = collate(windows, layout).to(next(model.parameters()).device)
    with torch.no_grad():
        content = model.embed.patch_content(batch).float()  # (n, d)
        spread = content - image_means(content, batch.patch_batch_index, batch.patch_token_index)
    return float(spread.norm(dim=1).mean() / content.norm(dim=1).mean().clamp(min=1e-12))


def _window_steps(model: Generalist, tokens_per_step: int, asked: int | None) -> int:
    """Timesteps of a teacher-forced window: `asked`, or as many as the model's context holds."""
    fits = model.config.context // tokens_per_step
    if asked is None:
        return fits
    if not 1 <= asked <= fits:
        raise ValueError(f"window_steps must be between 1 and the {fits} timesteps the model's context of "
                         f"{model.config.context} tokens holds, got {asked}")
    return asked


def teacher_forced_accuracy(
    model: Generalist, task: str, data_dir: str | Path, episodes: int = 8, shuffle: float = 0.0, seed: int = 0,
    window_steps: int | None = None,
) -> float:
    """Share of action tokens predicted exactly in windows from the middle of recorded episodes."""
    return teacher_forced(model, task, data_dir, episodes, shuffle, seed=seed, window_steps=window_steps).accuracy


@dataclass
class OnPolicy:
    """The agent's own steps, each labelled with the expert's action in the same state."""

    agent: np.ndarray  # (steps, slots) the agent's action ids
    expert: np.ndarray  # (steps, slots) the expert's action ids
    starts: list[int]  # the first step of each episode
    expert_probability: np.ndarray  # (steps,) the agent's probability of the expert's first action token

    @property
    def agreement(self) -> float:
        """Share of steps whose action tokens all equal the expert's."""
        return float((self.agent == self.expert).all(axis=1).mean())


def action_shares(ids: np.ndarray, layout: TokenLayout) -> dict[int, float]:
    """Share of each discrete action among steps (steps, 1) of action ids; empty for other action kinds."""
    if ids.shape[1] != 1 or not layout.is_discrete(ids).all():
        return {}
    values, counts = np.unique(layout.ids_to_discrete(ids[:, 0]), return_counts=True)
    return {int(v): float(c / counts.sum()) for v, c in zip(values, counts, strict=True)}


def on_policy(
    model: Generalist, task: str, config: EvalConfig, demonstrations: Path | None = None, max_steps: int = 1000
) -> OnPolicy:
    """The agent's actions and the expert's labels on the agent's own states.

    `config.episodes` episodes on seeds config.seed, config.seed + 1, ..., each cut at `max_steps`; the expert
    labels every state the agent reaches (`LabelledActor`).
    """
    spec = get_task(task)
    layout, action_spec = model.config.layout, spec.action_spec()
    env = make(task)
    driver = agent_actor(model, task, config, demonstrations)
    actor = LabelledActor(driver, ScriptedActor([spec.expert()], env.action_space))
    valid = torch.as_tensor(action_spec.valid_id_mask(layout)[0])  # the first action token's valid ids
    agent_ids, expert_ids, starts, probabilities = [], [], [], []

    def keep(step: Transition) -> None:
        agent_ids.append(tokenize_actions(step.actions.executed[:1], action_spec, layout)[0])
        expert_ids.append(tokenize_actions(step.actions.labels[:1], action_spec, layout)[0])
        logits = driver.last.logits[0, 0].float().cpu().masked_fill(~valid, float("-inf"))
        probabilities.append(float(torch.softmax(logits, dim=-1)[int(expert_ids[-1][0])]))

    try:
        with acting_precision(model, config):
            rollout(single_env(env), actor, [itertools.count(config.seed)], quotas=[config.episodes],
                    max_steps=max_steps, on_start=lambda rows, observations: starts.append(len(agent_ids)),
                    on_step=keep)
    finally:
        env.close()
    return OnPolicy(np.stack(agent_ids), np.stack(expert_ids), starts[: config.episodes], np.array(probabilities))


def repeat_rate(ids: np.ndarray, episode_starts: list[int]) -> float:
    """Share of steps (N, slots) whose action equals the step before, episodes' first steps not counted."""
    first = np.zeros(len(ids), bool)
    first[episode_starts] = True
    same = np.concatenate([[False], (ids[1:] == ids[:-1]).all(axis=1)])
    return float(same[~first].mean()) if (~first).any() else float("nan")


def diagnose(
    model: Generalist, task: str, config: EvalConfig, demonstrations: Path | None = None, windows: int = 8,
    window_steps: int | None = None,
) -> Diagnosis:
    """The copycat test of one task: teacher-forced accuracy with true and shuffled history, on all steps and on
    the decisive ones (with the images shuffled in time, for image tasks), and the on-policy numbers.

    The recorded episodes (and prompts) come from `prompt_dir(config, task, demonstrations)`; the teacher-forced
    figures read one window from the middle of each of the first `windows` episodes (Pong: 8 windows hold about
    33 decisive steps, 48 about 190), each `window_steps` timesteps long (default: as many as the context holds).
    """
    if windows < 1:
        raise ValueError(f"windows must be at least 1, got {windows}")
    model.eval()
    layout = model.config.layout
    data_dir = prompt_dir(config, task, demonstrations)
    # The recorded windows first: a bad window_steps is refused before the games are played.
    forced = teacher_forced(model, task, data_dir, episodes=windows, window_steps=window_steps)
    history_shuffled = teacher_forced_accuracy(model, task, data_dir, episodes=windows, shuffle=1.0,
                                               window_steps=window_steps)
    has_images = "image" in EpisodeDataset(Path(data_dir) / task).observation_specs
    frames_shuffled = (teacher_forced(model, task, data_dir, episodes=windows, shuffle_images=True,
                                      window_steps=window_steps) if has_images else None)
    acted = on_policy(model, task, config, demonstrations)
    return Diagnosis(
        task=task,
        teacher_forced=forced.accuracy,
        teacher_forced_shuffled=history_shuffled,
        on_policy_agreement=acted.agreement,
        agent_repeats=repeat_rate(acted.agent, acted.starts),
        expert_repeats=repeat_rate(acted.expert, acted.starts),
        steps=len(acted.agent),
        decisive=forced.decisive_accuracy,
        decisive_steps=int(forced.decisive.sum()) // get_task(task).action_spec().size,
        decisive_frames_shuffled=frames_shuffled.decisive_accuracy if frames_shuffled else float("nan"),
        decisive_loss=forced.decisive_loss,
        decisive_loss_frames_shuffled=frames_shuffled.decisive_loss if frames_shuffled else float("nan"),
        patch_spread=patch_spread(model, task, data_dir) if has_images else float("nan"),
        agent_actions=action_shares(acted.agent, layout),
        expert_actions=action_shares(acted.expert, layout),
        expert_probability=float(acted.expert_probability.mean()),
    )


DIAGNOSIS_HEADER = (
    "| task | teacher-forced | with shuffled history | decisive steps | decisive, frames shuffled | "
    "decisive loss | decisive loss, frames shuffled | patch spread | on-policy agreement | "
    "on-policy probability of the expert's action | agent repeats | expert repeats | steps | agent's actions | "
    "expert's actions |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"
)


def _share(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.1%}"


def _nats(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.3f}"


def format_shares(shares: dict[int, float], task: str) -> str:
    """Action shares as "NAME: 12%, ..." by action id, named where the task is registered."""
    named = TASKS.get(task)  # registered tasks name their actions; others show ids
    return ", ".join(f"{named.action_name(action) if named else action}: {share:.0%}"
                     for action, share in sorted(shares.items()))


def format_diagnosis(d: Diagnosis) -> str:
    """One markdown row of the table under `DIAGNOSIS_HEADER`."""
    cells = [d.task, *map(_share, (d.teacher_forced, d.teacher_forced_shuffled, d.decisive,
                                   d.decisive_frames_shuffled)),
             _nats(d.decisive_loss), _nats(d.decisive_loss_frames_shuffled),
             *map(_share, (d.patch_spread, d.on_policy_agreement, d.expert_probability, d.agent_repeats,
                           d.expert_repeats)),
             str(d.steps), format_shares(d.agent_actions, d.task), format_shares(d.expert_actions, d.task)]
    return "| " + " | ".join(cells) + " |"
