"""The training loop: schedule, checkpoints and logs, exact resume, and two processes equal to one."""

import csv
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch

from generalist import train as train_module
from generalist.checkpoint import latest_checkpoint, read_trainer_state
from generalist.config import CollectConfig, EvalConfig, TrainConfig
from generalist.datasets.mixture import caption_word_targets
from generalist.datasets.recording import collect
from generalist.datasets.storage import EpisodeDataset
from generalist.flags import from_json_dict, load_json
from generalist.model import Generalist
from generalist.tokenizers import TextTokenizer, TokenKind
from generalist.train import build_model, check_same_model, learning_rate, model_config, train

# Caption and text tasks need no recorded data; scenes put image patches (and their sampled positions) in play.
TINY = TrainConfig(
    weights={"scenes": 1.0, "dialogue": 1.0},
    steps=4,
    batch_size=2,
    sequence_length=96,
    warmup_steps=2,
    checkpoint_every=2,
    log_every=1,
    num_workers=0,
    progress=False,
    precision="fp32",  # "auto" would choose for this machine; the equalities below hold in either, not across
)


def weights_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(checkpoint / "model.safetensors")


def test_schedule_warms_up_then_decays_to_a_tenth():
    config = TrainConfig(steps=100, warmup_steps=10, learning_rate=1e-3)
    lrs = [learning_rate(step, config) for step in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a <= b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert learning_rate(100, config) == pytest.approx(1e-4)


@pytest.mark.slow
def test_a_run_writes_checkpoints_and_logs(tmp_path):
    checkpoint = train(replace(TINY, run_dir=tmp_path))
    assert checkpoint == latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-0000004"
    files = {p.name for p in checkpoint.iterdir()}
    assert files == {"model.safetensors", "config.json", "text.model", "optimizer.safetensors", "trainer.json"}
    state = read_trainer_state(checkpoint)
    assert state["step"] == 4 and state["tokens"] > 0 and state["train_config"].run_dir == tmp_path
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    names = {row["metric"] for row in rows}
    assert {"train/loss", "train/loss_text", "train/lr", "train/tokens_per_s"} <= names
    assert [int(r["step"]) for r in rows if r["metric"] == "train/loss"] == [1, 2, 3, 4]
    assert {name for name in names if name.startswith("task_loss/")} == {"task_loss/scenes", "task_loss/dialogue"}
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tensorboard").iterdir())
    assert load_json(TrainConfig, tmp_path / "train_config.json") == replace(TINY, run_dir=tmp_path)


@pytest.mark.slow
def test_a_task_loss_is_the_mean_over_the_steps_since_the_last_log(tmp_path):
    # Dialogue alone: every step's loss is the dialogue's, so its logged task loss is the mean of the steps'.
    train(replace(TINY, run_dir=tmp_path, weights={"dialogue": 1.0}, log_every=2))
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    steps = {name: {int(r["step"]): float(r["value"]) for r in rows if r["metric"] == name}
             for name in ("train/loss", "task_loss/dialogue")}
    assert sorted(steps["task_loss/dialogue"]) == [2, 4]
    # Only every other step's own loss is logged, so compare against what a step-by-step run logs.
    every = tmp_path / "every"
    train(replace(TINY, run_dir=every, weights={"dialogue": 1.0}, log_every=1))
    losses = {int(r["step"]): float(r["value"]) for r in csv.DictReader((every / "metrics.csv").open())
              if r["metric"] == "train/loss"}
    assert steps["task_loss/dialogue"][4] != pytest.approx(losses[4])  # not the last step alone
    # Rows hold different numbers of targets, so the mean is per target: between the two steps' losses.
    assert min(losses[3], losses[4]) <= steps["task_loss/dialogue"][4] <= max(losses[3], losses[4])


@pytest.mark.slow
def test_resume_after_a_stop_ends_with_the_same_weights(tmp_path):
    straight = train(replace(TINY, run_dir=tmp_path / "straight"))
    # max_minutes=0 stops after the first step, with a checkpoint: a run killed right after it.
    stopped = train(replace(TINY, run_dir=tmp_path / "resumed", max_minutes=0.0))
    assert read_trainer_state(stopped)["step"] == 1
    # The resumed run keeps its saved limit unless given a new one: the saved 0 minutes would stop it again.
    again = train(replace(TINY, run_dir=tmp_path / "resumed"), resume=True)
    assert read_trainer_state(again)["step"] == 2
    resumed = train(replace(TINY, run_dir=tmp_path / "resumed", max_minutes=60.0), resume=True)
    assert read_trainer_state(resumed)["step"] == 4
    expected, got = weights_of(straight), weights_of(resumed)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        train(replace(TINY, run_dir=tmp_path), resume=True)


def test_unknown_config_keys_are_errors():
    with pytest.raises(ValueError, match=r"unknown keys \['stepz'\]"):
        from_json_dict(TrainConfig, {"stepz": 3})


@pytest.mark.parametrize(
    ("number", "whole_group"), [(signal.SIGINT, True), (signal.SIGTERM, True), (signal.SIGTERM, False)]
)
@pytest.mark.slow
def test_a_signal_stops_training_at_a_step_boundary_with_that_step_saved(tmp_path, number, whole_group):
    # Ctrl-C reaches the whole process group, data workers included; a SIGTERM may reach every process or the trainer.
    command = [
        sys.executable, "-m", "generalist.cli", "train", "--run-dir", str(tmp_path), "--weights", "dialogue=1",
        "--steps", "100000", "--batch-size", "2", "--sequence-length", "96", "--warmup-steps", "1",
        "--checkpoint-every", "100000", "--log-every", "1", "--num-workers", "2", "--no-progress",
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics, deadline = tmp_path / "metrics.csv", time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("train/loss,") >= 3):
        assert process.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    if whole_group:
        os.killpg(process.pid, number)
    else:
        process.send_signal(number)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert f"training stopped by {signal.Signals(number).name} at step" in stderr and "Traceback" not in stderr
    logged = [int(r["step"]) for r in csv.DictReader(metrics.open()) if r["metric"] == "train/loss"]
    state = read_trainer_state(latest_checkpoint(tmp_path))
    assert state["step"] == logged[-1] >= 3 and state["milestone"] is False
    if number == signal.SIGINT:  # type what the message says, for one more step
        told = stderr.split("`")[1].split()
        assert told == ["generalist", "train", "--run-dir", str(tmp_path), "--resume"]
        more = [sys.executable, "-m", "generalist.cli", *told[1:], "--steps", str(state["step"] + 1), "--no-progress"]
        resumed = subprocess.run(more, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert read_trainer_state(latest_checkpoint(tmp_path))["step"] == state["step"] + 1


def test_a_second_signal_interrupts_at_once():
    stop = train_module._StopSignals()
    stop._handle(signal.SIGTERM, None)
    assert stop.received == "SIGTERM"
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)


@pytest.mark.slow
def test_two_processes_give_the_weights_of_one_with_the_same_global_batch(tmp_path):
    flags = [
        "--weights", "scenes=1,dialogue=1", "--steps", "3", "--batch-size", "2", "--sequence-length", "96",
        "--warmup-steps", "1", "--num-workers", "0", "--no-progress",
        # auto times a matmul per run: under load one run can pick bf16 and the other fp32, which differ by more
        # than the tolerance. The equality tested is of the data each step sees, in one precision.
        "--precision", "fp32",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = [sys.executable, "-m", "generalist.cli", "train", "--run-dir", str(tmp_path / "one"), "--accumulation", "2"]
    subprocess.run(one + flags, check=True, env=env, timeout=300)
    two = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
        "-m", "generalist.cli", "train", "--run-dir", str(tmp_path / "two"),
    ]
    subprocess.run(two + flags, check=True, env=env, timeout=300)
    expected, got = weights_of(latest_checkpoint(tmp_path / "one")), weights_of(latest_checkpoint(tmp_path / "two"))
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    # The steps did move the weights: the equality is not that of two untouched initializations.
    initial = build_model(replace(TINY, sequence_length=96), TextTokenizer.default()).state_dict()
    moved = [name for name in expected if not torch.allclose(initial[name], expected[name], atol=1e-4)]
    assert len(moved) > len(expected) // 2


def test_the_model_settings_of_a_training_config_reach_the_model():
    text = TextTokenizer.default()
    built = build_model(replace(TINY, patch_stride=2, value_frequencies=3, centre_patches=True,
                                patch_input="mask+colour", caption_patch_input="pixels+mask",
                                caption_mask_background="nearest"), text).config
    assert (built.patch_stride, built.value_frequencies, built.centre_patches, built.patch_input) == \
        (2, 3, True, "mask+colour")
    assert (built.caption_patch_input, built.caption_mask_background) == ("pixels+mask", "nearest")
    assert build_model(TINY, text).config.patch_stride == 4  # None keeps the preset's


@pytest.mark.slow
def test_evaluation_during_training_is_logged(tmp_path):
    from generalist.datasets.recording import CollectConfig, collect

    collect(CollectConfig(tasks=("cartpole",), episodes=2, out=tmp_path / "data", max_episode_steps=40,
                          progress=False))
    config = replace(TINY, run_dir=tmp_path / "run", data_dir=tmp_path / "data", eval_every=2,
                     eval_tasks=("cartpole",), weights={"cartpole": 1.0, "scenes": 1.0})
    train(config, eval_config=EvalConfig(episodes=2, num_envs=2))
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    evaluated = {(int(r["step"]), r["metric"]) for r in rows if r["metric"].startswith("eval/")}
    assert evaluated == {(s, f"eval/cartpole/{m}") for s in (2, 4) for m in ("return", "normalized")}
    returns = [float(r["value"]) for r in rows if r["metric"] == "eval/cartpole/return"]
    assert all(r >= 1 for r in returns)  # CartPole pays at least one point per episode


@pytest.mark.slow
def test_a_time_schedule_decays_over_the_minutes_and_stops_there(tmp_path):
    config = replace(TINY, schedule="time", max_minutes=10.0, steps=10**9, warmup_steps=2)
    assert learning_rate(0, config, minutes=0.0) == pytest.approx(5e-4)
    assert learning_rate(5, config, minutes=0.0) == pytest.approx(1e-3)
    assert learning_rate(5, config, minutes=5.0) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert learning_rate(5, config, minutes=10.0) == learning_rate(9, config, minutes=99.0) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="needs max_minutes"):
        train(replace(config, max_minutes=None, run_dir=tmp_path))
    with pytest.raises(ValueError, match="schedule must be"):
        train(replace(TINY, schedule="epochs", run_dir=tmp_path))

    # A budget of a fraction of a second: the run stops after its first step, with a checkpoint.
    last = train(replace(config, max_minutes=1e-4, run_dir=tmp_path))
    state = read_trainer_state(last)
    assert state["step"] == 1 and state["minutes"] > 1e-4


