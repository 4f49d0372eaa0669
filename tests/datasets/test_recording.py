"""Recording: what is written is what was played; kills and reruns lose and duplicate nothing; damage is named."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from generalist.datasets import recording, storage
from generalist.datasets.recording import CollectConfig, collect, collect_task
from generalist.datasets.storage import DatasetError, EpisodeDataset
from generalist.envs import TASKS, get_task, make, run_episode


def _config(out: Path, **overrides: object) -> CollectConfig:
    defaults = {"tasks": ("cartpole",), "episodes": 6, "out": out, "shard_episodes": 2, "progress": False}
    return CollectConfig(**{**defaults, **overrides})


def _contents(directory: Path) -> list[tuple[int, float, bytes, bytes, bytes]]:
    """Every episode as (seed, return, observation bytes, action bytes, reward bytes)."""
    data = EpisodeDataset(directory)
    rows = []
    for number, info in enumerate(data):
        window = data.window(number)
        rows.append(
            (
                info.seed,
                info.episode_return,
                b"".join(a.tobytes() for _, a in sorted(window["observations"].items())),
                window["actions"].tobytes(),
                window["rewards"].tobytes(),
            )
        )
    return rows


class Interrupt(Exception):
    """Stands for a kill in the middle of a collection."""


def _interrupt_after(episodes: int):
    seen = []

    def on_episode(episode, kept):
        seen.append(episode.seed)
        if len(seen) == episodes:
            raise Interrupt

    return on_episode


def test_recorded_episodes_replay_exactly(tmp_path: Path) -> None:
    """Each stored episode is the one its seed plays: observations, actions and rewards, in order."""
    directory = collect_task("acrobot", _config(tmp_path, tasks=("acrobot",), episodes=3, max_episode_steps=60))
    data = EpisodeDataset(directory)
    assert [e.seed for e in data] == [0, 1, 2] and data.index["complete"]
    assert data.index["baseline"]["expert"]["n"] >= 50  # the score baselines travel with the data
    env, expert = make("acrobot", max_episode_steps=60), TASKS["acrobot"].expert()
    for number, info in enumerate(data):
        replay = run_episode(env, expert, info.seed, record=True)
        window = data.window(number)
        np.testing.assert_array_equal(window["observations"]["continuous"], replay.observations["continuous"])
        np.testing.assert_array_equal(window["actions"], replay.actions)
        np.testing.assert_array_equal(window["rewards"], replay.rewards)
        assert info.episode_return == pytest.approx(replay.episode_return)
        assert (info.length, info.terminated) == (replay.length, replay.terminated)


def test_windows_are_memory_mapped_slices(tmp_path: Path) -> None:
    directory = collect_task("cartpole", _config(tmp_path, episodes=4))
    data = EpisodeDataset(directory)
    assert len(data.index["shards"]) == 2  # shard_episodes=2
    shard = data._shard(1)
    assert isinstance(shard.observations["continuous"], np.memmap)  # never loaded whole
    whole = data.window(3)
    part = data.window(3, 100, 110)
    np.testing.assert_array_equal(part["observations"]["continuous"], whole["observations"]["continuous"][100:110])
    np.testing.assert_array_equal(part["actions"], whole["actions"][100:110])
    _, actions = data.read(3, 100, 110)  # the mixture's EpisodeSource protocol
    np.testing.assert_array_equal(actions, part["actions"])
    assert data.episode_length(3) == 500 and data.action_spec.n == 2
    with pytest.raises(IndexError):
        data.window(3, 400, 501)


def test_interrupted_collection_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    reference = _contents(collect_task("cartpole", _config(tmp_path / "reference")))
    config = _config(tmp_path / "interrupted")
    with pytest.raises(Interrupt):
        collect_task("cartpole", config, _interrupt_after(3))
    with pytest.raises(DatasetError, match="incomplete"):
        EpisodeDataset(config.out / "cartpole")
    partial = EpisodeDataset(config.out / "cartpole", allow_incomplete=True)
    assert [e.seed for e in partial] == [0, 1, 2]  # whole episodes played before the kill are kept
    collect_task("cartpole", config)
    assert _contents(config.out / "cartpole") == reference


def test_episodes_played_at_once_are_kept_in_seed_order_and_resume_as_one_at_a_time(tmp_path: Path) -> None:
    # Acrobot's expert episodes differ in length, so rows finish out of seed order.
    settings = {"tasks": ("acrobot",), "episodes": 7, "max_episode_steps": 200, "shard_episodes": 3}
    reference = _contents(collect_task("acrobot", _config(tmp_path / "reference", **settings)))
    ended = []
    batched = _config(tmp_path / "batched", num_envs=3, **settings)
    with pytest.raises(Interrupt):
        collect_task("acrobot", batched, _interrupt_after(4))
    partial = EpisodeDataset(batched.out / "acrobot", allow_incomplete=True)
    assert [e.seed for e in partial] == [0, 1, 2, 3]  # a prefix of the seeds, whatever finished first
    collect_task("acrobot", batched, lambda episode, kept: ended.append(episode.seed))
    assert ended == [4, 5, 6]
    assert _contents(batched.out / "acrobot") == reference


def test_crash_between_shard_and_index_leaves_no_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard moved into place but never listed (killed before the index write) is removed, then redone."""
    reference = _contents(collect_task("cartpole", _config(tmp_path / "reference")))
    config = _config(tmp_path / "crashed")
    real_write_index = storage.write_index
    calls = []

    def dies_on_third_write(directory, index):
        calls.append(1)
        if len(calls) >= 3:  # 1: the new empty index, 2: shard 0, 3: shard 1; a dead process writes no more
            raise Interrupt
        real_write_index(directory, index)

    monkeypatch.setattr(storage, "write_index", dies_on_third_write)
    with pytest.raises(Interrupt):
        collect_task("cartpole", config)
    monkeypatch.setattr(storage, "write_index", real_write_index)
    directory = config.out / "cartpole"
    assert (directory / "shard-00001").is_dir()  # on disk, but not in the index
    assert len(EpisodeDataset(directory, allow_incomplete=True)) == 2
    (directory / ".tmp-shard-00002-123").mkdir()  # a half-written shard of another killed run
    collect_task("cartpole", config)
    assert _contents(directory) == reference
    assert sorted(p.name for p in directory.iterdir()) == ["index.json", "shard-00000", "shard-00001", "shard-00002"]


