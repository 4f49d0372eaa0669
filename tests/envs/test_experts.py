"""Each expert beats the random policy by a wide margin on a few short seeded episodes.

The full measurement (50 episodes, no cap) is `generalist baselines`; these are cheap checks that an expert
still works: Atari episodes are cut at a few hundred steps, where the expert already leads by points.
"""

import numpy as np
import pytest

from generalist.envs import TASKS, Policy, RandomPolicy, make, run_episode

# task: (episodes, step cap or None for the task's own, the least expert - random mean return)
CASES = {
    "cartpole": (2, None, 300.0),  # 500 vs ~20
    "acrobot": (2, None, 250.0),  # ~-90 vs -500
    "mountaincar": (2, None, 50.0),  # ~-120 vs -200
    "mountaincar_continuous": (2, None, 100.0),  # ~89 vs ~-33
    "pendulum": (2, None, 500.0),  # ~-170 vs ~-1,200
    "lunarlander": (2, None, 250.0),  # ~270 vs ~-160
    "lunarlander_continuous": (2, None, 250.0),  # ~280 vs ~-180
    "pong": (1, 400, 5.0),  # in 400 steps random concedes ~8 points, the expert about none
    "breakout": (1, 400, 8.0),  # in 400 steps the expert breaks ~15 bricks, random ~1
}


def _mean_return(task: str, policy: Policy, episodes: int, cap: int | None) -> float:
    env = make(task, max_episode_steps=cap)
    return float(np.mean([run_episode(env, policy, seed).episode_return for seed in range(episodes)]))


@pytest.mark.parametrize("task", list(CASES))
def test_expert_beats_random(task: str) -> None:
    episodes, cap, margin = CASES[task]
    spec = TASKS[task]
    expert = _mean_return(task, spec.expert(), episodes, cap)
    random = _mean_return(task, RandomPolicy(spec.action_space()), episodes, cap)
    assert expert - random >= margin, f"{task}: expert {expert:.1f}, random {random:.1f}"


def test_every_task_has_a_case_and_experts_follow_the_policy_protocol() -> None:
    assert set(CASES) == set(TASKS)
    for spec in TASKS.values():
        assert isinstance(spec.expert(), Policy)


@pytest.mark.parametrize("task", ["pong", "breakout"])
def test_atari_experts_read_only_ram_from_info(task: str) -> None:
    """The expert acts on info["ram"], never on the image: a blank image does not change its action."""
    env = make(task, seed=0)
    observation, info = env.reset()
    expert = TASKS[task].expert()
    for _ in range(30):
        observation, _, _, _, info = env.step(expert.act(observation, info))
    blank = {"image": np.zeros_like(observation["image"])}
    first, second = TASKS[task].expert(), TASKS[task].expert()
    assert first.act(observation, info) == second.act(blank, info)


def test_continuous_experts_stay_in_bounds() -> None:
    for task in ("mountaincar_continuous", "pendulum", "lunarlander_continuous"):
        env, expert = make(task, seed=0), TASKS[task].expert()
        observation, info = env.reset()
        for _ in range(50):
            action = expert.act(observation, info)
            assert action.dtype == np.float32 and np.all(np.abs(action) <= 1.0)
            observation, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