@pytest.mark.slow
def test_checkpoints_every_few_minutes(tmp_path):
    # Every step crosses a 1e-9-minute mark; step-based checkpoints alone would come every 1000 steps.
    train(replace(TINY, steps=3, checkpoint_every=1000, checkpoint_minutes=1e-9, keep_checkpoints=5, run_dir=tmp_path))
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == [
        "step-0000001", "step-0000002", "step-0000003",
    ]
    minutes = [read_trainer_state(tmp_path / "checkpoints" / f"step-000000{i}")["minutes"] for i in (1, 2, 3)]
    assert 0 < minutes[0] < minutes[1] < minutes[2]


@pytest.mark.slow
def test_an_interim_checkpoint_guards_a_crash_without_displacing_milestones(tmp_path, monkeypatch):
    # An interim checkpoint after every step; milestones every 2 steps, of which only the newest 2 are kept.
    config = replace(TINY, steps=6, checkpoint_every=2, keep_checkpoints=2, interim_minutes=1e-9, run_dir=tmp_path)
    original = train_module.save_checkpoint

    def crash_after_step_3(*args, **kwargs):
        checkpoint = original(*args, **kwargs)
        if args[5] == 3:  # the step
            raise KeyboardInterrupt  # the machine went away
        return checkpoint

    monkeypatch.setattr(train_module, "save_checkpoint", crash_after_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(train_module, "save_checkpoint", original)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.glob("step-*")) == ["step-0000002", "step-0000003"]
    assert read_trainer_state(latest_checkpoint(tmp_path))["milestone"] is False

    resumed = train(config, resume=True)  # step 5's interim checkpoint does not push out step 4's
    assert sorted(p.name for p in folder.glob("step-*")) == ["step-0000004", "step-0000006"]
    assert read_trainer_state(resumed)["step"] == 6 and read_trainer_state(resumed)["milestone"] is True
    straight = train(replace(config, interim_minutes=None, run_dir=tmp_path / "straight"))
    expected, got = weights_of(straight), weights_of(resumed)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_action_shuffle_changes_what_the_model_reads_and_is_seeded(tmp_path):
    collect(CollectConfig(tasks=("cartpole",), episodes=3, out=tmp_path / "data", max_episode_steps=40,
                          progress=False))
    base = replace(TINY, weights={"cartpole": 1.0}, data_dir=tmp_path / "data", steps=2, checkpoint_every=2)
    runs = {name: weights_of(train(replace(base, run_dir=tmp_path / name, action_shuffle=share)))
            for name, share in (("a", 1.0), ("b", 1.0), ("plain", 0.0))}
    for name in runs["a"]:
        torch.testing.assert_close(runs["b"][name], runs["a"][name], rtol=0, atol=0, msg=name)
    assert any(not torch.equal(runs["plain"][name], runs["a"][name]) for name in runs["a"])
    with pytest.raises(ValueError, match="action_shuffle"):
        train(replace(base, run_dir=tmp_path / "bad", action_shuffle=1.5))


