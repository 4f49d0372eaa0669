"""The one rollout loop: actors playing seeded episodes in a vector env, observed through small hooks.

Recording and score baselines (scripted experts), evaluation, videos and diagnosis (the trained agent) all run
`rollout`; they differ only in the actor and the hooks. An actor starts episodes in some rows (`start`) and
chooses an action for every row each step (`act`); hooks see each episode start, each step, and each episode's
end.

Design choices:
- Every episode is seeded explicitly: row i plays the seeds its iterator gives, in order, so an episode is the
  same whatever ran beside it. The vector env never resets on its own (autoreset disabled): the loop resets the
  rows whose episode ended, with their next seed, right after the step that ended it.
- A row that has played its quota of counted episodes keeps playing (a vector env steps every row), but those
  episodes are not counted; the loop ends once every row has played its quota, or when `until` says so after
  an episode ends.
- One timestep is (observation, action, reward): the observation the actor acted on, its action and the reward
  that action earned. The observation after the last action is not kept: Gato's sequences are
  observation-action pairs, and no action follows it.
- An actor returns the actions the envs execute and the labels a recording stores (the expert's action). They
  differ only for DART noise (Laskey et al. 2017) and for recordings driven by a learner: with `noise` > 0 the
  scripted actor executes a uniformly random action with that probability while its label stays the expert's,
  so behaviour cloning sees what the expert does in the states a small mistake leads to.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from generalist.envs.contract import Observation
from generalist.envs.policies import Policy, RandomPolicy


@dataclass
class Actions:
    """What an actor chose for every row: what the envs execute, and what a recording stores as the label."""

    executed: np.ndarray  # (n,) int64 or (n, k) float32
    labels: np.ndarray  # same shape: the expert's action (equal to `executed` unless noise or a learner drives)


class Actor(Protocol):
    """Chooses actions for the rows of a vector env."""

    def start(self, rows: Sequence[int], seeds: Sequence[int]) -> None:
        """New episodes begin in `rows`, with these seeds."""

    def act(self, observations: Observation, infos: Sequence[dict[str, Any]]) -> Actions:
        """An action for every row, from the batched observations and each row's info."""


@dataclass
class Transition:
    """One step of every row: the observations acted on, the actions, and what the envs answered."""

    observations: Observation  # key -> (n, ...): what the actions were chosen on
    infos: list[dict[str, Any]]  # each row's info at that observation
    actions: Actions
    rewards: np.ndarray  # (n,) float64
    terminated: np.ndarray  # (n,) bool
    truncated: np.ndarray  # (n,) bool, the loop's step cap included


@dataclass
class EpisodeEnd:
    """One finished episode of a row."""

    row: int
    seed: int
    episode_return: float
    length: int
    terminated: bool  # the task ended (goal, crash, game over); False means a step cap cut it
    counted: bool  # within the row's quota
    stalled: bool = False  # the no-reward limit ended it (contract.TruncateWithoutReward)


def sub_env_info(infos: dict, index: int) -> dict:
    """Sub-env `index`'s info out of a vector env's batched one (only the keys that sub-env set)."""
    return {
        key: value[index]
        for key, value in infos.items()
        if not key.startswith("_") and infos.get(f"_{key}", np.ones(index + 1, bool))[index]
    }


def sub_env_view(observations: Observation, infos: dict, index: int) -> tuple[Observation, dict]:
    """Sub-env `index`'s observation and info out of a vector env's batched ones (for per-env policies)."""
    return {key: value[index] for key, value in observations.items()}, sub_env_info(infos, index)


