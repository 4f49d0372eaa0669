"""Score baselines: the stored file, the normalized scores, and the measurement that writes them."""

import json
from pathlib import Path

import pytest

from generalist.envs import TASKS, expert_normalized, human_normalized, load_baselines
from generalist.envs.baselines import BaselineConfig, format_table, measure_task, run_baselines, step_cap


def test_stored_baselines_cover_every_task_with_50_episodes() -> None:
    data = load_baselines()
    assert set(data["tasks"]) == set(TASKS)
    for name, entry in data["tasks"].items():
        for policy in ("random", "expert"):
            assert entry[policy]["n"] >= 50 and len(entry[policy]["returns"]) == entry[policy]["n"]
        assert entry["expert"]["mean"] > entry["random"]["mean"], name
        assert entry["env_id"] == TASKS[name].env_id and entry["expert_name"] == TASKS[name].expert_name()
        assert entry["seeds"]["count"] >= 50 and "gymnasium" in entry["packages"]
    assert data["tasks"]["pong"]["human"] == {"human": 14.6, "random": -20.7}
    assert data["tasks"]["breakout"]["human"] == {"human": 30.5, "random": 1.7}
    # The bar for the Atari experts: Pong at least +10, Breakout at least 120.
    assert data["tasks"]["pong"]["expert"]["mean"] >= 10.0
    assert data["tasks"]["breakout"]["expert"]["mean"] >= 120.0


def test_normalized_scores() -> None:
    baselines = {"tasks": {"cartpole": {"random": {"mean": 20.0}, "expert": {"mean": 500.0}}}}
    assert expert_normalized("cartpole", 20.0, baselines) == 0.0
    assert expert_normalized("cartpole", 500.0, baselines) == 1.0
    assert expert_normalized("cartpole", 260.0, baselines) == pytest.approx(0.5)
    assert human_normalized("pong", -20.7) == pytest.approx(0.0)
    assert human_normalized("pong", 14.6) == pytest.approx(1.0)
    assert human_normalized("breakout", 30.5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no published human score"):
        human_normalized("cartpole", 1.0)
    with pytest.raises(KeyError, match="generalist baselines"):
        expert_normalized("acrobot", 1.0, baselines)


def test_stored_baselines_normalize_their_own_means() -> None:
    data = load_baselines()
    for name, entry in data["tasks"].items():
        assert expert_normalized(name, entry["expert"]["mean"]) == pytest.approx(1.0)
        assert expert_normalized(name, entry["random"]["mean"]) == pytest.approx(0.0)


def test_measurement_is_seeded_and_updates_only_its_task(tmp_path: Path) -> None:
    first = measure_task("mountaincar", episodes=2, first_seed=7)
    again = measure_task("mountaincar", episodes=2, first_seed=7)
    assert first["random"] == again["random"] and first["expert"] == again["expert"]
    assert first["seeds"] == {"first": 7, "count": 2} and first["random"]["n"] == 2
    out = tmp_path / "baselines.json"
    out.write_text(json.dumps({"format": "generalist-baselines", "version": 1, "tasks": {"pong": {"kept": 1}}}))
    data = run_baselines(BaselineConfig(tasks=("mountaincar",), episodes=2, first_seed=7, out=out))
    stored = json.loads(out.read_text())
    assert stored["tasks"]["pong"] == {"kept": 1}  # other tasks' entries survive
    assert stored["tasks"]["mountaincar"]["expert"] == first["expert"] == data["tasks"]["mountaincar"]["expert"]
    assert "mountaincar" in format_table({"tasks": {"mountaincar": first}})


def test_damaged_baselines_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "baselines.json"
    path.write_text("{")
    with pytest.raises(ValueError, match=r"baselines\.json: not valid JSON"):
        load_baselines(path)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a generalist-baselines file"):
        load_baselines(path)


def test_a_step_cap_cuts_only_tasks_whose_own_cap_is_longer() -> None:
    assert step_cap("mountaincar", None) is None
    assert step_cap("mountaincar", 50) == 50  # MountainCar's own cap is 200
    assert step_cap("mountaincar", 200) is None and step_cap("mountaincar", 5_000) is None
    with pytest.raises(ValueError, match="at least 1"):
        step_cap("mountaincar", 0)


def test_cut_baselines_are_stored_beside_the_full_one_and_normalize_cut_scores(tmp_path: Path) -> None:
    out = tmp_path / "baselines.json"
    with pytest.raises(ValueError, match="no full baseline of cartpole"):
        run_baselines(BaselineConfig(tasks=("cartpole",), episodes=2, first_seed=7, out=out, max_episode_steps=100))
    full = run_baselines(BaselineConfig(tasks=("cartpole",), episodes=2, first_seed=7, out=out, workers=1))
    full_entry = json.loads(json.dumps(full["tasks"]["cartpole"]))
    run_baselines(BaselineConfig(tasks=("cartpole",), episodes=2, first_seed=7, out=out, workers=1,
                                 max_episode_steps=100))
    stored = load_baselines(out)["tasks"]["cartpole"]
    cut = stored["capped"]["100"]
    assert {k: v for k, v in stored.items() if k != "capped"} == full_entry  # the full baseline is kept
    assert cut["max_episode_steps"] == 100 and full_entry["max_episode_steps"] == 500
    # CartPole pays 1 a step: the expert balances the whole 100 steps (500 uncut), random falls well before.
    assert cut["expert"]["returns"] == [100.0, 100.0] and full_entry["expert"]["returns"] == [500.0, 500.0]
    assert cut["random"]["returns"] == full_entry["random"]["returns"]
    data = load_baselines(out)
    low, high = cut["random"]["mean"], cut["expert"]["mean"]
    assert high > low
    assert expert_normalized("cartpole", low, data, max_episode_steps=100) == pytest.approx(0.0)
    assert expert_normalized("cartpole", high, data, max_episode_steps=100) == pytest.approx(1.0)
    # A cap that cuts nothing normalizes by the full baseline; one never measured is named with its command.
    assert expert_normalized("cartpole", full_entry["expert"]["mean"], data, max_episode_steps=5_000) == 1.0
    with pytest.raises(KeyError, match="cut at 30 steps; run `generalist baselines --tasks cartpole "
                                       "--max-episode-steps 30`"):
        expert_normalized("cartpole", 30.0, data, max_episode_steps=30)
    # Measuring the full baseline again keeps the cut ones; the table lists both.
    run_baselines(BaselineConfig(tasks=("cartpole",), episodes=2, first_seed=7, out=out, workers=1))
    again = load_baselines(out)
    assert again["tasks"]["cartpole"]["capped"]["100"] == cut
    assert "cartpole (100 steps)" in format_table(again)