@pytest.mark.slow
def test_action_balance_weighs_the_loss_by_the_recorded_action_shares(tmp_path, monkeypatch):
    """With a balance the loss weighs each discrete action target by its task's row of `action_balance` (the
    step's weighted mean moves); without one no weights are computed."""
    seen = []
    weigh = train_module.balanced_action_weights
    monkeypatch.setattr(train_module, "balanced_action_weights", lambda *a: seen.append(weigh(*a)) or seen[-1])
    collect(CollectConfig(tasks=("acrobot",), episodes=2, out=tmp_path / "data", max_episode_steps=50,
                          progress=False))
    base = replace(TINY, weights={"acrobot": 1.0}, data_dir=tmp_path / "data", steps=1, checkpoint_every=1)
    losses = {}
    for name, exponent in (("plain", 0.0), ("balanced", 1.0)):
        train(replace(base, run_dir=tmp_path / name, action_balance=exponent))
        rows = csv.DictReader((tmp_path / name / "metrics.csv").open())
        losses[name] = next(float(r["value"]) for r in rows if r["metric"] == "train/loss")
    assert len(seen) == 1  # only the balanced run weighed its batch
    counts = EpisodeDataset(tmp_path / "data" / "acrobot").action_counts()
    recorded = counts[counts > 0]
    assert len(set(recorded.tolist())) > 1  # unequal shares, or every weight would be 1
    expected = (recorded / recorded.sum()) ** -1.0 / len(recorded)  # exponent 1: each action weighs 1 / (n p)
    weighted = seen[0][seen[0] != 1.0]
    assert weighted.numel() > 0
    assert all(min(abs(w - e) for e in expected) < 1e-5 for w in weighted.tolist())
    assert losses["balanced"] != pytest.approx(losses["plain"], rel=1e-6)
    with pytest.raises(ValueError, match="action_balance"):
        train(replace(base, run_dir=tmp_path / "bad", action_balance=-1.0))


