"""Recording expert episodes to disk: what `generalist collect` runs.

Design choices:
- One dataset directory per task (`out/<task>`), in the format of `generalist.datasets.storage`.
- Episode ``i`` plays seed ``first_seed + i`` (default 0, 1, 2, ...), far from the score-baseline seeds
  (1,000,000 on), so that evaluations never replay a training episode.
- `num_envs` episodes are played at once (row i plays seeds next, next + i, next + i + n, ...) and kept in seed
  order: an episode that ends before a smaller seed's waits for it. The dataset is the same whatever the number
  of rows, and the seeds played stay a prefix, which is what resuming needs.
- Episodes are buffered and written a shard at a time (at most `shard_episodes` episodes or about
  `shard_bytes`), each shard atomically and then the index. A killed run loses at most the episodes of the
  shard in progress; a rerun resumes at the next unplayed seed, and a finished dataset is skipped.
- The optional filter keeps an episode when its expert-normalized score reaches `min_return_fraction`,
  ``return >= random + f * (expert - random)`` with the measured means of ``baselines.json``. Gato kept
  episodes of at least 80% of the expert's return; the normalized form means the same where the random
  policy scores about 0 and stays meaningful for tasks with negative returns (Acrobot, Pendulum), where
  ``0.8 * expert`` (-80 for an expert at -100) would demand more than the expert's mean and reject most of
  its episodes. The threshold is computed once, when the dataset is created, and stored in its index.
  Seeds the filter rejects are stored too, so a rerun does not play them again.
- The settings of a dataset (task, env and its settings, expert, first seed, filter, versions of the packages
  that decide the environment's behaviour) are checked on resume: mixing data from different settings in
  one directory is an error, not a silent merge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from generalist.config import CollectConfig
from generalist.datasets import storage
from generalist.datasets.storage import ArraySpec, DatasetError
from generalist.envs.baselines import BASELINES_PATH, load_baselines, package_versions
from generalist.envs.registry import TASKS, Task, get_task, make_vector
from generalist.envs.rollout import (
    Actor,
    Episode,
    EpisodeEnd,
    EpisodeRecorder,
    LabelledActor,
    ScriptedActor,
    rollout,
    seed_sequences,
)
from generalist.lock import exclusive

# Packages whose version changes what an env does: a dataset is never resumed under other versions.
ENV_PACKAGES = ("gymnasium", "ale-py", "box2d")
SETTINGS = (
    "task",
    "env_id",
    "env_kwargs",
    "max_episode_steps",
    "action_kind",
    "action_size",
    "expert_name",
    "first_seed",
    "min_return_fraction",
    "noise",
    "driver",
    "beta",
)
# Settings added after datasets were first recorded: an index without them was recorded with these values.
SETTING_DEFAULTS = {"noise": 0.0, "driver": None, "beta": 0.0}


@dataclass
class _Writer:
    """The open dataset of one task: its index in memory and the episodes not yet on disk."""

    directory: Path
    index: dict[str, Any]
    pending: list[Episode] = field(default_factory=list)
    pending_rejected: list[dict[str, Any]] = field(default_factory=list)
    pending_bytes: int = 0

    @property
    def kept(self) -> int:
        """Episodes kept, on disk or pending."""
        return len(self.index["episodes"]) + len(self.pending)

    @property
    def next_seed(self) -> int:
        """The first seed not played yet."""
        played = self.index["seeds_played"] + len(self.pending) + len(self.pending_rejected)
        return self.index["first_seed"] + played

    def add(self, episode: Episode) -> None:
        """Keep an episode; it is written with the next `flush`."""
        self._check_specs(episode)
        self.pending.append(episode)
        self.pending_bytes += sum(a.nbytes for a in (*episode.observations.values(), episode.actions))

    def reject(self, episode: Episode) -> None:
        """Remember a seed the filter dropped, so that no rerun plays it again."""
        self.pending_rejected.append(_episode_entry(episode))

    def flush(self) -> None:
        """Write pending episodes as one shard, then the index: both atomically, in that order.

        The index in memory changes only once both writes succeeded, so a failed flush can be retried.
        """
        if not (self.pending or self.pending_rejected):
            return
        index = {**self.index, "episodes": list(self.index["episodes"]), "shards": list(self.index["shards"])}
        if self.pending:
            number = len(index["shards"])
            name = f"shard-{number:05d}"
            storage.write_shard(self.directory, name, _shard_arrays(self.pending))
            offset = 0
            for episode in self.pending:
                index["episodes"].append({**_episode_entry(episode), "shard": number, "offset": offset})
                offset += episode.length
            index["shards"].append({"name": name, "steps": offset, "episodes": len(self.pending)})
        index["rejected"] = self.index["rejected"] + self.pending_rejected
        index["seeds_played"] = self.index["seeds_played"] + len(self.pending) + len(self.pending_rejected)
        storage.write_index(self.directory, index)
        self.index = index
        self.pending, self.pending_rejected, self.pending_bytes = [], [], 0

    def _check_specs(self, episode: Episode) -> None:
        observations = {key: ArraySpec.of(array).to_json() for key, array in episode.observations.items()}
        action = ArraySpec.of(episode.actions).to_json()
        if not self.index["observations"]:
            self.index["observations"], self.index["action"] = observations, action
        elif (observations, action) != (self.index["observations"], self.index["action"]):
            raise DatasetError(
                f"{self.directory / storage.INDEX}: episode of seed {episode.seed} has arrays "
                f"{observations} {action}, the dataset {self.index['observations']} {self.index['action']}"
            )


def _episode_entry(episode: Episode) -> dict[str, Any]:
    return {
        "seed": episode.seed,
        "return": episode.episode_return,
        "length": episode.length,
        "terminated": episode.terminated,
    }


def _shard_arrays(episodes: Sequence[Episode]) -> dict[str, np.ndarray]:
    lengths = [e.length for e in episodes]
    arrays = {
        storage.observation_file(key): np.concatenate([e.observations[key] for e in episodes])
        for key in sorted(episodes[0].observations)
    }
    arrays[storage.ACTIONS] = np.concatenate([e.actions for e in episodes])
    arrays[storage.REWARDS] = np.concatenate([e.rewards for e in episodes]).astype(np.float32)
    if episodes[0].executed is not None:
        arrays[storage.EXECUTED] = np.concatenate([e.executed for e in episodes])
    arrays[storage.OFFSETS] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return arrays


def dataset_settings(task: Task, config: CollectConfig, driver: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings that define a dataset; a resumed dataset must have the same. `driver` says which agent
    drove a learner-driven recording (None: the expert)."""
    return {
        "task": task.name,
        "env_id": task.env_id,
        "env_kwargs": dict(task.env_kwargs),
        "max_episode_steps": config.max_episode_steps or task.max_episode_steps,
        "action_kind": task.action_kind,
        "action_size": task.action_size,
        "expert_name": task.expert_name(),
        "first_seed": config.first_seed,
        "min_return_fraction": config.min_return_fraction,
        "noise": config.noise,
        "driver": None if driver is None else dict(driver),
        "beta": config.beta if driver is not None else 0.0,
    }


