"""The copycat diagnosis: repeat rates, teacher-forced accuracy over the valid action tokens, the command."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from generalist.checkpoint import save_model
from generalist.config import EvalConfig
from generalist.datasets.storage import EpisodeDataset
from generalist.diagnose import (
    Diagnosis,
    action_shares,
    diagnose,
    format_diagnosis,
    on_policy,
    repeat_rate,
    teacher_forced,
    teacher_forced_accuracy,
)
from generalist.envs import get_task
from generalist.model import Generalist, preset
from generalist.tokenizers import TextTokenizer


@pytest.fixture(scope="module")
def data_dir(cartpole_data):
    return cartpole_data


def _model():
    torch.manual_seed(0)
    return Generalist(preset("tiny", text_vocab_size=TextTokenizer.default().vocab_size, context=256)).eval()


def test_repeat_rate_skips_the_first_step_of_every_episode():
    ids = np.array([[1], [1], [2], [2], [2]])
    assert repeat_rate(ids, [0, 3]) == pytest.approx(2 / 3)  # steps 1, 2, 4 count; 1 and 4 repeat
    assert repeat_rate(np.array([[0, 1], [0, 2]]), [0]) == 0.0  # every slot must repeat


def test_teacher_forced_accuracy_chooses_among_the_valid_action_tokens(data_dir):
    model = _model()
    with torch.no_grad():
        model.norm.weight.zero_()
        model.norm.bias.zero_()
    # Every logit is now 0: the choice falls on the first valid token, action 0 (a choice over the whole table
    # would pick id 0, a text token, and score 0). So the accuracy is the recorded windows' share of action 0.
    episodes = EpisodeDataset(data_dir / "cartpole")
    steps = model.config.context // 6  # 4 values, separator, action
    zeros = []
    for episode in range(len(episodes)):
        length = episodes.episode_length(episode)
        start = max(0, (length - steps) // 2)
        _, actions = episodes.read(episode, start, min(length, start + steps))
        zeros.append(np.asarray(actions).ravel() == 0)
    expected = np.concatenate(zeros).mean()
    assert 0 < expected < 1
    assert teacher_forced_accuracy(model, "cartpole", data_dir) == pytest.approx(expected)


def test_decisive_steps_are_where_the_expert_changes_its_action(data_dir):
    model = _model()
    with torch.no_grad():  # as above: every prediction is action 0
        model.norm.weight.zero_()
        model.norm.bias.zero_()
    forced = teacher_forced(model, "cartpole", data_dir)
    episodes = EpisodeDataset(data_dir / "cartpole")
    steps = model.config.context // 6
    decisive, zero_at_decisive = 0, 0
    for episode in range(len(episodes)):
        length = episodes.episode_length(episode)
        start = max(0, (length - steps) // 2)
        _, actions = episodes.read(episode, start, min(length, start + steps))
        changed = np.asarray(actions).ravel()[1:] != np.asarray(actions).ravel()[:-1]
        decisive += changed.sum()
        zero_at_decisive += (np.asarray(actions).ravel()[1:][changed] == 0).sum()
    assert forced.decisive.sum() == decisive > 0
    assert forced.decisive_accuracy == pytest.approx(zero_at_decisive / decisive)
    # Equal logits over CartPole's two valid actions: every target costs log 2 nats (over the whole table, far more).
    assert forced.decisive_loss == pytest.approx(np.log(2), rel=1e-4)


def test_the_diagnosis_reads_as_many_windows_as_asked_and_counts_their_decisive_steps(data_dir):
    model = _model()
    episodes = EpisodeDataset(data_dir / "cartpole")
    steps = model.config.context // 6
    changes = []
    for episode in range(2):
        length = episodes.episode_length(episode)
        start = max(0, (length - steps) // 2)
        actions = np.asarray(episodes.read(episode, start, min(length, start + steps))[1]).ravel()
        changes.append(int((actions[1:] != actions[:-1]).sum()))
    config = EvalConfig(episodes=1, seed=3, data_dir=data_dir)
    assert diagnose(model, "cartpole", config, windows=1).decisive_steps == changes[0] > 0
    assert diagnose(model, "cartpole", config, windows=2).decisive_steps == sum(changes)
    with pytest.raises(ValueError, match="windows"):
        diagnose(model, "cartpole", config, windows=0)


def test_shorter_windows_score_the_middle_steps_asked_for(data_dir):
    model = _model()
    with torch.no_grad():  # as above: every prediction is action 0
        model.norm.weight.zero_()
        model.norm.bias.zero_()
    episodes = EpisodeDataset(data_dir / "cartpole")
    steps = 5
    zeros = []
    for episode in range(2):
        length = episodes.episode_length(episode)
        start = max(0, (length - steps) // 2)
        zeros.append(np.asarray(episodes.read(episode, start, start + steps)[1]).ravel() == 0)
    forced = teacher_forced(model, "cartpole", data_dir, episodes=2, window_steps=steps)
    assert len(forced.correct) == 2 * steps
    np.testing.assert_array_equal(forced.correct, np.concatenate(zeros))
    fits = model.config.context // 6
    assert len(teacher_forced(model, "cartpole", data_dir, episodes=2, window_steps=fits).correct) == 2 * fits
    for bad in (0, fits + 1):
        with pytest.raises(ValueError, match="window_steps"):
            diagnose(model, "cartpole", EvalConfig(episodes=1, data_dir=data_dir), window_steps=bad)


def test_on_policy_gives_the_probability_the_agent_gave_the_experts_action_among_the_valid_ones(data_dir):
    model = _model()
    with torch.no_grad():
        model.norm.weight.zero_()
        model.norm.bias.normal_(0.0, 30.0)  # each step's logits: output_logits(bias), the same, far from uniform
        logits = model.output_logits(model.norm.bias)
    valid = torch.as_tensor(get_task("cartpole").action_spec().valid_id_mask(model.config.layout)[0])
    probability = torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=-1)
    # Sampled, so that the games wander and the expert asks for both actions.
    acted = on_policy(model, "cartpole", EvalConfig(episodes=2, data_dir=data_dir, temperature=1.0), max_steps=40)
    asked = acted.expert[:, 0]
    assert len(np.unique(asked)) == 2 and acted.expert_probability.shape == asked.shape
    np.testing.assert_allclose(acted.expert_probability, probability[torch.as_tensor(asked)].numpy(), rtol=1e-5)
    assert not np.allclose(acted.expert_probability, 0.5, atol=1e-3)  # the two actions' probabilities differ


def test_action_shares_count_discrete_actions_only():
    layout = _model().config.layout
    ids = layout.discrete_ids(np.array([[2], [2], [0], [2]]))
    assert action_shares(ids, layout) == {0: 0.25, 2: 0.75}
    assert action_shares(layout.continuous_ids(np.array([[5, 6]])), layout) == {}


def test_the_row_names_a_registered_tasks_actions_and_shows_ids_otherwise():
    shares = {"agent_actions": {0: 0.9, 2: 0.1}, "expert_actions": {3: 1.0}}
    pong = format_diagnosis(Diagnosis("pong", 0.5, 0.5, 0.1, 0.9, 0.8, 100, **shares))
    assert pong.endswith("| NOOP: 90%, UP: 10% | DOWN: 100% |")
    other = format_diagnosis(Diagnosis("minari:some/dataset-v0", 0.5, 0.5, 0.1, 0.9, 0.8, 100, **shares))
    assert other.endswith("| 0: 90%, 2: 10% | 3: 100% |")


@pytest.mark.slow
def test_diagnose_command_prints_a_row_per_task(data_dir, tmp_path):
    checkpoint = save_model(_model(), tmp_path / "ckpt", TextTokenizer.default())
    result = subprocess.run(
        [sys.executable, "-m", "generalist.cli", "diagnose", "--checkpoint", str(checkpoint), "--tasks", "cartpole",
         "--episodes", "2", "--data-dir", str(data_dir), "--windows", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("| cartpole")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    shares = [float(cell.rstrip("%")) for cell in cells[1:5] + cells[7:12] if cell]
    # CartPole has no images to shuffle or spread
    assert len(shares) == 7 and cells[4] == cells[6] == cells[7] == "" and float(cells[5]) > 0
    assert all(0 <= share <= 100 for share in shares) and int(cells[12]) > 2
    agent = dict(item.split(": ") for item in cells[13].split(", "))
    assert "decisive steps in the 2 recorded windows: cartpole " in result.stdout
    assert set(agent) <= {"LEFT", "RIGHT"}
    assert sum(float(v.rstrip("%")) for v in agent.values()) == pytest.approx(100, abs=1)
