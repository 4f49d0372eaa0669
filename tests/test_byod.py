"""Bring your own data and env: spaces onto the contract, Minari datasets in and out, any Gymnasium env by id."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from generalist.config import CollectConfig, EvalConfig
from generalist.datasets.minari_source import MinariEpisodes, export_to_minari
from generalist.datasets.mixture import ControlSource, Shard, build_sources
from generalist.datasets.recording import collect
from generalist.datasets.storage import DatasetError, EpisodeDataset
from generalist.envs import get_task, make, task_list
from generalist.envs.external import external_task
from generalist.envs.spaces import (
    ContractObservation,
    UnsupportedSpace,
    action_mapping,
    observation_mapping,
)
from generalist.evaluate import normalized_score
from generalist.tokenizers import TextTokenizer, TokenKind, TokenLayout

minari = pytest.importorskip("minari")
from minari.data_collector import EpisodeBuffer  # noqa: E402

HERE = Path(__file__).parent / "byod"
TEXT = TextTokenizer.default()
LAYOUT = TokenLayout(TEXT.vocab_size)
TOY = "toy_env:ToyDict-v0"


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    """An empty local Minari database, and task lookups that do not remember another test's datasets."""
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    external_task.cache_clear()
    yield root
    external_task.cache_clear()


@pytest.fixture
def toy_on_path(monkeypatch):
    """The hand-made env's module importable, as a user's package would be."""
    monkeypatch.syspath_prepend(str(HERE))
    return TOY


def _create(dataset_id, buffers, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Minari asks for authors and permalinks
        return minari.create_dataset_from_buffers(dataset_id, buffers, **kwargs)


def _toy_buffers(n_episodes=6, seed=0):
    """Episodes of the toy env, its expert steering with some noise."""
    import toy_env

    env = gym.make(TOY)
    rng = np.random.default_rng(seed)
    buffers = []
    for episode in range(n_episodes):
        observation, _ = env.reset(seed=100 + episode)
        observations, actions, rewards, terminations, truncations = [observation], [], [], [], []
        done = False
        while not done:
            action = np.clip(toy_env.expert(observation) + rng.normal(0, 0.2, 2), -2, 2).astype(np.float32)
            observation, reward, terminated, truncated, _ = env.step(action)
            observations.append(observation)
            actions.append(action)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
            done = terminated or truncated
        stacked = {key: np.stack([o[key] for o in observations]) for key in observations[0]}
        buffers.append(EpisodeBuffer(id=episode, seed=100 + episode, observations=stacked, actions=np.stack(actions),
                                     rewards=np.array(rewards), terminations=np.array(terminations),
                                     truncations=np.array(truncations), infos={}))
    env.close()
    return buffers


@pytest.fixture
def toy_dataset(minari_root, toy_on_path):
    """A local Minari dataset of 6 toy episodes, with its env and reference scores."""
    _create("toy/steer-v0", _toy_buffers(), env=gym.make(TOY).spec, ref_min_score=-120.0, ref_max_score=-10.0,
            num_episodes_average_score=2, algorithm_name="noisy expert")
    return "toy/steer-v0"


# ------------------------------------------------------------------------------------------ space mapping


def test_a_dict_of_image_vector_and_discrete_value_maps_onto_the_contract(toy_on_path):
    env = gym.make(TOY)
    mapping = observation_mapping(env.observation_space)
    assert [(f.path, f.kind) for f in mapping.fields] == [
        (("count",), "discrete"), (("image",), "image"), (("vector",), "continuous")]
    contract = mapping.contract_space()
    assert contract["image"].shape == (32, 32, 3)  # 20x24 padded to the patch size
    observation, _ = env.reset(seed=3)
    one = mapping.convert_one(observation)
    assert contract.contains(one)
    assert one["discrete"].tolist() == [0]  # the space starts at 3
    assert one["continuous"].tolist() == observation["vector"].tolist()
    assert (one["image"][:20, :24] == observation["image"]).all() and not one["image"][20:].any()


def test_gray_images_multi_discrete_and_tuples():
    space = spaces.Dict({
        "b": spaces.MultiDiscrete([3, 4], start=[1, 2]),
        "a": spaces.Tuple((spaces.Box(0, 255, (16, 16), np.uint8), spaces.MultiBinary(2))),
        "c": spaces.Box(-1, 1, (2, 2), np.float32),
    })
    mapping = observation_mapping(space)
    # Sorted keys: a (its tuple in order), b, c; discrete parts concatenate in that order.
    assert [f.path for f in mapping.fields] == [("a", 0), ("a", 1), ("b",), ("c",)]
    observation = {"a": (np.full((16, 16), 7, np.uint8), np.array([1, 0], np.int8)),
                   "b": np.array([3, 2]), "c": np.arange(4, dtype=np.float32).reshape(2, 2)}
    one = mapping.convert_one(observation)
    assert one["image"].shape == (16, 16, 3) and (one["image"] == 7).all()
    assert one["discrete"].tolist() == [1, 0, 2, 0]
    assert one["continuous"].tolist() == [0, 1, 2, 3]
    assert "a" in mapping.describe() and "-> image" in mapping.describe()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.integers(1, 5))