@pytest.mark.slow
def test_caption_word_weights_weigh_the_scene_captions_colour_and_shape_words(tmp_path, monkeypatch):
    """With colour and shape weights the step's loss weighs the scene rows' colour words and shape words by theirs
    (and nothing else); without them no weights are computed and the loss is the plain mean."""
    seen = []
    weigh = train_module.word_weights
    monkeypatch.setattr(train_module, "word_weights", lambda *a: seen.append((a[1], weigh(*a))) or seen[-1][1])
    base = replace(TINY, steps=1, checkpoint_every=1)
    losses = {}
    for name, colour, shape in (("plain", 1.0, 1.0), ("worded", 5.0, 3.0)):
        train(replace(base, run_dir=tmp_path / name, colour_weight=colour, shape_weight=shape))
        rows = csv.DictReader((tmp_path / name / "metrics.csv").open())
        losses[name] = next(float(r["value"]) for r in rows if r["metric"] == "train/loss")
    assert len(seen) == 2  # only the worded run weighed its batch: once for the colours, once for the shapes
    (colour_ids, coloured), (shape_ids, shaped) = seen
    assert set(coloured.unique().tolist()) == {1.0, 5.0} and set(shaped.unique().tolist()) == {1.0, 3.0}
    assert not set(colour_ids.tolist()) & set(shape_ids.tolist())
    assert not ((coloured != 1) & (shaped != 1)).any()  # no target is both a colour and a shape word
    assert losses["worded"] != pytest.approx(losses["plain"], rel=1e-6)
    for name in ("colour_weight", "shape_weight"):
        with pytest.raises(ValueError, match=name):
            train(replace(base, run_dir=tmp_path / "bad", **{name: -1.0}))