def open_writer(
    directory: Path,
    settings: dict[str, Any],
    target: int,
    threshold: float | None,
    baseline: dict[str, Any] | None = None,
) -> _Writer:
    """Create a dataset directory, or reopen one recorded with the same settings to resume it.

    A new dataset stores the filter's `threshold` (None: no filter) and the task's score `baseline` (random and
    expert returns, docs/DESIGN.md: stored with the data); a resumed one keeps its own, so that a later change of the
    baselines cannot change what one dataset kept.
    """
    versions = package_versions(ENV_PACKAGES)
    if directory.exists() and any(directory.iterdir()):
        if not (directory / storage.INDEX).exists():
            names = sorted(entry.name for entry in directory.iterdir())[:5]
            raise DatasetError(
                f"{directory}: not empty and no {storage.INDEX}, so not a dataset of ours (it holds {names}); "
                "choose an empty or new --out directory"
            )
        index = storage.read_index(directory)
        _check_same_settings(directory, index, settings, versions)
        storage.remove_leftovers(directory, index)
        storage.EpisodeDataset(directory, allow_incomplete=True)  # every listed shard whole, or an error
    else:
        directory.mkdir(parents=True, exist_ok=True)
        index = {
            "format": storage.FORMAT,
            "version": storage.VERSION,
            **settings,
            "packages": versions,
            "min_return": threshold,
            "baseline": baseline,
            "complete": False,
            "target_episodes": target,
            "seeds_played": 0,
            "observations": {},
            "action": {},
            "shards": [],
            "episodes": [],
            "rejected": [],
        }
    index["target_episodes"] = max(target, len(index["episodes"]))
    index["complete"] = len(index["episodes"]) >= target
    storage.write_index(directory, index)
    return _Writer(directory, index)