def test_any_float_box_becomes_its_flattened_values(shape, steps):
    space = spaces.Box(-5, 5, tuple(shape), np.float64)
    values = np.random.default_rng(0).uniform(-5, 5, (steps, *shape))
    converted = observation_mapping(space).convert(values, steps)
    assert converted["continuous"].shape == (steps, int(np.prod(shape)))
    assert np.allclose(converted["continuous"], values.reshape(steps, -1).astype(np.float32))


@pytest.mark.parametrize(("space", "match"), [
    (spaces.Graph(spaces.Box(0, 1, (2,)), None), "Graph spaces cannot be tokenized"),
    (spaces.Dict({"s": spaces.Sequence(spaces.Discrete(2))}), r"observation\['s'\]: Sequence"),
    (spaces.Dict({"x": spaces.Box(0, 255, (16, 16, 3), np.uint8), "y": spaces.Box(0, 255, (16, 16), np.uint8)}),
     "one image"),
    (spaces.Dict({"n": spaces.Discrete(5000)}), r"observation\['n'\].*5000 values"),
])
def test_untokenizable_observation_spaces_say_which_part_and_why(space, match):
    with pytest.raises(UnsupportedSpace, match=match):
        observation_mapping(space)


@pytest.mark.parametrize(("space", "match"), [
    (spaces.Box(-1, 1, (2, 2)), "must be 1-D"),
    (spaces.Box(-np.inf, np.inf, (2,)), "finite bounds"),
    (spaces.MultiDiscrete([2, 3]), "MultiDiscrete actions cannot be tokenized"),
    (spaces.Discrete(2000), "at most 1024"),
])
def test_untokenizable_action_spaces_say_why(space, match):
    with pytest.raises(UnsupportedSpace, match=match):
        action_mapping(space)


def test_actions_map_onto_the_agents_space():
    box = action_mapping(spaces.Box(np.array([-2, 0], np.float32), np.array([2, 10], np.float32)))
    assert box.to_agent(np.array([[-2, 0], [2, 10], [0, 5]])).tolist() == [[-1, -1], [1, 1], [0, 0]]
    assert action_mapping(spaces.Discrete(4, start=-1)).to_agent(np.array([-1, 2])).tolist() == [0, 3]


# ------------------------------------------------------------------------------------- any env by its id


def test_any_registered_env_is_a_task_by_id(toy_on_path, minari_root):
    task = get_task(f"gym:{TOY}")
    assert (task.action_kind, task.action_size, task.expert_name()) == ("continuous", 2, "none")
    env = make(task, seed=5)
    observation, info = env.reset()
    assert set(observation) == {"continuous", "discrete", "image"} and info["seed"] == 5
    _, reward, *_ = env.step(np.array([1.0, -1.0], np.float32))  # [-1, 1] rescaled to the env's [-2, 2]
    assert reward < 0
    env.close()
    assert task_list(f"cartpole,gym:{TOY}") == ("cartpole", f"gym:{TOY}")
    with pytest.raises(ValueError, match="no scripted expert"):
        task.expert()