@pytest.mark.slow
def test_colour_shuffle_swaps_only_the_scene_captions_colour_words_the_model_reads(tmp_path, monkeypatch):
    from generalist.datasets.scenes import COLOURS, generate_scene
    from generalist.datasets.text import CHAT_MARKERS
    from generalist.tokenizers.text import TextTokenizerConfig, train_text_tokenizer

    seen = []
    shuffle = train_module.shuffle_word_inputs
    monkeypatch.setattr(train_module, "shuffle_word_inputs", lambda *a: seen.append((a[0], shuffle(*a))) or seen[-1][1])
    path = tmp_path / "colours.model"  # each colour one piece, as in the language preset's text model
    symbols = (*CHAT_MARKERS, *(f"\u2581{colour}" for colour in COLOURS))
    train_text_tokenizer([generate_scene(seed).caption for seed in range(300)],
                         TextTokenizerConfig(vocab_size=300, user_defined_symbols=symbols), out=path)
    base = replace(TINY, steps=1, checkpoint_every=1, text_tokenizer=path)
    train(replace(base, run_dir=tmp_path / "shuffled", colour_shuffle=1.0))
    assert len(seen) == 1
    (inputs, read), = seen
    tokenizer = TextTokenizer.load(path)
    colours = torch.tensor([int(tokenizer.encode(f"a {colour}")[1]) for colour in COLOURS])
    changed = read.ids != inputs.ids
    assert changed.any()
    assert torch.isin(inputs.ids[changed], colours).all() and torch.isin(read.ids[changed], colours).all()
    scene_rows = (inputs.kinds == TokenKind.IMAGE).any(dim=1)
    assert not changed[~scene_rows].any()  # the dialogue rows' text untouched
    assert torch.equal(read.targets, inputs.targets)
    with pytest.raises(ValueError, match="yellow"):  # the default text model splits it
        train(replace(TINY, run_dir=tmp_path / "split", steps=1, colour_shuffle=0.5))
    with pytest.raises(ValueError, match="colour_shuffle"):
        train(replace(base, run_dir=tmp_path / "bad", colour_shuffle=1.5))


def _watch_route_dropout(monkeypatch) -> tuple[list, list]:
    """What each training step's `drop_patch_routes` returned, and each forward's (batch, loss weights)."""
    seen = []
    drop = train_module.drop_patch_routes
    monkeypatch.setattr(train_module, "drop_patch_routes", lambda *a: seen.append(drop(*a)) or seen[-1])
    taken = []
    forward = Generalist.forward
    monkeypatch.setattr(Generalist, "forward", lambda self, batch, targets=None, weights=None, sigma=0.0: (
        taken.append((batch, weights)) or forward(self, batch, targets, weights, sigma)))
    return seen, taken