def rollout(
    env: gym.vector.VectorEnv,
    actor: Actor,
    seeds: Sequence[Iterator[int]],
    quotas: Sequence[int] | None = None,
    until: Callable[[], bool] | None = None,
    max_steps: int | None = None,
    on_start: Callable[[Sequence[int], Observation], None] | None = None,
    on_step: Callable[[Transition], None] | None = None,
    on_end: Callable[[EpisodeEnd], None] | None = None,
) -> list[EpisodeEnd]:
    """Play episodes in every row of `env` (autoreset disabled) until each row has played its quota.

    Row i plays the seeds of `seeds[i]`; its first `quotas[i]` episodes are counted (all, without quotas, and
    then `until` must end the loop: it is asked after every episode's end). `max_steps` cuts episodes
    (truncated). Returns the episodes that ended, counted or not, in the order they ended.
    """
    if env.autoreset_mode != gym.vector.AutoresetMode.DISABLED:
        raise ValueError("rollout resets the rows itself: make the vector env with autoreset_mode=DISABLED")
    n = env.num_envs
    if len(seeds) != n or (quotas is not None and len(quotas) != n):
        raise ValueError(f"{len(seeds)} seed iterators and {quotas and len(quotas)} quotas for {n} envs")
    if quotas is None and until is None:
        raise ValueError("rollout needs quotas or an `until` condition, else it never ends")
    quota = np.asarray(quotas if quotas is not None else [np.iinfo(np.int64).max] * n, np.int64)
    current = [next(row_seeds) for row_seeds in seeds]
    observations, batched_infos = env.reset(seed=current)
    infos = [sub_env_info(batched_infos, i) for i in range(n)]
    actor.start(range(n), current)
    if on_start is not None:
        on_start(range(n), observations)
    running, lengths, played = np.zeros(n), np.zeros(n, np.int64), np.zeros(n, np.int64)
    ended: list[EpisodeEnd] = []
    while (played < quota).any():
        actions = actor.act(observations, infos)
        next_observations, rewards, terminated, truncated, batched_infos = env.step(actions.executed)
        running += rewards
        lengths += 1
        if max_steps is not None:
            truncated = truncated | (lengths >= max_steps)
        if on_step is not None:
            on_step(Transition(observations, infos, actions, rewards, terminated, truncated))
        observations = next_observations
        infos = [sub_env_info(batched_infos, i) for i in range(n)]
        done = np.flatnonzero(terminated | truncated)
        stop = False
        for i in done:
            end = EpisodeEnd(int(i), current[i], float(running[i]), int(lengths[i]), bool(terminated[i]),
                             bool(played[i] < quota[i]), bool(infos[i].get("stalled", False)))
            ended.append(end)
            played[i] += 1
            running[i], lengths[i] = 0.0, 0
            if on_end is not None:
                on_end(end)
            stop = stop or (until is not None and until())
        if stop or not (played < quota).any():
            break
        if len(done) == 0:
            continue
        rows = done.tolist()
        for i in rows:
            current[i] = next(seeds[i])
        mask = np.zeros(n, bool)
        mask[rows] = True
        observations, reset_infos = env.reset(seed=[current[i] if mask[i] else None for i in range(n)],
                                              options={"reset_mask": mask})
        for i in rows:
            infos[i] = sub_env_info(reset_infos, i)
        actor.start(rows, [current[i] for i in rows])
        if on_start is not None:
            on_start(rows, observations)
    return ended


def unbatch(observations: Observation) -> list[Observation]:
    """A vector env's batched observation to one observation per row."""
    n = len(next(iter(observations.values())))
    return [{key: value[i] for key, value in observations.items()} for i in range(n)]


def seed_sequences(first_seed: int, n: int) -> list[Iterator[int]]:
    """Row i of n plays seeds first_seed + i, first_seed + i + n, ...: n rows together play consecutive seeds."""
    return [itertools.count(first_seed + i, n) for i in range(n)]


def single_env(env: gym.Env) -> gym.vector.VectorEnv:
    """A vector env of one row around an existing env (closing it closes `env`)."""
    return gym.vector.SyncVectorEnv([lambda: env], autoreset_mode=gym.vector.AutoresetMode.DISABLED)


# ---------------------------------------------------------------------------------- scripted actors


class ScriptedActor:
    """One scripted policy per row (an expert, or the random policy); with `noise`, DART's random actions."""

    def __init__(self, policies: Sequence[Policy], action_space: gym.Space, noise: float = 0.0) -> None:
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise is a probability, got {noise}")
        self.policies, self.noise = list(policies), noise
        self.explorers = [RandomPolicy(action_space) for _ in policies] if noise > 0 else []
        self.coins = [np.random.default_rng(0) for _ in policies]

    def start(self, rows: Sequence[int], seeds: Sequence[int]) -> None:
        """Reset the rows' policies (and their noise) with the episodes' seeds."""
        for row, seed in zip(rows, seeds, strict=True):
            self.policies[row].reset(seed)
            if self.explorers:
                self.explorers[row].reset(seed)
                self.coins[row] = np.random.default_rng([seed, 1])

    def act(self, observations: Observation, infos: Sequence[dict[str, Any]]) -> Actions:
        """Each row's policy acts on its own observation and info; noise may replace what is executed."""
        labels, executed = [], []
        for row, (policy, observation) in enumerate(zip(self.policies, unbatch(observations), strict=True)):
            action = policy.act(observation, infos[row])
            labels.append(action)
            if self.explorers and self.coins[row].random() < self.noise:
                action = self.explorers[row].act(observation, infos[row])
            executed.append(action)
        return Actions(stack_actions(executed), stack_actions(labels))