def test_an_unknown_env_id_or_an_untokenizable_env_is_a_clear_error(minari_root):
    with pytest.raises(ValueError, match="gym:NoSuchEnv-v0"):
        get_task("gym:NoSuchEnv-v0")
    gym.register("Blackjack-graph-test-v0", entry_point=lambda: _GraphEnv())
    with pytest.raises(UnsupportedSpace, match="Graph"):
        get_task("gym:Blackjack-graph-test-v0")


class _GraphEnv(gym.Env):
    observation_space = spaces.Graph(spaces.Box(0, 1, (2,)), None)
    action_space = spaces.Discrete(2)


# ------------------------------------------------------------------------------------------ Minari in


def test_a_local_minari_dataset_trains_like_our_recordings(toy_dataset):
    episodes = MinariEpisodes(toy_dataset)
    assert len(episodes) == 6 and episodes.action_spec.kind == "continuous" and episodes.action_spec.size == 2
    observations, actions = episodes.read(2, 1, 5)
    raw = minari.load_dataset(toy_dataset)[2]
    assert np.array_equal(observations["continuous"], raw.observations["vector"][1:5])
    assert observations["discrete"][:, 0].tolist() == (raw.observations["count"][1:5] - 3).tolist()
    assert np.allclose(actions, raw.actions[1:5] / 2)  # [-2, 2] rescaled to [-1, 1]
    assert "observation['image']" in episodes.describe() and "rescaled to [-1, 1]" in episodes.describe()
    sources = build_sources([f"minari:{toy_dataset}"], "unused", LAYOUT, TEXT)
    sample = sources[f"minari:{toy_dataset}"].sample(np.random.default_rng(0), Shard(), 256)
    per_step = 4 + 2 + 1 + 1 + 2  # 4 patches, 2 values, 1 discrete, the separator, 2 actions
    assert len(sample) % per_step == 0 and len(sample) >= per_step


def test_a_minari_task_plays_the_datasets_env_and_normalizes_by_its_reference_scores(toy_dataset):
    task = get_task(f"minari:{toy_dataset}")
    assert task.reference_scores == (-120.0, -10.0)
    env = make(task, seed=0)
    observation, _ = env.reset()
    assert observation["image"].shape == (32, 32, 3)
    env.close()
    assert normalized_score(task, -65.0, EvalConfig()) == pytest.approx(0.5)
    assert normalized_score(task, 0.0, EvalConfig(reference_min=0.0, reference_max=10.0)) == 0.0
    with pytest.raises(ValueError, match="both"):
        normalized_score(task, 0.0, EvalConfig(reference_min=0.0))


def test_a_dataset_that_is_not_local_is_not_downloaded(minari_root):
    with pytest.raises(FileNotFoundError, match="not in the local database.*nothing is downloaded"):
        get_task("minari:D4RL/door/human-v2")
    with pytest.raises(FileNotFoundError, match="not in the local database"):
        MinariEpisodes("D4RL/door/human-v2")


def test_episodes_of_mismatched_lengths_name_the_dataset_the_episode_and_the_field(minari_root):
    n = 4
    bad = EpisodeBuffer(id=0, seed=1, observations=np.zeros((n + 1, 3), np.float32), actions=np.zeros(n, np.int64),
                        rewards=np.ones(n + 2), terminations=np.zeros(n + 2, bool), truncations=np.zeros(n + 2, bool),
                        infos={})
    _create("toy/uneven-v0", [bad], observation_space=spaces.Box(-1, 1, (3,), np.float32),
            action_space=spaces.Discrete(2))
    episodes = MinariEpisodes("toy/uneven-v0")
    with pytest.raises(DatasetError, match=r"'toy/uneven-v0', episode 0: actions has 4 rows for an episode of 6"):
        episodes.read(0, 0, 1)