@pytest.mark.slow
def test_shape_dropout_reads_scene_rows_by_colour_alone_and_weighs_their_shape_words_as_told(tmp_path, monkeypatch):
    seen, taken = _watch_route_dropout(monkeypatch)
    base = replace(TINY, steps=1, checkpoint_every=1, patch_input="mask+colour", batch_size=4)
    train(replace(base, run_dir=tmp_path / "dropped", shape_dropout=1.0))
    (dropped, rows, no_rows), = seen
    assert not no_rows.any()  # no colour dropout asked for
    (batch, weights), = taken
    assert batch is dropped  # the model read the dropped batch
    scene_rows = (batch.kinds == TokenKind.IMAGE).any(dim=1)
    assert scene_rows.any() and torch.equal(rows, scene_rows)  # probability 1: every scene row, no dialogue row
    assert torch.equal(batch.patch_colour_only, scene_rows[batch.patch_batch_index])
    shape_ids, _ = caption_word_targets(["scenes"], TextTokenizer.default(), "shape")
    unread = batch.loss_mask & torch.isin(batch.targets, shape_ids) & scene_rows[:, None]
    assert unread.any() and (weights[unread] == 0).all() and (weights[~unread] == 1).all()
    train(replace(base, run_dir=tmp_path / "kept", shape_dropout=1.0, dropped_shape_weight=0.5))
    (batch, weights) = taken[-1]
    scene_rows = (batch.kinds == TokenKind.IMAGE).any(dim=1)
    unread = batch.loss_mask & torch.isin(batch.targets, shape_ids) & scene_rows[:, None]
    assert unread.any() and (weights[unread] == 0.5).all() and (weights[~unread] == 1).all()
    with pytest.raises(ValueError, match="dropped_shape_weight"):
        train(replace(base, run_dir=tmp_path / "negative", shape_dropout=1.0, dropped_shape_weight=-1.0))
    with pytest.raises(ValueError, match="shape_dropout and colour_dropout need the captions read as 'mask\\+colour'"):
        train(replace(TINY, run_dir=tmp_path / "pixels", steps=1, shape_dropout=0.5))
    with pytest.raises(ValueError, match="captions read as 'mask\\+colour'.*got 'pixels\\+mask'"):
        train(replace(base, run_dir=tmp_path / "caption-block", caption_patch_input="pixels+mask", shape_dropout=0.5))
    with pytest.raises(ValueError, match="shape_dropout is a share"):
        train(replace(base, run_dir=tmp_path / "bad", shape_dropout=1.5))
    with pytest.raises(ValueError, match="colour_dropout is a share"):
        train(replace(base, run_dir=tmp_path / "both", shape_dropout=0.5, colour_dropout=0.6))
    batch, _ = taken[-1]
    assert not batch.patch_route_swap.any()  # dropped, not swapped
    train(replace(base, run_dir=tmp_path / "swapped", shape_dropout=1.0, route_swap=True))
    (batch, weights) = taken[-1]
    scene_rows = (batch.kinds == TokenKind.IMAGE).any(dim=1)
    assert batch.patch_colour_only.any() and torch.equal(batch.patch_route_swap, batch.patch_colour_only)
    size_ids, _ = caption_word_targets(["scenes"], TextTokenizer.default(), "size")
    for word_ids in (shape_ids, size_ids):  # the other route's words, and the size its mask decides, unscored
        unread = batch.loss_mask & torch.isin(batch.targets, word_ids) & scene_rows[:, None]
        assert unread.any() and (weights[unread] == 0).all()
    colour_ids, _ = caption_word_targets(["scenes"], TextTokenizer.default(), "colour")
    read = batch.loss_mask & torch.isin(batch.targets, colour_ids)
    assert read.any() and (weights[read] == 1).all()  # the kept route's words scored
    with pytest.raises(ValueError, match="route_swap reads the dropped route"):
        train(replace(base, run_dir=tmp_path / "nothing-to-swap", route_swap=True))


@pytest.mark.slow
def test_a_colour_swap_recolours_the_scene_rows_tokens_and_leaves_their_colour_words_unscored(tmp_path, monkeypatch):
    _, taken = _watch_route_dropout(monkeypatch)
    base = replace(TINY, steps=1, checkpoint_every=1, patch_input="mask+colour", route_tokens=True, batch_size=4)
    train(replace(base, run_dir=tmp_path / "swapped", colour_swap=1.0))
    (batch, weights), = taken
    scene_rows = (batch.kinds == TokenKind.IMAGE).any(dim=1)
    assert scene_rows.any() and torch.equal(batch.patch_colour_swap, scene_rows[batch.patch_batch_index])
    tokenizer = TextTokenizer.default()
    colour_ids, _ = caption_word_targets(["scenes"], tokenizer, "colour")
    shape_ids, _ = caption_word_targets(["scenes"], tokenizer, "shape")
    unread = batch.loss_mask & torch.isin(batch.targets, colour_ids) & scene_rows[:, None]
    assert unread.any() and (weights[unread] == 0).all() and (weights[~unread] == 1).all()
    read = batch.loss_mask & torch.isin(batch.targets, shape_ids)
    assert read.any()  # the shape words scored: the shape token must name them
    train(replace(base, run_dir=tmp_path / "plain"))
    batch, weights = taken[-1]
    assert not batch.patch_colour_swap.any() and weights is None
    for bad, match in (({"colour_swap": 1.5}, "colour_swap is a share"),
                       ({"colour_swap": 0.5, "route_tokens": False}, "it needs route_tokens"),
                       ({"colour_swap": 0.5, "shape_dropout": 0.25}, "one or the other")):
        with pytest.raises(ValueError, match=match):
            train(replace(base, run_dir=tmp_path / "bad", **bad))


