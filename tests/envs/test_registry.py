"""Every task: check_env, the observation contract, seeded determinism, terminated vs truncated, seeds."""

import os
import warnings
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from generalist.envs import TASKS, RandomPolicy, check_observation, make, make_vector, run_episode, task_list
from generalist.envs.contract import DiscreteObservation, SeedEveryReset, TruncateWithoutReward
from generalist.envs.rollout import ScriptedActor, rollout, seed_sequences, sub_env_view

ATARI = {"pong", "breakout"}
# Warnings check_env raises about things that are Gymnasium's own choices, not ours.
EXPECTED_WARNINGS = ("different from the unwrapped", "is -infinity", "is infinity")


@pytest.mark.parametrize("task", list(TASKS))
def test_check_env_passes_without_unexpected_warnings(task: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # the render check opens "human" windows
    env = make(task, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # The ALE "human" render check costs ~8 s a game and tests ALE, not our wrapper.
        check_env(env, skip_render_check=task in ATARI)
    unexpected = [str(w.message) for w in caught if not any(e in str(w.message) for e in EXPECTED_WARNINGS)]
    assert not unexpected


@pytest.mark.parametrize("task", list(TASKS))
def test_observations_follow_the_contract(task: str) -> None:
    env = make(task, seed=1)
    spec = TASKS[task]
    assert env.action_space == spec.action_space()
    policy = RandomPolicy(env.action_space)
    policy.reset(1)
    observation, info = env.reset()
    for _ in range(20):
        check_observation(observation)
        assert observation in env.observation_space
        assert set(observation) == set(env.observation_space.spaces)
        observation, _, terminated, truncated, info = env.step(policy.act(observation, info))
        if terminated or truncated:
            observation, info = env.reset()
    expected_key = "image" if task in ATARI else "continuous"
    assert set(observation) == {expected_key}


@pytest.mark.parametrize("task", list(TASKS))
def test_same_seed_same_episode_start(task: str) -> None:
    """Same seed: the same observations and rewards for 60 random steps; another seed: a different start."""

    def trajectory(seed: int) -> tuple[list[np.ndarray], list[float]]:
        env, policy = make(task), RandomPolicy(TASKS[task].action_space())
        policy.reset(seed)
        observation, info = env.reset(seed=seed)
        frames, rewards = [next(iter(observation.values()))], []
        for _ in range(60):
            observation, reward, terminated, truncated, info = env.step(policy.act(observation, info))
            frames.append(next(iter(observation.values())))
            rewards.append(float(reward))
            if terminated or truncated:
                break
        return frames, rewards

    first, again, other = trajectory(5), trajectory(5), trajectory(6)
    assert len(first[0]) == len(again[0])
    assert all(np.array_equal(a, b) for a, b in zip(first[0], again[0], strict=True))
    assert first[1] == again[1]
    # Atari resets are identical whatever the seed; the seed shows in sticky actions and in the random policy.
    differs = len(first[0]) != len(other[0]) or any(
        not np.array_equal(a, b) for a, b in zip(first[0], other[0], strict=False)
    )
    assert differs


def test_terminated_and_truncated_kept_apart() -> None:
    env = make("cartpole", seed=0)
    expert, random = TASKS["cartpole"].expert(), RandomPolicy(env.action_space)
    balanced = run_episode(env, expert, seed=0)
    assert (balanced.length, balanced.terminated) == (500, False)  # the step cap truncates
    fallen = run_episode(env, random, seed=0)
    assert fallen.length < 500 and fallen.terminated


def test_unseeded_resets_continue_the_seed_sequence() -> None:
    env = make("cartpole", seed=10)
    seeds = [env.reset()[1]["seed"] for _ in range(3)]
    assert seeds == [10, 11, 12]
    assert env.reset(seed=40)[1]["seed"] == 40 and env.reset()[1]["seed"] == 41
    fresh = make("cartpole")  # no seed given: one is drawn, and still reported
    assert isinstance(fresh.reset()[1]["seed"], int)


def test_vector_env_plays_distinct_seeds_like_single_envs() -> None:
    """Sub-env i plays seeds s+i, s+i+n, ...; each episode equals the single env's episode of that seed."""
    n = 3
    envs = make_vector("cartpole", n, seed=100)
    observations, infos = envs.reset()
    assert infos["seed"].tolist() == [100, 101, 102]
    single = make("cartpole")
    starts = {seed: single.reset(seed=seed)[0]["continuous"] for seed in range(100, 200)}
    for i in range(n):
        np.testing.assert_array_equal(observations["continuous"][i], starts[100 + i])
    seen = set(infos["seed"].tolist())
    actions = np.zeros(n, np.int64)  # always push left: every episode falls within ~10 steps
    for _ in range(40):
        observations, _, _, _, infos = envs.step(actions)
        if "seed" in infos:  # NEXT_STEP autoreset: the reset's info arrives the step after the end
            for i in np.flatnonzero(infos["_seed"]):
                seed = int(infos["seed"][i])
                assert seed % n == (100 + i) % n and seed not in seen
                np.testing.assert_array_equal(observations["continuous"][i], starts[seed])
                seen.add(seed)
    assert {103, 104, 105} <= seen


def test_continuous_actions_rescaled_to_the_env_bounds() -> None:
    env = make("pendulum", seed=0)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    env.reset()
    env.step(np.array([1.0], np.float32))
    assert env.unwrapped.last_u == pytest.approx(2.0)  # Pendulum's max torque
    env.step(np.array([-0.5], np.float32))
    assert env.unwrapped.last_u == pytest.approx(-1.0)


def test_discrete_observations_become_int64_arrays() -> None:
    env = SeedEveryReset(DiscreteObservation(gym.make("FrozenLake-v1")), seed=0)
    observation, _ = env.reset()
    check_observation(observation)
    assert observation["discrete"].dtype == np.int64 and observation["discrete"].shape == (1,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=True)


@pytest.mark.parametrize(
    "observation, problem",
    [
        ({"pixels": np.zeros(3, np.float32)}, "unknown observation keys"),
        ({"image": np.zeros((80, 72, 3), np.uint8)}, "multiples of 16"),
        ({"image": np.zeros((80, 80, 3), np.float32)}, "uint8"),
        ({"continuous": np.zeros(3, np.float64)}, "float32"),
        ({"continuous": np.array([np.nan], np.float32)}, "NaN"),
        ({"discrete": np.array([1024])}, "0..1023"),
        ({"text": 3}, "str"),
    ],
)
def test_check_observation_names_the_problem(observation: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_observation(observation)


def test_task_list_parses_and_rejects() -> None:
    assert task_list("cartpole, pong") == ("cartpole", "pong")
    assert task_list("all") == tuple(TASKS)
    with pytest.raises(ValueError, match="unknown tasks"):
        task_list("cartpole,chess")


def test_render_mode_passes_through() -> None:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env = make("pong", seed=0, render_mode="rgb_array")
    env.reset()
    assert env.render().shape == (210, 160, 3)


def test_sub_env_view_gives_each_expert_its_own_ram() -> None:
    envs = make_vector("pong", 2, seed=0)
    observations, infos = envs.reset()
    for _ in range(3):
        observations, _, _, _, infos = envs.step(np.array([2, 3]))
    for i in range(2):
        observation, info = sub_env_view(observations, infos, i)
        np.testing.assert_array_equal(observation["image"], observations["image"][i])
        np.testing.assert_array_equal(info["ram"], infos["ram"][i])
        assert info["ram"].shape == (128,) and "_ram" not in info
    assert not np.array_equal(infos["ram"][0], infos["ram"][1])  # paddles moved opposite ways


class _Paying(gym.Env):
    """Pays 1 on the listed steps (counted from 1), 0 otherwise, and never ends by itself."""

    observation_space = gym.spaces.Discrete(1)
    action_space = gym.spaces.Discrete(1)

    def __init__(self, paying_steps):
        self.paying_steps, self.t = set(paying_steps), 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return 0, {}

    def step(self, action):
        self.t += 1
        return 0, float(self.t in self.paying_steps), False, False, {}


def test_an_episode_without_reward_for_too_long_is_truncated():
    env = TruncateWithoutReward(_Paying({3, 6}), steps=4)
    env.reset()
    steps = [env.step(0) for _ in range(10)]
    truncated = [step[3] for step in steps]
    assert truncated.index(True) == 9  # the 4th quiet step after the reward at step 6 is step 10
    assert [step[4]["stalled"] for step in steps] == truncated
    env.reset()  # the count starts again
    assert not any(env.step(0)[3] for _ in range(2))
    with pytest.raises(ValueError, match="positive"):
        TruncateWithoutReward(_Paying(()), steps=0)


def test_breakout_ends_a_game_whose_ball_is_never_served():
    env = make("breakout", seed=0)
    env.reset()
    ended = []
    for _ in range(1100):  # NOOP forever: the ball is never served, no brick is ever hit
        *_, terminated, truncated, info = env.step(0)
        ended.append(terminated or truncated)
        if ended[-1]:
            break
    assert truncated and len(ended) == 1000 and info["steps_without_reward"] == 1000 and info["stalled"]


def _capped(paying_steps):
    as_dict = gym.wrappers.TransformObservation(  # the rollout loop reads observations as dicts
        _Paying(paying_steps), lambda o: {"x": np.array([o])}, gym.spaces.Dict({"x": gym.spaces.MultiDiscrete([1])}))
    return TruncateWithoutReward(gym.wrappers.TimeLimit(as_dict, 5), steps=3)


def test_the_rollout_tells_stalled_episodes_from_the_others():
    env = gym.vector.SyncVectorEnv(
        [lambda: _capped({2}),  # stalls at step 5 (three steps without reward)
         lambda: _capped({2, 4})],  # the step cap ends it at step 5
        autoreset_mode=gym.vector.AutoresetMode.DISABLED,
    )
    ends = rollout(env, ScriptedActor([RandomPolicy(env.single_action_space)] * 2, env.single_action_space),
                   seed_sequences(0, 2), quotas=[1, 1])
    assert sorted((end.row, end.length, end.terminated, end.stalled) for end in ends) == [
        (0, 5, False, True), (1, 5, False, False)]


@pytest.mark.parametrize("task", sorted(ATARI))
def test_atari_action_names_are_the_games_own(task: str) -> None:
    env = make(task, seed=0)
    meanings = env.unwrapped.get_action_meanings()
    env.close()
    # Pong's paddle moves up on ALE's RIGHT and down on its LEFT; the table shows what the screen shows.
    on_screen = {"RIGHT": "UP", "LEFT": "DOWN", "RIGHTFIRE": "UPFIRE", "LEFTFIRE": "DOWNFIRE"} if task == "pong" else {}
    assert TASKS[task].action_names == tuple(on_screen.get(m, m) for m in meanings)


def test_every_discrete_task_names_each_action_and_a_wrong_count_is_refused() -> None:
    for task in TASKS.values():
        if task.action_kind == "discrete":
            assert len(task.action_names) == task.action_size
    cartpole = TASKS["cartpole"]
    with pytest.raises(ValueError, match="name each of the 2 discrete actions"):
        replace(cartpole, action_names=("LEFT",))
    with pytest.raises(ValueError, match="continuous"):
        replace(TASKS["pendulum"], action_names=("PUSH",))
