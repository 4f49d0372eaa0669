"""Learner-driven recordings (DAgger): the agent drives, the expert labels every step; training mixes them in."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from generalist.checkpoint import save_model
from generalist.config import CollectConfig
from generalist.dagger import driven_games, learner_driver
from generalist.datasets import storage
from generalist.datasets.mixture import (
    ControlSource,
    EpisodeUnion,
    LearnerMixSource,
    build_sources,
    learner_recordings,
)
from generalist.datasets.recording import collect, collect_task
from generalist.datasets.storage import EpisodeDataset
from generalist.tokenizers import TextTokenizer, TokenKind

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py says why


class Interrupt(Exception):
    """Stands for a kill in the middle of a recording."""


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    return save_model(tiny_model, tmp_path_factory.mktemp("ckpt"), TextTokenizer.default())


def _config(out: Path, prompts: Path, **overrides: object) -> CollectConfig:
    values = {"tasks": ("cartpole",), "episodes": 4, "out": out, "shard_episodes": 1, "progress": False,
              "max_episode_steps": 30, "prompt_data": prompts}
    return CollectConfig(**{**values, **overrides})


def _record(checkpoint: Path, config: CollectConfig) -> Path:
    (directory,) = collect(config, lambda task: learner_driver(checkpoint, task, config))
    return directory


def test_the_agent_drives_and_the_expert_labels_every_step(checkpoint, cartpole_data, tmp_path):
    config = _config(tmp_path / "learner", cartpole_data)
    data = EpisodeDataset(_record(checkpoint, config))
    assert data.index["driver"]["checkpoint"] == str(Path(checkpoint).resolve()) and data.index["beta"] == 0.0
    labels, executed = [], []
    for number, info in enumerate(data):
        window = data.window(number)
        x, x_dot, theta, theta_dot = window["observations"]["continuous"].T
        # The CartPole expert's rule, on the states the agent reached:
        assert window["actions"].tolist() == (theta + 0.5 * theta_dot + 0.01 * x + 0.1 * x_dot > 0).tolist()
        shard = data.directory / data.index["shards"][info.shard]["name"]
        executed.append(np.load(shard / storage.EXECUTED)[info.offset : info.offset + info.length])
        labels.append(window["actions"])
        np.testing.assert_array_equal(data.executed_actions(number), executed[-1])
    ran, asked = np.concatenate(executed).reshape(-1), np.concatenate(labels).reshape(-1)
    assert not np.array_equal(ran, asked)  # an untrained agent drove
    games = driven_games(data)  # what the report's DAgger table says of it
    assert games["agreement"] == pytest.approx((ran == asked).mean()) and 0 < games["agreement"] < 1
    assert [games["ran"][a] for a in (0, 1)] == pytest.approx([(ran == a).mean() for a in (0, 1)])
    assert [games["asked"][a] for a in (0, 1)] == pytest.approx([(asked == a).mean() for a in (0, 1)])
    assert games["episodes"] == len(data) and games["mean_length"] == len(ran) / len(data)
    assert games["mean_return"] == pytest.approx(np.mean([info.episode_return for info in data]))
    expert = EpisodeDataset(cartpole_data / "cartpole")  # recorded by the expert: it ran what it recorded
    np.testing.assert_array_equal(expert.executed_actions(1), expert.window(1)["actions"])


def test_with_beta_one_the_expert_executes_every_step(checkpoint, cartpole_data, tmp_path):
    data = EpisodeDataset(_record(checkpoint, _config(tmp_path / "learner", cartpole_data, beta=1.0)))
    shard = data.directory / data.index["shards"][0]["name"]
    np.testing.assert_array_equal(np.load(shard / storage.EXECUTED), np.load(shard / storage.ACTIONS))
    assert driven_games(data)["agreement"] == 1.0


def test_a_killed_learner_driven_recording_resumes_without_losing_or_repeating_a_seed(
    checkpoint, cartpole_data, tmp_path
):
    config = _config(tmp_path / "learner", cartpole_data, num_envs=3)  # the agent acts on three rows at once
    seen = []

    def killed_after_two(episode, kept):
        seen.append(episode.seed)
        if len(seen) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        collect_task("cartpole", config, killed_after_two, learner_driver(checkpoint, "cartpole", config))
    assert [e.seed for e in EpisodeDataset(config.out / "cartpole", allow_incomplete=True)] == [0, 1]
    data = EpisodeDataset(_record(checkpoint, config))
    assert [e.seed for e in data] == [0, 1, 2, 3]


def test_another_checkpoint_is_another_dataset(checkpoint, cartpole_data, tmp_path, tiny_model):
    config = _config(tmp_path / "learner", cartpole_data, episodes=1)
    _record(checkpoint, config)
    other = save_model(tiny_model, tmp_path / "round-2", TextTokenizer.default())
    with pytest.raises(storage.DatasetError, match="recorded with driver="):
        _record(other, config)


def test_a_checkpoint_without_demonstrations_of_the_task_is_refused_before_recording(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="no expert recordings of 'cartpole'"):
        learner_driver(checkpoint, "cartpole", _config(tmp_path / "out", tmp_path / "nothing"))


def test_training_mixes_learner_windows_prompted_by_expert_episodes(checkpoint, cartpole_data, tmp_path, tiny_model):
    _record(checkpoint, _config(tmp_path / "learner", cartpole_data))
    layout, tokenizer = tiny_model.config.layout, TextTokenizer.default()
    sources = build_sources(["cartpole"], cartpole_data, layout, tokenizer, learner_data_dir=tmp_path / "learner",
                            learner_share=0.5)
    mixed = sources["cartpole"]
    assert isinstance(mixed, LearnerMixSource) and mixed.learner.prompts is mixed.expert
    assert isinstance(build_sources(["cartpole"], cartpole_data, layout, tokenizer)["cartpole"], ControlSource)
    # A learner window reads the actions the agent ran and predicts the expert's labels.
    recorded = EpisodeDataset(tmp_path / "learner" / "cartpole")
    window = mixed.learner.tokenize_window(0, 2, 9)
    is_action = window.kinds == TokenKind.ACTION
    ran = recorded.executed_actions(0, 2, 9)
    labels = recorded.read(0, 2, 9)[1]
    assert not np.array_equal(ran, labels)  # an untrained agent drove
    np.testing.assert_array_equal(window.ids[is_action], layout.discrete_ids(ran))
    np.testing.assert_array_equal(window.target_ids()[is_action], layout.discrete_ids(labels))
    np.testing.assert_array_equal(window.ids[~is_action], window.target_ids()[~is_action])
    assert mixed.expert.tokenize_window(0, 2, 9).targets is None  # the expert ran what it recorded
    # Kept for comparison: the window that reads the labels as its history (as before it read what ran).
    labelled = build_sources(["cartpole"], cartpole_data, layout, tokenizer, learner_data_dir=tmp_path / "learner",
                             learner_reads_executed=False)["cartpole"].learner.tokenize_window(0, 2, 9)
    np.testing.assert_array_equal(labelled.ids[is_action], layout.discrete_ids(labels))
    np.testing.assert_array_equal(labelled.ids, labelled.target_ids())


def test_training_reads_every_dagger_round_together(checkpoint, cartpole_data, tmp_path, tiny_model):
    run_dir = tmp_path / "run"
    _record(checkpoint, _config(run_dir / "dagger-1", cartpole_data, episodes=2))
    _record(checkpoint, _config(run_dir / "dagger-2", cartpole_data, episodes=3, first_seed=100))
    (run_dir / "dagger-x" / "cartpole").mkdir(parents=True)  # not a round: not read
    assert learner_recordings(run_dir, "cartpole") == [run_dir / "dagger-1" / "cartpole",
                                                       run_dir / "dagger-2" / "cartpole"]
    mixed = build_sources(["cartpole"], cartpole_data, tiny_model.config.layout, TextTokenizer.default(),
                          learner_data_dir=run_dir)["cartpole"]
    union = mixed.learner.episodes
    assert isinstance(union, EpisodeUnion) and len(union) == 5
    second = EpisodeDataset(run_dir / "dagger-2" / "cartpole")
    for local in range(3):  # episodes 2..4 of the union are the second round's 0..2
        assert union.episode_length(2 + local) == second.episode_length(local)
        observations, actions = union.read(2 + local, 0, 3)
        np.testing.assert_array_equal(actions, second.read(local, 0, 3)[1])
        np.testing.assert_array_equal(observations["continuous"], second.read(local, 0, 3)[0]["continuous"])


def test_learner_data_of_another_env_is_refused(checkpoint, cartpole_data, tmp_path, tiny_model):
    (tmp_path / "learner").mkdir()
    collect(CollectConfig(tasks=("acrobot",), episodes=1, out=tmp_path / "acrobot-data", max_episode_steps=5,
                          progress=False))
    (tmp_path / "acrobot-data" / "acrobot").rename(tmp_path / "learner" / "cartpole")
    with pytest.raises(ValueError, match="cannot train together"):
        build_sources(["cartpole"], cartpole_data, tiny_model.config.layout, TextTokenizer.default(),
                      learner_data_dir=tmp_path / "learner")


@pytest.mark.slow
def test_collect_command_with_a_policy(checkpoint, cartpole_data, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "generalist.cli", "collect", "--tasks", "cartpole", "--episodes", "2", "--out",
         str(tmp_path / "learner"), "--policy", str(checkpoint), "--prompt-data", str(cartpole_data),
         "--max-episode-steps", "20", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert len(EpisodeDataset(tmp_path / "learner" / "cartpole")) == 2