@pytest.mark.slow
def test_colour_dropout_reads_scene_rows_by_shape_alone_and_gives_their_colour_words_no_loss(tmp_path, monkeypatch):
    seen, taken = _watch_route_dropout(monkeypatch)
    train(replace(TINY, steps=1, checkpoint_every=1, patch_input="mask+colour", batch_size=4,
                  run_dir=tmp_path / "dropped", colour_dropout=1.0))
    (dropped, no_rows, rows), = seen
    (batch, weights), = taken
    assert batch is dropped and not no_rows.any()
    scene_rows = (batch.kinds == TokenKind.IMAGE).any(dim=1)
    assert scene_rows.any() and torch.equal(rows, scene_rows)  # probability 1: every scene row, no dialogue row
    assert torch.equal(batch.patch_shape_only, scene_rows[batch.patch_batch_index])
    assert not batch.patch_colour_only.any()
    colour_ids, _ = caption_word_targets(["scenes"], TextTokenizer.default(), "colour")
    unread = batch.loss_mask & torch.isin(batch.targets, colour_ids) & scene_rows[:, None]
    assert unread.any() and (weights[unread] == 0).all() and (weights[~unread] == 1).all()


def test_a_resumed_run_keeps_the_precision_it_started_with():
    where = train_module.Distributed(0, 1, torch.device("cpu"))
    started = {"precision": "fp32", "reason": "CPU capability AVX2: no native bf16"}
    kept = train_module._agreed_precision("auto", where, started)
    assert kept.name == "fp32" and "chosen when the run started" in kept.reason
    assert train_module._agreed_precision("bf16", where, started).name == "bf16"  # a request given now wins


@pytest.mark.slow
def test_a_run_can_start_from_another_checkpoints_weights(tmp_path):
    first = train(replace(TINY, run_dir=tmp_path / "first", steps=2))
    continued = replace(TINY, run_dir=tmp_path / "second", steps=1, init_from=tmp_path / "first", learning_rate=0.0,
                        warmup_steps=1, min_lr_ratio=0.0, weight_decay=0.0)
    second = train(continued)
    # A zero learning rate leaves the weights where the first run left them: the second run started from them.
    for name, tensor in weights_of(first).items():
        torch.testing.assert_close(weights_of(second)[name], tensor, rtol=0, atol=0, msg=name)
    assert read_trainer_state(second)["step"] == 1


def test_starting_from_a_checkpoint_whose_model_the_config_would_build_otherwise_is_refused():
    saved = model_config(TINY, 1000)
    check_same_model(TINY, saved, Path("ckpt"))  # the config's own model: accepted
    check_same_model(TINY, replace(saved, context=4 * TINY.sequence_length), Path("ckpt"))  # longer context: fine
    with pytest.raises(ValueError, match=r"ckpt: the checkpoint's model has patch_input 'pixels\+mask' "
                                         r"\(config: 'pixels'\): give the checkpoint's settings"):
        check_same_model(TINY, replace(saved, patch_input="pixels+mask"), Path("ckpt"))
    with pytest.raises(ValueError, match=r"n_layer 4 \(config: 6\), n_head 4 \(config: 6\), "
                                         r"d_model 256 \(config: 384\)"):
        check_same_model(replace(TINY, model="small"), saved, Path("ckpt"))
    with pytest.raises(ValueError, match="dropout 0.0 \\(config: 0.1\\)"):
        check_same_model(replace(TINY, dropout=0.1), saved, Path("ckpt"))
    with pytest.raises(ValueError, match="a context of 16 tokens cannot read sequences of"):
        check_same_model(TINY, replace(saved, context=16), Path("ckpt"))


@pytest.mark.slow
def test_an_error_inside_the_loop_ends_the_process_with_its_data_workers(tmp_path):
    # The workers ignore SIGTERM; before the fix the process hung at exit, waiting to join them.
    script = (
        "import sys\n"
        "from generalist import train as t\n"
        "from pathlib import Path\n"
        "from generalist.config import TrainConfig\n"
        "def boom(*args, **kwargs):\n"
        "    raise RuntimeError('boom')\n"
        "t._optimizer_step = boom\n"
        "t.train(TrainConfig(run_dir=Path(sys.argv[1]), weights={'dialogue': 1.0}, steps=4, batch_size=1,\n"
        "                     sequence_length=64, num_workers=1, progress=False, precision='fp32'))\n"
    )
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "RuntimeError: boom" in result.stderr
    assert time.monotonic() - started < 60


@pytest.mark.parametrize(("flag", "value"), [("log_every", 0), ("checkpoint_every", 0), ("keep_checkpoints", 0),
                                             ("sequence_length", 0), ("learning_rate", -1.0),
                                             ("interim_minutes", float("nan")), ("precision", "fp16"),
                                             ("scene_size", 32), ("caption_order", "colour-last"),
                                             ("patch_input", "edges"), ("mask_background", "mean"),
                                             ("mask_background", "nearest"), ("decisive_after_ran", True),
                                             ("decisive_held", True), ("caption_patch_input", "edges"),
                                             ("caption_mask_background", "mean"),
                                             ("caption_mask_background", "nearest")])