@pytest.mark.slow
def test_killed_cli_process_resumes(tmp_path: Path) -> None:
    """SIGKILL a real `generalist collect` mid-way; the rerun completes with every seed exactly once."""
    out = tmp_path / "data"

    def command(episodes: int) -> list[str]:
        return [sys.executable, "-m", "generalist.cli", "collect", "--tasks", "pendulum", "--out", str(out),
                "--episodes", str(episodes), "--shard-episodes", "1", "--no-progress"]

    process = subprocess.Popen(command(10_000), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = out / "pendulum" / "index.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if index.exists() and len(json.loads(index.read_text())["shards"]) >= 2:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the collection finished before it could be killed"
    partial = EpisodeDataset(out / "pendulum", allow_incomplete=True)
    assert 2 <= len(partial) < 10_000
    target = len(partial) + 3  # the rerun must play exactly the 3 seeds after the kept ones
    result = subprocess.run(command(target), capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    data = EpisodeDataset(out / "pendulum")
    assert [e.seed for e in data] == list(range(target))
    assert [e.episode_return for e in data][: len(partial)] == [e.episode_return for e in partial]
    assert not [p for p in (out / "pendulum").iterdir() if p.name.startswith(".tmp-")]


def test_finished_dataset_is_skipped_and_extended(tmp_path: Path) -> None:
    config = _config(tmp_path, episodes=2)
    directory = collect_task("cartpole", config)
    stamp = (directory / "index.json").stat().st_mtime_ns
    shards = sorted(p.name for p in directory.iterdir())
    time.sleep(0.01)
    collect_task("cartpole", config)
    assert sorted(p.name for p in directory.iterdir()) == shards
    assert (directory / "index.json").read_text() and EpisodeDataset(directory).index["target_episodes"] == 2
    assert (directory / "index.json").stat().st_mtime_ns >= stamp
    collect_task("cartpole", _config(tmp_path, episodes=3))
    assert [e.seed for e in EpisodeDataset(directory)] == [0, 1, 2]


def test_filter_keeps_episodes_above_the_threshold_and_remembers_rejections(tmp_path: Path) -> None:
    baselines = tmp_path / "baselines.json"
    entry = {"random": {"mean": -1000.0}, "expert": {"mean": 0.0}}
    baselines.write_text(json.dumps({"format": "generalist-baselines", "version": 1, "tasks": {"pendulum": entry}}))
    config = _config(tmp_path, tasks=("pendulum",), episodes=5, min_return_fraction=0.85, baselines=baselines)
    directory = collect_task("pendulum", config)
    data = EpisodeDataset(directory)
    threshold = -1000.0 + 0.85 * 1000.0
    assert data.index["min_return"] == pytest.approx(threshold)
    assert len(data) == 5 and all(e.episode_return >= threshold for e in data)
    rejected = data.index["rejected"]
    assert rejected and all(r["return"] < threshold for r in rejected)
    played = sorted([e.seed for e in data] + [r["seed"] for r in rejected])
    assert played == list(range(len(played))) == list(range(data.index["seeds_played"]))


def test_filter_gives_up_with_a_clear_error(tmp_path: Path) -> None:
    baselines = tmp_path / "baselines.json"
    entry = {"random": {"mean": 0.0}, "expert": {"mean": 1000.0}}
    baselines.write_text(json.dumps({"format": "generalist-baselines", "version": 1, "tasks": {"cartpole": entry}}))
    config = _config(tmp_path, episodes=2, min_return_fraction=0.8, baselines=baselines, max_attempts_factor=2)
    with pytest.raises(DatasetError, match="the filter kept 0 of 4"):
        collect_task("cartpole", config)


def test_other_settings_in_the_same_directory_are_refused(tmp_path: Path) -> None:
    collect_task("cartpole", _config(tmp_path, episodes=1))
    with pytest.raises(DatasetError, match="first_seed"):
        collect_task("cartpole", _config(tmp_path, episodes=2, first_seed=7))


def test_corrupted_index_is_named(tmp_path: Path) -> None:
    directory = collect_task("cartpole", _config(tmp_path, episodes=2))
    index = directory / "index.json"
    index.write_text(index.read_text()[:100])
    with pytest.raises(DatasetError, match=r"index\.json: damaged, not valid JSON"):
        EpisodeDataset(directory)
    with pytest.raises(DatasetError, match=r"index\.json: damaged"):
        collect_task("cartpole", _config(tmp_path, episodes=2))


def test_truncated_array_is_named(tmp_path: Path) -> None:
    directory = collect_task("cartpole", _config(tmp_path, episodes=2))
    array = directory / "shard-00000" / "obs.continuous.npy"
    os.truncate(array, array.stat().st_size - 16)
    with pytest.raises(DatasetError, match=r"obs\.continuous\.npy: truncated"):
        EpisodeDataset(directory)
    with pytest.raises(DatasetError, match=r"obs\.continuous\.npy: truncated"):
        collect_task("cartpole", _config(tmp_path, episodes=3))


def test_index_disagreeing_with_shards_is_named(tmp_path: Path) -> None:
    directory = collect_task("cartpole", _config(tmp_path, episodes=2))
    index = json.loads((directory / "index.json").read_text())
    index["episodes"][1]["length"] += 1
    index["shards"][0]["steps"] += 1
    (directory / "index.json").write_text(json.dumps(index))
    expected = r"obs\.continuous\.npy: holds float32 \(1000, 4\), the index says float32 \(1001, 4\)"
    with pytest.raises(DatasetError, match=expected):
        EpisodeDataset(directory)


def test_foreign_directories_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "cartpole"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match=r"not a dataset of ours .*notes\.txt"):
        collect_task("cartpole", _config(tmp_path))
    with pytest.raises(DatasetError, match=r"index\.json: missing"):
        EpisodeDataset(foreign)
    (foreign / "index.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DatasetError, match="foreign file"):
        EpisodeDataset(foreign)


def test_foreign_file_inside_a_dataset_is_refused(tmp_path: Path) -> None:
    directory = collect_task("cartpole", _config(tmp_path, episodes=1))
    (directory / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match=r"foreign files .*notes\.txt"):
        collect_task("cartpole", _config(tmp_path, episodes=2))


def test_atari_episodes_are_stored_as_frames(tmp_path: Path) -> None:
    (directory,) = collect(_config(tmp_path, tasks=("pong",), episodes=2, max_episode_steps=30))
    data = EpisodeDataset(directory)
    assert data.index["env_kwargs"] == {"frameskip": 4, "repeat_action_probability": 0.25, "full_action_space": False}
    assert data.index["max_episode_steps"] == 30
    window = data.window(1, 5, 9)
    assert window["observations"]["image"].shape == (4, 80, 80, 3)
    assert window["observations"]["image"].dtype == np.uint8 and window["actions"].dtype == np.int64
    assert {e.length for e in data} == {30} and not any(e.terminated for e in data)


def test_unknown_task_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tasks"):
        collect(_config(tmp_path, tasks=("chess",)))


def test_package_versions_are_checked_on_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    collect_task("cartpole", _config(tmp_path, episodes=1))
    monkeypatch.setattr(
        recording, "package_versions", lambda names: {name: "0.0-other" for name in names}
    )
    with pytest.raises(DatasetError, match="recorded with gymnasium"):
        collect_task("cartpole", _config(tmp_path, episodes=2))


def test_filter_and_step_cap_are_not_combined(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not combine"):
        collect_task("cartpole", _config(tmp_path, min_return_fraction=0.5, max_episode_steps=10))


def test_noisy_recording_keeps_the_experts_actions_in_states_it_would_not_reach(tmp_path):
    clean = collect_task("cartpole", _config(tmp_path / "clean", episodes=3, max_episode_steps=200))
    noisy = collect_task("cartpole", _config(tmp_path / "noisy", episodes=3, max_episode_steps=200, noise=0.3))
    expert = get_task("cartpole").expert()
    data = EpisodeDataset(noisy)
    assert json.loads((noisy / storage.INDEX).read_text())["noise"] == 0.3
    for number in range(len(data)):
        window = data.window(number)
        states = window["observations"]["continuous"]
        expected = [expert.act({"continuous": state}, {}) for state in states]
        assert window["actions"].tolist() == expected  # the label is the expert's, whatever was executed
    # The same seeds without noise: the executed random actions took the noisy episodes elsewhere.
    first_clean, first_noisy = EpisodeDataset(clean).window(0), data.window(0)
    n = min(len(first_clean["actions"]), len(first_noisy["actions"]))
    clean_states, noisy_states = first_clean["observations"]["continuous"], first_noisy["observations"]["continuous"]
    assert not np.array_equal(clean_states[:n], noisy_states[:n])


def test_noise_is_a_setting_of_the_dataset_and_older_datasets_had_none(tmp_path):
    directory = collect_task("cartpole", _config(tmp_path, episodes=2, max_episode_steps=20))
    index = json.loads((directory / storage.INDEX).read_text())
    del index["noise"]  # a dataset recorded before the setting existed
    (directory / storage.INDEX).write_text(json.dumps(index))
    collect_task("cartpole", _config(tmp_path, episodes=3, max_episode_steps=20))
    assert len(EpisodeDataset(directory)) == 3
    with pytest.raises(DatasetError, match="recorded with noise=0.0, this run asks 0.2"):
        collect_task("cartpole", _config(tmp_path, episodes=4, max_episode_steps=20, noise=0.2))
    with pytest.raises(ValueError, match="do not combine it with noise"):
        collect_task("cartpole", _config(tmp_path / "f", min_return_fraction=0.8, noise=0.2))
    with pytest.raises(ValueError, match="noise is a probability"):
        run_episode(make("cartpole"), get_task("cartpole").expert(), seed=0, noise=1.5)


def test_a_second_writer_to_a_dataset_is_refused_and_the_first_finishes(tmp_path: Path) -> None:
    from generalist.lock import exclusive

    config = _config(tmp_path / "data", episodes=2)
    with exclusive(config.out / "cartpole", "a recording"):  # another process recording there
        with pytest.raises(ValueError, match="being written by another process"):
            collect_task("cartpole", config)
    assert len(EpisodeDataset(collect_task("cartpole", config))) == 2  # free again once it is done
