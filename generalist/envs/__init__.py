"""Environments with one observation contract, their scripted experts and their score baselines."""

from generalist.envs.baselines import baseline_entry, expert_normalized, human_normalized, load_baselines, step_cap
from generalist.envs.contract import OBSERVATION_KEYS, Observation, check_observation
from generalist.envs.policies import Action, Policy, RandomPolicy
from generalist.envs.registry import (
    TASKS,
    Task,
    control_tasks,
    evaluated_tasks,
    get_task,
    make,
    make_vector,
    task_list,
)
from generalist.envs.rollout import Actions, Actor, Episode, EpisodeEnd, rollout, run_episode

__all__ = [
    "OBSERVATION_KEYS",
    "TASKS",
    "Action",
    "Actions",
    "Actor",
    "Episode",
    "EpisodeEnd",
    "Observation",
    "Policy",
    "RandomPolicy",
    "Task",
    "baseline_entry",
    "check_observation",
    "control_tasks",
    "evaluated_tasks",
    "expert_normalized",
    "get_task",
    "human_normalized",
    "load_baselines",
    "make",
    "make_vector",
    "rollout",
    "run_episode",
    "step_cap",
    "task_list",
]