def test_an_env_whose_spaces_differ_from_the_datasets_is_refused(minari_root):
    buffer = EpisodeBuffer(id=0, seed=1, observations=np.zeros((3, 3), np.float32), actions=np.zeros(2, np.int64),
                           rewards=np.ones(2), terminations=np.zeros(2, bool), truncations=np.zeros(2, bool), infos={})
    _create("toy/otherenv-v0", [buffer], env="CartPole-v1", observation_space=spaces.Box(-1, 1, (3,), np.float32),
            action_space=spaces.Discrete(2))
    with pytest.raises(ValueError, match=r"CartPole-v1: observation space Box.*\(4,\).*differs from dataset "
                                         r"toy/otherenv-v0's Box.*\(3,\)"):
        make("minari:toy/otherenv-v0")
    with pytest.raises(ValueError, match="differs from"):
        ContractObservation(gym.make("CartPole-v1"), expected=spaces.Discrete(3))


# ----------------------------------------------------------------------------------------- Minari out


@pytest.mark.parametrize("task", ["cartpole", "pendulum"])
def test_our_recording_round_trips_through_minari_to_the_same_windows(task, minari_root, tmp_path):
    data = tmp_path / "data"
    collect(CollectConfig(tasks=(task,), episodes=3, out=data, max_episode_steps=40, progress=False))
    ours = EpisodeDataset(data / task)
    exported = export_to_minari(data / task, f"generalist/{task}-v0")
    assert exported.total_episodes == 3
    theirs = MinariEpisodes(f"generalist/{task}-v0")
    assert theirs.seeds == [e.seed for e in ours.episodes]
    layout = LAYOUT
    for episode in range(3):
        length = ours.episode_length(episode)
        assert theirs.episode_length(episode) == length
        for start, stop in ((0, length), (3, 17)):
            mine, their = ours.read(episode, start, stop), theirs.read(episode, start, stop)
            assert mine[0].keys() == their[0].keys()
            assert all(np.array_equal(mine[0][key], their[0][key]) for key in mine[0])
            assert np.array_equal(mine[1], their[1]) and mine[1].dtype == their[1].dtype
            ours_tokens = ControlSource(task, ours, layout).tokenize_window(episode, start, stop)
            their_tokens = ControlSource(task, theirs, layout).tokenize_window(episode, start, stop)
            assert np.array_equal(ours_tokens.ids, their_tokens.ids)
        raw = exported[episode]
        assert raw.rewards.tolist() == ours.window(episode)["rewards"].tolist()
        assert bool(raw.terminations[-1]) == ours.episodes[episode].terminated
        assert bool(raw.truncations[-1]) != ours.episodes[episode].terminated


def test_an_export_whose_replay_differs_from_the_recording_stops_at_that_step(minari_root, tmp_path):
    data = tmp_path / "data"
    collect(CollectConfig(tasks=("cartpole",), episodes=1, out=data, max_episode_steps=30, progress=False))
    actions = next((data / "cartpole").glob("shard-*")) / "actions.npy"
    recorded = np.load(actions)
    recorded[5] = 1 - recorded[5]  # the replay now takes another action at step 5
    np.save(actions, recorded)
    with pytest.raises(DatasetError, match="differs from the recording at step 6"):
        export_to_minari(data / "cartpole", "generalist/changed-v0")


