"""Run a policy for one seeded episode: the loop shared by score baselines, recording and benchmarks.

Design choices:
- One timestep is (observation, action, reward): the observation the policy acted on, its action and the
  reward that action earned. The observation after the last action is not kept: Gato's sequences are
  observation-action pairs, and no action follows it.
- The policy is reset with the episode's seed, so a seeded episode is the same whatever ran before it.
- Observations are copied only when asked (`record=True`): score baselines need returns, not frames.
- `noise` (DART, Laskey et al. 2017): at each step, with this probability, the environment executes a uniformly
  random action while the recorded action stays the policy's. Behaviour cloning of clean expert data never
  sees the states a small mistake leads to, and a cloned policy's errors compound there; noisy episodes show
  what the expert does in them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from generalist.envs.contract import Observation
from generalist.envs.policies import Policy, RandomPolicy


@dataclass
class Episode:
    """One finished episode; arrays hold one row per timestep (T = `length`)."""

    seed: int
    episode_return: float
    length: int
    terminated: bool  # the task ended (goal, crash, game over); False means the step cap cut it
    observations: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (T, ...)
    actions: np.ndarray | None = None  # (T,) int64 or (T, k) float32
    rewards: np.ndarray | None = None  # (T,) float32


def run_episode(env: gym.Env, policy: Policy, seed: int, record: bool = False, noise: float = 0.0) -> Episode:
    """Play one episode of `env` from `seed` with `policy`; with `record`, keep every timestep.

    With `noise` > 0 the environment executes a random action instead of the policy's with that probability,
    and the policy's action is what is recorded (see the module's notes).
    """
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise is a probability, got {noise}")
    policy.reset(seed)
    explorer = RandomPolicy(env.action_space) if noise > 0 else None
    if explorer is not None:
        explorer.reset(seed)
    coins = np.random.default_rng([seed, 1])
    observation, info = env.reset(seed=seed)
    observations: list[Observation] = []
    actions: list[int | np.ndarray] = []
    rewards: list[float] = []
    total = 0.0
    while True:
        action = policy.act(observation, info)
        if record:
            observations.append(observation)
            actions.append(action)
        if explorer is not None and coins.random() < noise:
            action = explorer.act(observation, info)
        observation, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        rewards.append(float(reward))
        if terminated or truncated:
            break
    episode = Episode(seed, total, len(rewards), bool(terminated))
    if record:
        episode.observations = {key: np.stack([o[key] for o in observations]) for key in observations[0]}
        episode.actions = _stack_actions(actions)
        episode.rewards = np.asarray(rewards, dtype=np.float32)
    return episode


def _stack_actions(actions: list[int | np.ndarray]) -> np.ndarray:
    if isinstance(actions[0], np.ndarray):
        return np.stack(actions).astype(np.float32)
    return np.asarray(actions, dtype=np.int64)


def sub_env_view(observations: Observation, infos: dict, index: int) -> tuple[Observation, dict]:
    """Sub-env `index`'s observation and info out of a vector env's batched ones (for per-env policies)."""
    observation = {key: value[index] for key, value in observations.items()}
    info = {
        key: value[index]
        for key, value in infos.items()
        if not key.startswith("_") and infos.get(f"_{key}", np.ones(index + 1, bool))[index]
    }
    return observation, info