def recorded_setting(index: dict[str, Any], key: str) -> Any:
    """One of a dataset's SETTINGS as its index records it (datasets older than a setting had its default)."""
    return index.get(key, SETTING_DEFAULTS.get(key))


def _check_same_settings(
    directory: Path, index: dict[str, Any], settings: dict[str, Any], versions: dict[str, str]
) -> None:
    path = directory / storage.INDEX
    for key in SETTINGS:
        value = recorded_setting(index, key)
        if value != settings[key]:
            raise DatasetError(
                f"{path}: recorded with {key}={value!r}, this run asks {settings[key]!r}; "
                "use another --out directory or the same settings"
            )
    recorded = index.get("packages", {})
    for name in ENV_PACKAGES:
        if recorded.get(name) != versions[name]:
            raise DatasetError(
                f"{path}: recorded with {name} {recorded.get(name)}, installed is {versions[name]}; "
                "episodes from two versions would not be one dataset"
            )


def min_return(task: str, fraction: float | None, baselines: Path = BASELINES_PATH) -> float:
    """The return an episode needs to pass the filter (-inf without one)."""
    if fraction is None:
        return -math.inf
    entry = load_baselines(baselines)["tasks"].get(task)
    if entry is None:
        raise ValueError(f"{baselines}: no baseline of {task!r} for the filter; run `generalist baselines`")
    random, expert = entry["random"]["mean"], entry["expert"]["mean"]
    return random + fraction * (expert - random)


def task_baseline(task: str, baselines: Path = BASELINES_PATH) -> dict[str, Any] | None:
    """The random and expert return summaries of `task` (without the per-episode lists), or None if unmeasured."""
    if not Path(baselines).exists():
        return None
    entry = load_baselines(baselines)["tasks"].get(task)
    if entry is None:
        return None
    keep = ("mean", "std", "n")
    return {
        "random": {key: entry["random"].get(key) for key in keep},
        "expert": {key: entry["expert"].get(key) for key in keep},
        "seeds": entry.get("seeds"),
    }


@dataclass
class Driver:
    """An agent that drives a learner-driven recording, and what the dataset's index says of it."""

    actor: Actor
    description: Mapping[str, Any]  # e.g. the checkpoint and its step


def collect_task(
    task_name: str, config: CollectConfig, on_episode: Callable[[Episode, bool], None] | None = None,
    driver: Driver | None = None,
) -> Path:
    """Record `config.episodes` episodes of one task into `config.out / task_name`; resumable.

    The expert plays, or, with a `driver`, the driver acts while the expert labels every step (DAgger; the
    executed actions are stored beside the labels).
    """
    task = get_task(task_name)
    directory = Path(config.out) / task.name
    with exclusive(directory, "a recording"):
        return _collect_task(task, directory, config, on_episode, driver)


