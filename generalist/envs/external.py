"""Tasks from outside the registry: any Gymnasium env id, and the env of a local Minari dataset.

Names (where a registered task's name goes: `--tasks`, `--weights`):
- ``gym:<env id>``: an env registered in the user's Python environment (import its package first, or give it as
  ``gym:<module>:<env id>``, which Gymnasium imports for you). Its observations and actions are mapped by
  `generalist.envs.spaces`.
- ``minari:<dataset id>``: a Minari dataset in the local database (``MINARI_DATASETS_PATH``, default
  ``~/.minari/datasets``); its episodes are training data (`generalist.datasets.minari_source`), its recorded env
  spec the env it is evaluated in, and its ``ref_min_score``/``ref_max_score`` the scores that normalize to 0
  and 1. Nothing is ever downloaded: a dataset that is not local is an error that says so.

Neither kind has a scripted expert: recording them with `generalist collect` or labelling DAgger rounds is an
error naming the task.
"""

from __future__ import annotations

from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import gymnasium as gym

from generalist.envs.spaces import ContractObservation, action_mapping, observation_mapping
from generalist.envs.task import Task

GYM_PREFIX, MINARI_PREFIX = "gym:", "minari:"
EXTERNAL_PREFIXES = (GYM_PREFIX, MINARI_PREFIX)
"""Task names outside the registry: a Gymnasium env id, a local Minari dataset."""
DEFAULT_STEP_CAP = 1000
"""The step cap of an env registered without one."""


def is_external(name: str) -> bool:
    """Whether `name` names a task outside the registry (a Gymnasium env id or a Minari dataset)."""
    return name.startswith(EXTERNAL_PREFIXES)


def no_expert(task: str) -> Any:
    """Stands for the expert of a task that has none: calling it is an error naming the task."""
    raise ValueError(f"{task} has no scripted expert: it cannot be recorded by `generalist collect`, labelled in "
                     "DAgger rounds or diagnosed against an expert; train on its recorded episodes instead")


def local_minari_dataset(dataset_id: str) -> Any:
    """The Minari dataset `dataset_id` from the local database; an error (no download) if it is not there."""
    import minari  # imported here: only Minari tasks need it (and its storage backend)
    from minari.storage.datasets_root_dir import get_dataset_path

    where = Path(get_dataset_path(dataset_id))
    if not (where / "data").is_dir():
        raise FileNotFoundError(f"Minari dataset {dataset_id!r} is not in the local database (no {where}; the "
                                "database is MINARI_DATASETS_PATH); nothing is downloaded: create or copy it there")
    return minari.load_dataset(dataset_id)


def _step_cap(spec: gym.envs.registration.EnvSpec | None) -> int:
    return spec.max_episode_steps if spec is not None and spec.max_episode_steps else DEFAULT_STEP_CAP


@lru_cache(maxsize=64)
def external_task(name: str) -> Task:
    """The `Task` of a ``gym:`` or ``minari:`` name (see the module's notes); built once per name."""
    if name.startswith(GYM_PREFIX):
        env_id = name[len(GYM_PREFIX):]
        try:
            env = gym.make(env_id)
        except gym.error.Error as error:
            raise ValueError(f"{name}: {error} (import the package that registers it, or write "
                             f"gym:<module>:{env_id})") from error
        try:
            observation_mapping(env.observation_space)  # untokenizable spaces fail here, before any run
            actions = action_mapping(env.action_space)
            spec = env.spec
        finally:
            env.close()
        return Task(name, env_id, ContractObservation, actions.kind, actions.size, partial(no_expert, name),
                    _step_cap(spec), human_scores=None)
    if name.startswith(MINARI_PREFIX):
        dataset = local_minari_dataset(name[len(MINARI_PREFIX):])
        observation_mapping(dataset.observation_space)
        actions = action_mapping(dataset.action_space)
        env_spec = dataset.env_spec
        metadata = dataset.storage.metadata
        scores = (metadata.get("ref_min_score"), metadata.get("ref_max_score"))
        wrapper = partial(ContractObservation, expected=dataset.observation_space, name=f"dataset {dataset.id}")
        return Task(
            name, env_spec.id if env_spec is not None else "", wrapper, actions.kind, actions.size,
            partial(no_expert, name), _step_cap(env_spec), env_spec=env_spec,
            expected_action_space=dataset.action_space,
            reference_scores=None if None in scores else (float(scores[0]), float(scores[1])),
        )
    raise KeyError(f"{name!r} is neither gym:<env id> nor minari:<dataset id>")