class LabelledActor:
    """One actor drives (its actions are executed), another labels every step (its actions are recorded).

    The labeller sees every observation in order, as it would acting, so a stateful expert (one that reads the
    ball's flight from two frames) labels the states the driver reaches as it would its own. This is how a
    diagnosis measures a trained agent's agreement with the expert on its own states, and how DAgger records
    (Ross et al. 2011): with `beta` > 0, each step the labeller's action is executed instead with that
    probability (DAgger's mixture policy), drawn per step from a generator seeded by the episode's seed.
    """

    def __init__(self, driver: Actor, labeller: Actor, beta: float = 0.0) -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta is a probability, got {beta}")
        self.driver, self.labeller, self.beta = driver, labeller, beta
        self.coins: dict[int, np.random.Generator] = {}

    def start(self, rows: Sequence[int], seeds: Sequence[int]) -> None:
        """Start both actors' episodes."""
        self.driver.start(rows, seeds)
        self.labeller.start(rows, seeds)
        for row, seed in zip(rows, seeds, strict=True):
            self.coins[row] = np.random.default_rng([seed, 2])

    def act(self, observations: Observation, infos: Sequence[dict[str, Any]]) -> Actions:
        """The driver's actions (or, with probability beta, the labeller's), labelled with the labeller's."""
        driven = self.driver.act(observations, infos)
        labels = self.labeller.act(observations, infos).labels
        if self.beta == 0.0:
            return Actions(driven.executed, labels)
        expert_acts = np.array([self.coins[row].random() < self.beta for row in range(len(labels))])
        mask = expert_acts.reshape(-1, *([1] * (labels.ndim - 1)))
        return Actions(np.where(mask, labels, driven.executed).astype(labels.dtype), labels)


def stack_actions(actions: Sequence[int | np.ndarray]) -> np.ndarray:
    """Actions of several rows or steps as one array: (n,) int64 for discrete ones, (n, k) float32 else."""
    if isinstance(actions[0], np.ndarray) and np.ndim(actions[0]) > 0:
        return np.stack(actions).astype(np.float32)
    return np.asarray(actions, dtype=np.int64)


# ----------------------------------------------------------------------------------- one recorded episode


@dataclass
class Episode:
    """One finished episode; arrays hold one row per timestep (T = `length`)."""

    seed: int
    episode_return: float
    length: int
    terminated: bool  # the task ended (goal, crash, game over); False means the step cap cut it
    observations: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (T, ...)
    actions: np.ndarray | None = None  # (T,) int64 or (T, k) float32: the labels (the expert's actions)
    rewards: np.ndarray | None = None  # (T,) float32
    executed: np.ndarray | None = None  # what the env executed, where a learner drove (else the labels)


class EpisodeRecorder:
    """Rollout hooks that keep every timestep of each row and hand each finished episode to `keep` (with the
    executed actions beside the labels when `executed`)."""

    def __init__(
        self, n: int, keep: Callable[[Episode, EpisodeEnd], None], record: bool = True, executed: bool = False
    ) -> None:
        self.keep, self.record, self.executed = keep, record, executed
        self.steps: list[list[tuple[Observation, np.ndarray, float, np.ndarray]]] = [[] for _ in range(n)]

    def on_step(self, step: Transition) -> None:
        """Keep each row's observation, label and reward."""
        if not self.record:  # returns and lengths come with the episode's end
            return
        for row, rows_steps in enumerate(self.steps):
            observation = {key: value[row] for key, value in step.observations.items()}
            rows_steps.append((observation, step.actions.labels[row], float(step.rewards[row]),
                               step.actions.executed[row]))

    def on_end(self, end: EpisodeEnd) -> None:
        """Assemble the row's finished episode and pass it on."""
        steps, self.steps[end.row] = self.steps[end.row], []
        episode = Episode(end.seed, end.episode_return, end.length, end.terminated)
        if self.record:
            episode.observations = {key: np.stack([obs[key] for obs, *_ in steps]) for key in steps[0][0]}
            episode.actions = stack_actions([label for _, label, *_ in steps])
            episode.rewards = np.asarray([reward for _, _, reward, _ in steps], dtype=np.float32)
            if self.executed:
                episode.executed = stack_actions([executed for *_, executed in steps])
        self.keep(episode, end)


def run_episode(env: gym.Env, policy: Policy, seed: int, record: bool = False, noise: float = 0.0) -> Episode:
    """Play one episode of `env` from `seed` with a scripted `policy`; with `record`, keep every timestep.

    With `noise` > 0 the environment executes a random action instead of the policy's with that probability,
    and the policy's action is what is recorded (see the module's notes). `env` stays open.
    """
    actor = ScriptedActor([policy], env.action_space, noise)
    played: list[Episode] = []
    recorder = EpisodeRecorder(1, lambda episode, _: played.append(episode), record)
    rollout(single_env(env), actor, [iter([seed])], quotas=[1], on_step=recorder.on_step, on_end=recorder.on_end)
    return played[0]
