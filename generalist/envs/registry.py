"""The task registry: every environment the agent plays, built the same way.

A `Task` names a Gymnasium env id with its settings, the wrapper that returns the observation contract
(`generalist.envs.contract`), the action space the agent sees, its scripted expert and its step cap.

Design choices:
- `make` is the one way to build a task's env: ``gymnasium.make`` (its ``TimeLimit`` is the step cap and
  reports ``truncated``, never ``terminated``), the contract wrapper, Gymnasium's ``RescaleAction`` to [-1, 1]
  for continuous actions, then `SeedEveryReset` so that every episode, autoresets included, has a known seed.
- The vector form is Gymnasium's ``SyncVectorEnv`` over `make` for every task. ale-py's ``AtariVectorEnv`` runs
  the emulators in C++ threads, but it exposes no RAM (the Atari experts need it), it needs our crop and resize
  on top of its own preprocessing (set up to give the single env's frames, which it does: checked identical
  without sticky actions), and on this 2-core machine it was only 10-18% faster than ``SyncVectorEnv`` with the
  experts acting (bench/envs.py, docs/BENCHMARKS.md). One code path that gives the agent exactly the frames of
  the demonstrations, with RAM for the experts, is worth more than that; the agent's forward pass, not the
  emulator, bounds evaluation.
- Sub-env ``i`` of a vector env seeded with ``s`` plays seeds ``s + i``, ``s + i + n``, ``s + i + 2n``, ...
  (n envs), so episodes never share a seed and each can be replayed alone with `make`.
- A task may end episodes that go `steps_without_reward` steps without any reward (Breakout only: an agent
  that never presses FIRE is never served a ball and would play to the 27,000-step cap). Expert and random
  players never come near the limit.
- Atari tasks carry the human and random scores in common use across the Atari literature (Pong 14.6 and
  -20.7, Breakout 30.5 and 1.7) for the human-normalized score. Their random scores were measured under other
  protocols and differ a little from ours, which is why the expert-normalized score uses our own.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from types import MappingProxyType
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import RescaleAction

from generalist.envs import experts
from generalist.envs.atari import AtariFrame
from generalist.envs.contract import SeedEveryReset, TruncateWithoutReward, VectorObservation
from generalist.envs.external import EXTERNAL_PREFIXES, external_task
from generalist.envs.task import HumanScores, Task

ATARI_STEP_CAP = 27_000  # 108,000 frames at frameskip 4: the usual 30 minutes of play, ALE v5's own limit


# ALE v5 defaults, spelled out so that they are stored beside every recorded dataset.
ATARI_V5_KWARGS: Mapping[str, Any] = MappingProxyType(
    {"frameskip": 4, "repeat_action_probability": 0.25, "full_action_space": False}
)


TASKS: Mapping[str, Task] = MappingProxyType(
    {
        task.name: task
        for task in (
            Task("cartpole", "CartPole-v1", VectorObservation, "discrete", 2, experts.CartPoleExpert, 500,
                 action_names=("LEFT", "RIGHT")),
            Task("acrobot", "Acrobot-v1", VectorObservation, "discrete", 3, experts.AcrobotExpert, 500,
                 action_names=("TORQUE-1", "TORQUE0", "TORQUE+1")),
            Task(
                "mountaincar", "MountainCar-v0", VectorObservation, "discrete", 3, experts.MountainCarExpert, 200,
                action_names=("LEFT", "NOOP", "RIGHT"),
            ),
            Task(
                "mountaincar_continuous",
                "MountainCarContinuous-v0",
                VectorObservation,
                "continuous",
                1,
                experts.MountainCarContinuousExpert,
                999,
            ),
            Task("pendulum", "Pendulum-v1", VectorObservation, "continuous", 1, experts.PendulumExpert, 200),
            Task(
                "lunarlander",
                "LunarLander-v3",
                VectorObservation,
                "discrete",
                4,
                partial(experts.LunarLanderExpert, continuous=False),
                1000,
                action_names=("NOOP", "LEFT-ENGINE", "MAIN-ENGINE", "RIGHT-ENGINE"),
            ),
            Task(
                "lunarlander_continuous",
                "LunarLander-v3",
                VectorObservation,
                "continuous",
                2,
                partial(experts.LunarLanderExpert, continuous=True),
                1000,
                env_kwargs=MappingProxyType({"continuous": True}),
            ),
            Task(
                "pong",
                "ALE/Pong-v5",
                partial(AtariFrame, top=34),
                "discrete",
                6,
                experts.PongExpert,
                ATARI_STEP_CAP,
                env_kwargs=ATARI_V5_KWARGS,
                human_scores=HumanScores(human=14.6, random=-20.7),
                # ALE names Pong's moves RIGHT and LEFT; on screen they move the paddle up and down.
                action_names=("NOOP", "FIRE", "UP", "DOWN", "UPFIRE", "DOWNFIRE"),
            ),
            Task(
                "breakout",
                "ALE/Breakout-v5",
                partial(AtariFrame, top=33),
                "discrete",
                4,
                experts.BreakoutExpert,
                ATARI_STEP_CAP,
                env_kwargs=ATARI_V5_KWARGS,
                human_scores=HumanScores(human=30.5, random=1.7),
                action_names=("NOOP", "FIRE", "RIGHT", "LEFT"),
                # Five times the longest stretch without reward in 50 recorded expert games (206 steps): ends
                # only the games of an agent that stopped serving the ball.
                steps_without_reward=1000,
            ),
        )
    }
)


def get_task(task: str | Task) -> Task:
    """The registered task of that name, or a ``gym:``/``minari:`` task (`generalist.envs.external`); a Task passes
    through."""
    if isinstance(task, Task):
        return task
    if task.startswith(EXTERNAL_PREFIXES):
        return external_task(task)
    try:
        return TASKS[task]
    except KeyError:
        raise KeyError(f"unknown task {task!r}; known: {', '.join(TASKS)}") from None


def control_tasks(weights: Mapping[str, float]) -> list[str]:
    """The environment tasks of a task mixture (weight above 0), in registry order."""
    return [task for task in TASKS if weights.get(task, 0) > 0]


def evaluated_tasks(weights: Mapping[str, float]) -> list[str]:
    """The tasks of a mixture that play an env: the registered ones (registry order), then ``minari:`` datasets."""
    external = [task for task, weight in weights.items() if task.startswith(EXTERNAL_PREFIXES) and weight > 0]
    return control_tasks(weights) + sorted(external)


def task_list(names: str) -> tuple[str, ...]:
    """Task names from a comma-separated string ("all" for every task); unknown names are a ValueError."""
    if names.strip() == "all":
        return tuple(TASKS)
    tasks = tuple(name.strip() for name in names.split(",") if name.strip())
    unknown = [name for name in tasks if name not in TASKS and not name.startswith(EXTERNAL_PREFIXES)]
    if unknown or not tasks:
        raise ValueError(f"unknown tasks {unknown or names!r}; known: {', '.join(TASKS)}, gym:<env id> and "
                         "minari:<dataset id>")
    return tasks


def make(
    task: str | Task,
    seed: int | None = None,
    render_mode: str | None = None,
    seed_stride: int = 1,
    max_episode_steps: int | None = None,
) -> gym.Env:
    """The task's env with the observation contract; the first reset uses `seed`, each next one +`seed_stride`.

    `max_episode_steps` overrides the task's step cap (short episodes for tests and quick datasets).
    """
    spec = get_task(task)
    if spec.is_atari:
        # Imported here: only Atari tasks need the emulator (0.13 s), and importing it registers the ALE envs.
        import ale_py

        gym.register_envs(ale_py)
    cap = spec.max_episode_steps if max_episode_steps is None else max_episode_steps
    if spec.env_spec is not None:
        env = gym.make(spec.env_spec, max_episode_steps=cap, render_mode=render_mode)
    elif spec.env_id:
        env = gym.make(spec.env_id, max_episode_steps=cap, render_mode=render_mode, **spec.env_kwargs)
    else:
        raise ValueError(f"{spec.name}: no environment to play (the dataset was created without one)")
    if spec.expected_action_space is not None and env.action_space != spec.expected_action_space:
        env.close()
        raise ValueError(f"{spec.name}: the env's action space {env.action_space} differs from the dataset's "
                         f"{spec.expected_action_space}")
    env = spec.wrapper(env)
    if spec.steps_without_reward is not None:
        env = TruncateWithoutReward(env, spec.steps_without_reward)
    if spec.action_kind == "continuous":
        env = RescaleAction(env, np.float32(-1.0), np.float32(1.0))
    return SeedEveryReset(env, seed, stride=seed_stride)


def make_vector(
    task: str | Task,
    num_envs: int,
    seed: int | None = None,
    autoreset_mode: gym.vector.AutoresetMode = gym.vector.AutoresetMode.NEXT_STEP,
    max_episode_steps: int | None = None,
) -> gym.vector.VectorEnv:
    """`num_envs` copies of the task's env stepped together; sub-env i plays seeds seed+i, seed+i+num_envs, ..."""
    factories = [
        partial(make, task, None if seed is None else seed + i, None, num_envs, max_episode_steps)
        for i in range(num_envs)
    ]
    return gym.vector.SyncVectorEnv(factories, autoreset_mode=autoreset_mode)
