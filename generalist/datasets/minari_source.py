"""Minari datasets in and out: a local dataset as training data, and our recordings exported to Minari.

In: `MinariEpisodes` reads a local Minari dataset (the task ``minari:<dataset id>``) as the mixture reads our own
recordings (`EpisodeSource`): windows of episodes, their observations mapped onto the contract by
`generalist.envs.spaces` and their actions onto the agent's. Minari keeps N + 1 observations for N actions (the
last one is where the episode ended); the window of step t reads observation t and action t, so the last is left
out, as our recordings never store it. Episodes are read from Minari's storage when a window needs them and the
last `max_cached` stay in memory.

Out: `export_to_minari` writes one of our recorded datasets as a Minari dataset, lossless: observations in the
contract's Dict space, actions in the agent's space, rewards, terminations, truncations and each episode's seed.
Our recordings do not store the observation an episode ends on, so every episode is replayed in its env from
its seed with the actions that were executed; the replay must reproduce every recorded observation and reward,
or the export stops naming the episode and the step. Images are stored raw (Minari's JPEG default is lossy).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from generalist.datasets.storage import DatasetError, EpisodeDataset
from generalist.envs.external import MINARI_PREFIX, local_minari_dataset
from generalist.envs.registry import get_task, make
from generalist.envs.spaces import action_mapping, observation_mapping
from generalist.tokenizers import ActionSpec


class MinariEpisodes:
    """The episodes of a local Minari dataset, read by window in the contract's form (an `EpisodeSource`)."""

    def __init__(self, dataset_id: str, max_cached: int = 64) -> None:
        self.dataset_id = dataset_id
        self.dataset = local_minari_dataset(dataset_id)
        self.observations = observation_mapping(self.dataset.observation_space)
        self.actions = action_mapping(self.dataset.action_space)
        metadata = list(self.dataset.storage.get_episode_metadata(self.dataset.episode_indices))
        self.episode_ids = [int(entry["id"]) for entry in metadata]
        self.lengths = [int(entry["total_steps"]) for entry in metadata]
        self.seeds = [entry.get("seed") for entry in metadata]
        self._max_cached = max_cached
        self._cache: OrderedDict[int, tuple[dict[str, np.ndarray], np.ndarray]] = OrderedDict()

    @property
    def task(self) -> str:
        """The task name of this dataset."""
        return MINARI_PREFIX + self.dataset_id

    @property
    def action_spec(self) -> ActionSpec:
        """How this dataset's actions become tokens."""
        if self.actions.kind == "discrete":
            return ActionSpec("discrete", 1, self.actions.size)
        return ActionSpec("continuous", self.actions.size)

    def __len__(self) -> int:
        return len(self.episode_ids)

    def episode_length(self, episode: int) -> int:
        """Timesteps (actions) of one episode."""
        return self.lengths[episode]

    def read(self, episode: int, start: int, stop: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Observations by contract key and the agent's actions of steps [start, stop) of one episode."""
        if not 0 <= start <= stop <= self.lengths[episode]:
            raise IndexError(f"window [{start}, {stop}) outside episode {episode} of length {self.lengths[episode]}")
        observations, actions = self._episode(episode)
        return {key: value[start:stop] for key, value in observations.items()}, actions[start:stop]

    def _episode(self, episode: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        if episode in self._cache:
            self._cache.move_to_end(episode)
            return self._cache[episode]
        (data,) = self.dataset.storage.get_episodes([self.episode_ids[episode]])
        length = self.lengths[episode]
        where = f"Minari dataset {self.dataset_id!r}, episode {self.episode_ids[episode]}"
        for name in ("actions", "rewards", "terminations", "truncations"):
            rows = _rows(data[name])
            if rows != length:
                raise DatasetError(f"{where}: {name} has {rows} rows for an episode of {length} steps")
        rows = _rows(data["observations"])
        if rows != length + 1:
            raise DatasetError(f"{where}: observations has {rows} rows; an episode of {length} steps needs "
                               f"{length + 1} (the first and the last included)")
        try:
            observations = self.observations.convert(_drop_last(data["observations"]), length)
        except ValueError as error:
            raise DatasetError(f"{where}: {error}") from error
        converted = (observations, self.actions.to_agent(data["actions"]))
        self._cache[episode] = converted
        if len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
        return converted

    def describe(self) -> str:
        """What a user checks before training: the spaces, how they map, and the episodes."""
        spec = self.action_spec
        steps = sum(self.lengths)
        return "\n".join([
            f"{self.task}: {len(self)} episodes, {steps} steps (Minari dataset at {self.dataset.storage.data_path})",
            f"env: {self.dataset.env_spec.id if self.dataset.env_spec is not None else 'none recorded'}",
            "observations:",
            *(f"  {line}" for line in self.observations.describe().splitlines()),
            f"actions: {self.dataset.action_space} -> {spec.size} {spec.kind} slot(s)"
            + (f" of {spec.n} values" if spec.kind == "discrete" else ", rescaled to [-1, 1]"),
        ])


def _rows(value: Any) -> int:
    """Rows (the first axis) of a stored array, or of every leaf of a dict or tuple of them (-1 if they differ)."""
    if isinstance(value, Mapping):
        counts = {_rows(v) for v in value.values()}
        return counts.pop() if len(counts) == 1 else -1
    if isinstance(value, tuple):
        counts = {_rows(v) for v in value}
        return counts.pop() if len(counts) == 1 else -1
    return len(value)


def _drop_last(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _drop_last(v) for key, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_drop_last(v) for v in value)
    return value[:-1]


# ---------------------------------------------------------------------------------------------------- export


def _same(recorded: np.ndarray, replayed: np.ndarray) -> bool:
    return recorded.shape == replayed.shape and bool(np.array_equal(recorded, replayed))


def replay_episode(dataset: EpisodeDataset, episode: int, env: Any) -> dict[str, Any]:
    """One recorded episode with the observation it ended on, replayed from its seed; an error naming the step
    where the replay differs from the recording."""
    info = dataset.episodes[episode]
    window = dataset.window(episode)
    recorded, actions = window["observations"], dataset.executed_actions(episode)
    where = f"{dataset.directory}, episode {episode} (seed {info.seed})"
    observation, _ = env.reset(seed=info.seed)
    final = None
    for t in range(info.length):
        for key, values in recorded.items():
            if not _same(values[t], np.asarray(observation[key])):
                raise DatasetError(f"{where}: the replay's observation {key!r} differs from the recording at step "
                                   f"{t}; the env is not the one recorded (package versions?)")
        action = actions[t] if actions.ndim > 1 else int(actions[t])
        observation, reward, terminated, truncated, _ = env.step(action)
        if np.float32(reward) != window["rewards"][t]:
            raise DatasetError(f"{where}: the replay's reward {reward} differs from the recorded "
                               f"{window['rewards'][t]} at step {t}")
        if (terminated or truncated) != (t == info.length - 1):
            raise DatasetError(f"{where}: the replay ends at step {t}, the recording after {info.length} steps")
        if t == info.length - 1:
            if bool(terminated) != info.terminated:
                raise DatasetError(f"{where}: the replay's last step has terminated={terminated}, the recording "
                                   f"{info.terminated}")
            final = observation
    terminations = np.zeros(info.length, bool)
    terminations[-1] = info.terminated
    with_final = {key: np.concatenate([values, np.asarray(final[key])[None]]) for key, values in recorded.items()}
    return {
        "seed": info.seed,
        "observations": with_final,
        "actions": window["actions"],
        "rewards": window["rewards"].astype(np.float64),
        "terminations": terminations,
        "truncations": ~terminations,
    }


def export_to_minari(
    directory: str | Path, dataset_id: str, progress: Callable[[int], None] | None = None
) -> Any:
    """Write our recorded dataset at `directory` as the local Minari dataset `dataset_id`; returns it."""
    import minari  # imported here: only the export and Minari tasks need it
    from minari.data_collector import EpisodeBuffer

    dataset = EpisodeDataset(directory)
    task = get_task(dataset.task)
    env = make(task, max_episode_steps=dataset.index.get("max_episode_steps"))
    buffers = []
    try:
        for episode in range(len(dataset)):
            replayed = replay_episode(dataset, episode, env)
            buffers.append(EpisodeBuffer(id=episode, infos={}, **replayed))
            if progress is not None:
                progress(episode)
        observation_space = env.observation_space
    finally:
        env.close()
    with warnings.catch_warnings():
        # Minari asks for an author, a permalink and an env spec; the description says where the data came from,
        # and the contract's observations are not those of the raw env, so no env spec is recorded.
        warnings.filterwarnings("ignore", message=r".*(is set to None|env_spec is None)", category=UserWarning)
        return minari.create_dataset_from_buffers(
            dataset_id, buffers, observation_space=observation_space, action_space=task.action_space(),
            algorithm_name=f"generalist expert {task.expert_name()}",
            description=(f"Episodes of the generalist task {task.name} ({task.env_id}, settings "
                         f"{dict(task.env_kwargs)}), recorded by `generalist collect`: observations in the "
                         "generalist's observation contract, actions in the agent's space (continuous ones rescaled "
                         "to [-1, 1])."),
            jpeg_encoding=False,
        )