# ------------------------------------------------------------------------------------ end to end, by CLI


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "generalist.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.slow
def test_train_and_evaluate_on_a_local_minari_dataset_and_an_env_by_id(toy_dataset, tmp_path):
    env = {**os.environ, "MINARI_DATASETS_PATH": os.environ["MINARI_DATASETS_PATH"],
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    task = f"minari:{toy_dataset}"
    shown = _cli("inspect", task, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "observation['image']" in shown.stdout and "6 episodes" in shown.stdout
    run = tmp_path / "run"
    trained = _cli("train", "--weights", f"{task}=1", "--steps", "3", "--batch-size", "2", "--sequence-length", "128",
                   "--precision", "fp32", "--run-dir", str(run), "--no-progress", env=env)
    assert trained.returncode == 0, trained.stderr
    out = tmp_path / "results.json"
    evaluated = _cli("evaluate", "--checkpoint", str(run), "--tasks", f"{task},gym:{TOY}", "--episodes", "2",
                     "--prompt", "none", "--reference-min", "-120", "--reference-max", "-10", "--json", str(out),
                     env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    rows = json.loads(out.read_text())
    assert [r["task"] for r in rows] == [task, f"gym:{TOY}"]
    assert all(r["error"] is None and len(r["returns"]) == 2 and r["normalized"] is not None for r in rows)
    prompted = _cli("evaluate", "--checkpoint", str(run), "--tasks", task, "--episodes", "2", env=env)
    assert prompted.returncode == 0 and "| demo | 2 |" in prompted.stdout, prompted.stdout + prompted.stderr
    by_id = _cli("inspect", f"gym:{TOY}", env=env)
    assert by_id.returncode == 0 and "observation['count']: Discrete(13, start=3) -> discrete" in by_id.stdout
    piped = _cli("run", "--preset", "smoke", "--runs-dir", str(tmp_path / "runs"), "--name", "byod", "--weights",
                 f"{task}=1", "--data-dir", str(tmp_path / "data"), env=env)
    assert piped.returncode == 0, piped.stderr
    results = json.loads((tmp_path / "runs" / "byod" / "results.json").read_text())
    assert [row["task"] for row in results["control"]] == [task] and results["control"][0]["error"] is None


@pytest.mark.slow
def test_baselines_of_an_env_by_id_measure_random_into_the_users_file(toy_on_path, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    refused = _cli("baselines", "--tasks", f"gym:{TOY}", "--episodes", "2", env=env)
    assert refused.returncode != 0 and "--out FILE" in refused.stderr
    out = tmp_path / "baselines.json"
    measured = _cli("baselines", "--tasks", f"gym:{TOY}", "--episodes", "3", "--out", str(out), "--workers", "1",
                    env=env)
    assert measured.returncode == 0, measured.stderr
    entry = json.loads(out.read_text())["tasks"][f"gym:{TOY}"]
    assert entry["random"]["n"] == 3 and entry["expert"] is None and entry["expert_name"] == "none"


def test_text_observations_of_a_minari_dataset_become_text_tokens(minari_root):
    n = 5
    space = spaces.Dict({"note": spaces.Text(12), "x": spaces.Box(-1, 1, (1,), np.float32)})
    buffer = EpisodeBuffer(id=0, seed=1, infos={},
                           observations={"note": [f"step {t}" for t in range(n + 1)],
                                         "x": np.zeros((n + 1, 1), np.float32)},
                           actions=np.zeros(n, np.int64), rewards=np.ones(n), terminations=np.zeros(n, bool),
                           truncations=np.zeros(n, bool))
    _create("toy/text-v0", [buffer], observation_space=space, action_space=spaces.Discrete(2))
    observations, _ = MinariEpisodes("toy/text-v0").read(0, 1, 3)
    assert observations["text"].tolist() == ["step 1", "step 2"]
    source = build_sources(["minari:toy/text-v0"], "unused", LAYOUT, TEXT)["minari:toy/text-v0"]
    window = source.tokenize_window(0, 1, 3)
    texts = window.ids[window.kinds == TokenKind.TEXT]
    assert TEXT.decode(texts.tolist()).replace(" ", "") == "step1step2"


def test_inspect_shows_a_recorded_directory_and_an_env_by_id(cartpole_data, capsys, toy_on_path, minari_root):
    from generalist.cli import main

    assert main(["inspect", str(cartpole_data / "cartpole")]) == 0
    shown = capsys.readouterr().out
    assert "cartpole: 3 episodes, 180 steps" in shown and "continuous: <f4 (4,)" in shown
    assert "actions: 1 discrete of 2 values" in shown
    assert main(["inspect", f"gym:{TOY}"]) == 0
    shown = capsys.readouterr().out
    assert "observation['image']: Box(0, 255, (20, 24, 3), uint8) -> image" in shown
    assert "-> 2 continuous values, rescaled to [-1, 1]" in shown