def _collect_task(
    task: Task, directory: Path, config: CollectConfig, on_episode: Callable[[Episode, bool], None] | None,
    driver: Driver | None,
) -> Path:
    settings = dataset_settings(task, config, None if driver is None else driver.description)
    if driver is not None and config.noise > 0:
        raise ValueError("a learner-driven recording already leaves the expert's states: do not add --noise")
    if config.min_return_fraction is not None and config.max_episode_steps is not None:
        raise ValueError("the return filter compares with full episodes: do not combine it with a step cap")
    if config.min_return_fraction is not None and config.noise > 0:
        raise ValueError("the return filter scores the expert: do not combine it with noise, which lowers returns")
    baselines = config.baselines or BASELINES_PATH
    threshold = min_return(task.name, config.min_return_fraction, baselines)
    baseline = task_baseline(task.name, baselines)
    writer = open_writer(
        directory, settings, config.episodes, None if math.isinf(threshold) else threshold, baseline
    )
    if writer.index["complete"]:
        return directory
    stored = writer.index.get("min_return")
    threshold = -math.inf if stored is None else float(stored)
    max_seeds = math.ceil(config.max_attempts_factor * config.episodes)

    def exhausted() -> bool:
        return writer.next_seed - config.first_seed >= max_seeds

    finished: dict[int, Episode] = {}  # ended before a smaller seed: kept once every smaller seed is

    def keep(episode: Episode, end: EpisodeEnd) -> None:
        finished[episode.seed] = episode
        while writer.next_seed in finished and writer.kept < config.episodes and not exhausted():
            episode = finished.pop(writer.next_seed)
            kept = episode.episode_return >= threshold
            writer.add(episode) if kept else writer.reject(episode)
            if len(writer.pending) >= config.shard_episodes or writer.pending_bytes >= config.shard_bytes:
                writer.flush()
            if on_episode is not None:
                on_episode(episode, kept)

    n = config.num_envs
    env = make_vector(task, n, autoreset_mode=gym.vector.AutoresetMode.DISABLED,
                      max_episode_steps=settings["max_episode_steps"])
    try:
        if writer.kept < config.episodes and not exhausted():
            experts = [task.expert() for _ in range(n)]
            actor: Actor = ScriptedActor(experts, env.single_action_space, config.noise)
            if driver is not None:
                actor = LabelledActor(driver.actor, actor, config.beta)
            recorder = EpisodeRecorder(n, keep, executed=driver is not None)
            rollout(env, actor, seed_sequences(writer.next_seed, n),
                    until=lambda: writer.kept >= config.episodes or exhausted(),
                    on_step=recorder.on_step, on_end=recorder.on_end)
        if writer.kept < config.episodes:
            writer.flush()
            raise DatasetError(
                f"{directory / storage.INDEX}: the filter kept {writer.kept} of {max_seeds} episodes played, "
                f"fewer than {config.episodes}; lower --min-return-fraction or improve the expert"
            )
        writer.index["complete"] = True
    finally:
        # Whole episodes already played are kept even when interrupted (Ctrl-C, an error in the env).
        writer.flush()
        env.close()
    storage.write_index(directory, writer.index)
    return directory


def check_collect_config(config: CollectConfig) -> None:
    """Refuse settings that would record nothing or record something else than asked."""
    if config.episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {config.episodes}")
    if config.max_episode_steps is not None and config.max_episode_steps < 1:
        raise ValueError(f"--max-episode-steps must be at least 1 (or none for the task's own cap), got "
                         f"{config.max_episode_steps}")
    if config.shard_episodes < 1 or config.shard_bytes < 1 or config.max_attempts_factor <= 0:
        raise ValueError("--shard-episodes, --shard-bytes and --max-attempts-factor must be positive")
    if not (0.0 <= config.noise <= 1.0 and 0.0 <= config.beta <= 1.0):
        raise ValueError(f"--noise and --beta are probabilities in [0, 1], got {config.noise} and {config.beta}")
    if config.first_seed < 0:
        raise ValueError(f"--first-seed must not be negative, got {config.first_seed}")
    if config.num_envs < 1:
        raise ValueError(f"--num-envs must be at least 1, got {config.num_envs}")


def collect(config: CollectConfig, driver: Callable[[str], Driver] | None = None) -> list[Path]:
    """Record every task of `config`, with one progress bar per task; returns the dataset directories.

    `driver(task)` gives the agent that drives each task's learner-driven recording (None: the experts play).
    """
    unknown = [name for name in config.tasks if name not in TASKS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known: {', '.join(TASKS)}")
    check_collect_config(config)
    directories = []
    for name in config.tasks:
        done = episodes_on_disk(Path(config.out) / name)
        with tqdm(
            total=config.episodes, initial=min(done, config.episodes), desc=name, unit="episode",
            disable=not config.progress,
        ) as bar:

            def advance(episode: Episode, kept: bool, bar: Any = bar) -> None:
                bar.update(int(kept))
                bar.set_postfix(ret=f"{episode.episode_return:.1f}", steps=episode.length)

            directories.append(collect_task(name, config, advance, None if driver is None else driver(name)))
    return directories


def episodes_on_disk(directory: Path) -> int:
    """Episodes recorded in a dataset directory; 0 if it holds no dataset."""
    try:
        return len(storage.read_index(directory)["episodes"])
    except DatasetError:
        return 0