def test_settings_that_cannot_work_are_refused_before_training(tmp_path, flag, value):
    with pytest.raises(ValueError, match=flag if flag != "precision" else "precision must be one of"):
        train(replace(TINY, run_dir=tmp_path, **{flag: value}))


@pytest.mark.slow
def test_a_fresh_run_never_overwrites_a_run_and_a_resume_writes_where_it_is_told(tmp_path):
    train(replace(TINY, run_dir=tmp_path / "a", steps=2))
    with pytest.raises(ValueError, match="already holds a run .* with --resume"):
        train(replace(TINY, run_dir=tmp_path / "a", steps=2))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    train(replace(TINY, run_dir=tmp_path / "b", steps=3), resume=True)
    assert read_trainer_state(latest_checkpoint(tmp_path / "b"))["step"] == 3
    assert read_trainer_state(latest_checkpoint(tmp_path / "a"))["step"] == 2  # the original is untouched


@pytest.mark.slow
def test_a_resume_refuses_settings_that_would_change_what_the_run_learns(tmp_path):
    train(replace(TINY, run_dir=tmp_path, steps=2))
    with pytest.raises(ValueError, match="weights was .* now .*learning_rate was 0.001, now 0.5"):
        train(replace(TINY, run_dir=tmp_path, weights={"dialogue": 1.0}, learning_rate=0.5), resume=True)
    assert read_trainer_state(latest_checkpoint(tmp_path))["step"] == 2  # nothing trained


def test_a_second_training_into_one_run_directory_is_refused(tmp_path):
    from generalist.lock import exclusive

    with exclusive(tmp_path, "a training run"), pytest.raises(ValueError, match="being written by another process"):
        train(replace(TINY, run_dir=tmp_path))


def test_a_run_trains_with_a_text_tokenizer_of_its_own_and_keeps_it(tmp_path):
    from generalist.checkpoint import load_model
    from generalist.datasets.text import CHAT_MARKERS, tokenizer_lines
    from generalist.tokenizers.text import TextTokenizerConfig, train_text_tokenizer

    path = tmp_path / "small.model"
    config = TextTokenizerConfig(vocab_size=700, user_defined_symbols=CHAT_MARKERS)
    train_text_tokenizer(tokenizer_lines()[:3000], config, out=path)
    checkpoint = train(replace(TINY, run_dir=tmp_path / "run", text_tokenizer=path, steps=2))
    model, tokenizer = load_model(checkpoint)
    assert tokenizer.vocab_size == 700 != TextTokenizer.default().vocab_size
    assert model.config.text_vocab_size == 700
    assert tokenizer.encode("hello there").tolist() == TextTokenizer.load(path).encode("hello there").tolist()


def test_colour_recombination_beside_the_colour_swap_is_refused(tmp_path):
    base = replace(TINY, patch_input="mask+colour", route_tokens=True, scene_size=48, colour_recombine=0.5)
    train_module.check_config(base)  # the setting as meant
    with pytest.raises(ValueError, match="one or the other"):
        train_module.check_config(replace(base, colour_swap=0.25))
    # What the scene source cannot draw is refused as the run builds its sources, before any step.
    with pytest.raises(ValueError, match="48-pixel scenes"):
        train(replace(base, run_dir=tmp_path / "run", scene_size=64))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_recombined_scenes_train_a_step_with_colour_tokens_read_from_other_patches(tmp_path, monkeypatch):
    _, taken = _watch_route_dropout(monkeypatch)
    base = replace(TINY, steps=1, checkpoint_every=1, patch_input="mask+colour", route_tokens=True, scene_size=48,
                   weights={"textured_scenes": 1.0}, batch_size=8)
    train(replace(base, run_dir=tmp_path / "recombined", colour_recombine=1.0))
    train(replace(base, run_dir=tmp_path / "plain"))
    (recombined, _), (plain, _) = taken
    moved = (recombined.patches[1::2] != recombined.patches[0::2]).flatten(1).any(1)  # (patches,)
    assert moved.any() and not moved.all()  # some colour tokens read another object's patch; empty ones their own
    assert torch.equal(plain.patches[1::2], plain.patches[0::2])  # without it, every token its own patch
