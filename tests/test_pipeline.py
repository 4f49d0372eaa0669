"""The `generalist run` pipeline's pieces: presets, resuming, the report's plots and tables."""

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from generalist import pipeline
from generalist import train as train_module
from generalist.checkpoint import TRAINER_STATE, read_trainer_state, save_model
from generalist.config import (
    CAPTION_TRAINING,
    CONTROL_WEIGHTS,
    RUN_PRESETS,
    RecordConfig,
    ReportConfig,
    RunConfig,
    TrainConfig,
    full,
    language,
    pong,
    run_preset,
    smoke,
)
from generalist.datasets.storage import EpisodeDataset
from generalist.envs import TASKS, expert_normalized, load_baselines, step_cap
from generalist.evaluate import TaskResult
from generalist.model import Generalist, tiny
from generalist.pipeline import (
    control_tasks,
    given_cloning,
    learning_curves,
    record_missing,
    run_pipeline,
    train_config,
    train_missing_tokenizer,
    train_stage,
)
from generalist.report import (
    _command,
    _smooth,
    final_task_losses,
    plot_score_curves,
    plot_scores,
    plot_task_losses,
    read_metrics,
)
from generalist.tokenizers.text import TextTokenizer


def test_presets_are_named_functions_and_unknown_presets_are_errors():
    assert set(RUN_PRESETS) == {"cpu", "control", "pong", "language", "full", "smoke", "gpu"}
    assert all(run_preset(name).preset == name for name in RUN_PRESETS)
    with pytest.raises(ValueError, match="unknown preset 'x'; known: cpu, control, pong, language, full, smoke, gpu"):
        run_preset("x")


def test_every_preset_passes_the_training_config_checks():
    for preset in RUN_PRESETS.values():
        train_module.check_config(preset().train)  # raises on settings that contradict each other
        train_module.model_config(preset().train, text_vocab_size=8192)  # and so does the model's config
    assert language().train.patch_input == "mask+colour" and language().train.mask_background == "nearest"
    assert language().train.route_tokens and language().train.shape_dropout == 0.0  # the two tokens' recipe
    assert language().train.colour_recombine == 1.0 and language().train.colour_recombine_uniform
    assert language().train.colour_centre_gate and language().train.centre_colour_tokens  # the gate scales centring
    assert language().train.shape_weight == language().train.colour_weight == 2.0
    assert (language().train.schedule, language().train.steps) == ("steps", 1299)  # the measured run, repeatable


def test_the_full_preset_trains_every_task_and_the_language_presets_corpora():
    weights = full().train.weights
    assert len(control_tasks(weights)) == 9
    assert {task: weights[task] for task in language().train.weights} == language().train.weights
    assert full().record.text_corpus == language().record.text_corpus == "chitchat"


def test_the_full_presets_rounds_keep_the_control_weights_and_a_quarter_of_every_other_task():
    config = full()
    rounds, weights = config.record.dagger_weights, config.train.weights
    assert set(rounds) == set(weights)
    for task, weight in weights.items():
        assert rounds[task] == (weight if task in control_tasks(CONTROL_WEIGHTS) else weight / 4)
    assert pipeline.dagger_tasks(config) == list(config.record.dagger_tasks)  # the driven tasks are in it


def test_the_full_preset_reads_the_frames_as_the_pong_preset_and_the_captions_as_the_language_preset():
    generalist, pong_specialist, language_specialist = full().train, pong().train, language().train
    assert (generalist.patch_input, generalist.mask_background) == \
        (pong_specialist.patch_input, pong_specialist.mask_background)
    assert (generalist.caption_patch_input, generalist.caption_mask_background) == \
        (language_specialist.patch_input, language_specialist.mask_background)
    caption_settings = ("centre_patches", "shape_dropout", *CAPTION_TRAINING)  # a setting added there is compared
    assert [getattr(generalist, name) for name in caption_settings] == \
        [getattr(language_specialist, name) for name in caption_settings]


def test_every_presets_cut_atari_games_have_baselines_cut_the_same_way():
    baselines = load_baselines()
    cut = {name: preset().eval.max_episode_steps for name, preset in RUN_PRESETS.items()}
    assert cut["full"] == cut["gpu"] == 2000 and cut["pong"] is None  # the specialist's target is whole games
    for name, steps in cut.items():
        for task in [t for t in run_preset(name).train.weights if t in TASKS and TASKS[t].is_atari]:
            entry = baselines["tasks"][task]
            reference = entry if step_cap(task, steps) is None else entry["capped"][str(steps)]
            assert reference["expert"]["mean"] > reference["random"]["mean"], (name, task)
            assert expert_normalized(task, reference["expert"]["mean"], max_episode_steps=steps) == pytest.approx(1)


def test_a_run_trains_its_own_text_tokenizer_once_and_trains_with_it(tmp_path, monkeypatch):
    words = ["".join(w) for w in np.random.default_rng(0).choice(list("abcdefghijklmnop"), (3000, 5))]
    lines = [" ".join(words[i:i + 10]) for i in range(0, 3000, 10)]
    corpora = []
    monkeypatch.setattr(pipeline, "tokenizer_lines", lambda corpus: corpora.append(corpus) or lines)
    base = language()
    config = replace(base, name="lang", runs_dir=tmp_path, train=replace(base.train, data_dir=tmp_path / "data"),
                     record=replace(base.record, text_vocab_size=320))
    path = tmp_path / "data" / "tokenizers" / "chitchat-320.model"
    assert train_missing_tokenizer(config) == path
    assert TextTokenizer.load(path).vocab_size == 320 and corpora == ["chitchat"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left behind
    assert train_missing_tokenizer(config) is None and corpora == ["chitchat"]  # a rerun keeps it
    assert train_config(config).text_tokenizer == path

    named = replace(config, train=replace(config.train, text_tokenizer=tmp_path / "mine.model"))
    assert train_missing_tokenizer(named) is None and train_config(named).text_tokenizer == tmp_path / "mine.model"
    with pytest.raises(ValueError, match="text-corpus must be one of shipped, chitchat, got 'wiki'"):
        train_missing_tokenizer(replace(config, record=replace(config.record, text_corpus="wiki")))
    shipped = replace(config, record=RecordConfig())
    assert train_missing_tokenizer(shipped) is None and train_config(shipped).text_tokenizer is None


def test_the_report_names_the_preset_and_the_flags_that_differ_from_it():
    config = replace(full(), name="x", train=replace(full().train, steps=10, weights={"cartpole": 1.0}))
    assert _command(config) == "generalist run --preset full --name x --train.weights cartpole=1 --train.steps 10"
    assert _command(smoke()) == "generalist run --preset smoke"


def test_the_report_shows_what_each_rounds_agent_did_with_named_actions(tmp_path):
    from generalist.report import RunResults, write_report

    driven = {"episodes": 16, "mean_length": 825.4, "mean_return": -20.875, "agreement": 0.115,
              "ran": {0: 0.87, 1: 0.0, 2: 0.10, 3: 0.03}, "asked": {0: 0.09, 1: 0.0, 2: 0.19, 3: 0.72}}
    results = RunResults(checkpoint="c", step=1, tokens=1, train_minutes=1.0, control=[], control_unprompted=[],
                         captions=None, chat=None, dagger=[{"round": 1, "driver": "d", "checkpoint": "c", "steps": 315,
                                                            "driven": {"pong": driven}}])
    report = write_report(tmp_path, results, replace(smoke(), runs_dir=tmp_path), "machine").read_text()
    (row,) = [line for line in report.splitlines() if line.startswith("| 1 | `d` | pong |")]
    assert "| 16 | 825 | -20.9 | 11.5% | NOOP: 87%, FIRE: 0%, UP: 10%, DOWN: 3% |" in row
    assert "| NOOP: 9%, FIRE: 0%, UP: 19%, DOWN: 72% | 315 |" in row


def test_the_report_splits_caption_shapes_and_colours_by_pair_and_lists_the_colour_mistakes(tmp_path):
    from generalist.datasets.scenes import generate_scene
    from generalist.evaluate import caption_scores
    from generalist.report import CaptionReport, RunResults, write_report

    scenes = [generate_scene(seed, "heldout") for seed in range(6)]
    wrong = [scene.caption.replace(f" {scene.objects[0].colour} ", " purple ", 1) for scene in scenes]
    scores = caption_scores(wrong, scenes)
    captions = CaptionReport(scores, [], [], {"plain": scores})
    results = RunResults(checkpoint="c", step=1, tokens=1, train_minutes=1.0, control=[], control_unprompted=[],
                         captions=captions, chat=None)
    report = write_report(tmp_path, results, replace(smoke(), runs_dir=tmp_path), "machine").read_text()
    (row,) = [line for line in report.splitlines() if line.startswith("| plain |")]
    colours = " / ".join(f"{scores.colour_by_pair[p]:.1%}" for p in ("held-out", "trained"))
    worst, count = next(iter(scores.colour_mistakes.items()))
    assert scores.per_attribute["colour"] < 1.0 and f"| {colours} |" in row and f"{worst} ({count})" in row


def _smoke(tmp_path: Path, **train: object) -> RunConfig:
    base = smoke()
    return replace(base, name="r", runs_dir=tmp_path, train=replace(
        base.train, data_dir=tmp_path / "data", progress=False, num_workers=0, **train))


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_its_last_step(tmp_path, monkeypatch, capsys):
    config = _smoke(tmp_path, steps=3)
    assert record_missing(config) == ["cartpole"]
    assert record_missing(config) == []

    calls = []
    original = train_module.save_checkpoint

    def crash_after_first_checkpoint(*args, **kwargs):
        calls.append(args[5])  # the step
        if len(calls) == 2:
            raise KeyboardInterrupt  # the machine went away after step 1's checkpoint
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", crash_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_stage(config)
    monkeypatch.setattr(train_module, "save_checkpoint", original)
    assert read_trainer_state(tmp_path / "r" / "checkpoints" / "step-0000001")["step"] == 1

    final = train_stage(config)
    assert "resuming" in capsys.readouterr().out
    assert final.name == "step-0000003" and read_trainer_state(final)["step"] == 3
    assert "training finished" not in capsys.readouterr().out
    assert train_stage(config) == final
    assert "training finished" in capsys.readouterr().out


def test_metrics_keep_the_last_value_of_a_repeated_step(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,metric,value\n1,train/loss,3\n2,train/loss,2\n2,train/loss,1.5\n1,eval/x,0.5\n")
    metrics = read_metrics(path)
    steps, values = metrics["train/loss"]
    assert steps.tolist() == [1, 2] and values.tolist() == [3.0, 1.5]
    assert metrics["eval/x"][1].tolist() == [0.5]


def test_task_losses_average_the_last_tenth_of_the_run(tmp_path):
    path = tmp_path / "metrics.csv"
    rows = [f"{step},task_loss/pong,{100 - step}" for step in range(10, 101, 10)]
    rows += ["20,task_loss/digits,7", "95,train/loss,1"]  # digits logged only early; not a task loss
    path.write_text("step,metric,value\n" + "\n".join(rows) + "\n")
    metrics = read_metrics(path)
    assert final_task_losses(metrics) == {"pong": 5.0}  # steps 90 and 100: 10 and 0
    assert final_task_losses(metrics, fraction=0.25) == pytest.approx({"pong": 10.0})  # steps 80, 90, 100
    assert final_task_losses({}) == {}
    assert plot_task_losses(metrics, tmp_path / "tasks.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_task_losses({"train/loss": metrics["train/loss"]}, tmp_path / "none.png") is None


def test_smoothing_is_a_trailing_mean():
    values = np.array([1.0, 3.0, 5.0, 7.0])
    assert np.allclose(_smooth(values, 2), [1.0, 2.0, 4.0, 6.0])
    assert np.allclose(_smooth(values, 1), values)


def test_score_plot_skips_tasks_without_scores(tmp_path):
    failed = TaskResult("pong", error="RuntimeError: boom")
    assert plot_scores([failed], tmp_path / "none.png") is None
    played = TaskResult("cartpole", returns=[100.0], lengths=[100], normalized=0.16)
    assert not math.isnan(played.normalized)
    path = plot_scores([failed, played], tmp_path / "scores.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"


def test_the_score_curve_plot_draws_perplexity_in_its_own_panel(tmp_path):
    scores_only = plot_score_curves({"cartpole/normalized": {1: 0.2, 2: 0.5}}, tmp_path / "scores.png")
    both = plot_score_curves(
        {"cartpole/normalized": {1: 0.2, 2: 0.5}, "chat/perplexity": {1: 900.0, 2: 60.0}}, tmp_path / "both.png"
    )
    perplexity_only = plot_score_curves({"chat/perplexity": {1: 900.0}}, tmp_path / "perplexity.png")
    assert plot_score_curves({}, tmp_path / "none.png") is None
    widths = [_png_width(path) for path in (scores_only, both, perplexity_only)]
    assert widths[1] == 2 * widths[0] and widths[2] == widths[0]


def _png_width(path: Path | None) -> int:
    assert path is not None
    return int.from_bytes(path.read_bytes()[16:20], "big")


def test_a_time_budget_becomes_a_time_schedule_with_evenly_spaced_checkpoints():
    cpu = run_preset("cpu")
    config = replace(cpu, train=replace(cpu.train, max_minutes=12))
    train = train_config(config)
    assert (train.schedule, train.max_minutes, train.checkpoint_minutes) == ("time", 12, 3)
    assert train.keep_checkpoints == cpu.report.curve_points + 1 and train.run_dir == Path("runs/default")
    fixed = train_config(full())
    assert (fixed.schedule, fixed.steps, fixed.checkpoint_every, fixed.checkpoint_minutes) == ("steps", 4000, 500, None)
    assert isinstance(fixed, TrainConfig)


def test_rerunning_a_run_with_other_training_settings_is_refused(tmp_path):
    from generalist.flags import save_json
    from generalist.pipeline import RUN_CONFIG, check_same_run

    config = _smoke(tmp_path)
    config.run_dir.mkdir(parents=True)
    save_json(config, config.run_dir / RUN_CONFIG)
    check_same_run(replace(config, eval=replace(config.eval, episodes=7)))  # re-evaluating is a rerun's business
    check_same_run(replace(config, record=replace(config.record, dagger_rounds=4)))  # and so is a round more
    changed = replace(config, train=replace(config.train, steps=5, weights={"cartpole": 1.0}))
    with pytest.raises(ValueError, match=r"train.weights=.* train.steps=2 \(now 5\).*another --name"):
        check_same_run(changed)


def test_dagger_tasks_must_be_control_tasks_the_run_trains_on(tmp_path):
    from generalist.config import RecordConfig
    from generalist.pipeline import dagger_tasks

    config = _smoke(tmp_path, weights={"cartpole": 1.0, "scenes": 1.0})
    config = replace(config, record=RecordConfig(dagger_rounds=1, dagger_minutes=1.0))
    assert dagger_tasks(config) == ["cartpole"]
    for named in (("pendulum",), ("scenes",)):
        with pytest.raises(ValueError, match=f"names {named[0]}, not among the control tasks .*cartpole"):
            dagger_tasks(replace(config, record=replace(config.record, dagger_tasks=named)))
        # without rounds nothing is driven: a preset's tasks do not bind a run that trains on others
        assert dagger_tasks(replace(config, record=RecordConfig(dagger_tasks=named))) == []
        with pytest.raises(ValueError, match="dagger-tasks"):
            run_pipeline(replace(config, record=RecordConfig(dagger_rounds=1, dagger_tasks=named)))
    untimed = replace(config, train=replace(config.train, max_minutes=None), record=RecordConfig(dagger_rounds=1))
    with pytest.raises(ValueError, match="DAgger rounds train for a time"):
        run_pipeline(untimed)
    assert dagger_tasks(replace(untimed, record=RecordConfig(dagger_rounds=1, dagger_minutes=5.0))) == ["cartpole"]
    # The rounds' own mixture: a part of the run's, with every driven task in it.
    assert dagger_tasks(replace(config, record=replace(config.record, dagger_weights={"cartpole": 1.0}))) == \
        ["cartpole"]
    for rounds_mixture in ({"scenes": 1.0}, {"cartpole": 1.0, "pendulum": 1.0}, {"cartpole": 0.0}, {}):
        with pytest.raises(ValueError, match="dagger-weights is a part of the run's mixture"):
            run_pipeline(replace(config, record=replace(config.record, dagger_weights=rounds_mixture)))
    assert not config.run_dir.exists()  # refused before anything was written


def test_every_preset_drives_only_control_tasks_it_trains_on():
    from generalist.config import RUN_PRESETS
    from generalist.pipeline import dagger_tasks

    for name, preset in RUN_PRESETS.items():
        config = preset()  # a preset that names a task it does not train on fails here, not hours into a run
        driven = dagger_tasks(config)
        assert set(driven) <= set(config.train.weights), name
        assert bool(driven) == bool(control_tasks(config.train.weights) and config.record.dagger_rounds), name


@pytest.mark.slow
def test_dagger_rounds_record_with_the_agent_then_continue_training_and_resume(tmp_path, capsys):
    from generalist.config import RecordConfig
    from generalist.pipeline import dagger_stage

    config = _smoke(tmp_path, steps=2)
    record = RecordConfig(episodes=2, dagger_rounds=1, dagger_episodes=2, dagger_learning_rate=3e-4,
                          dagger_minutes=0.05, dagger_accumulation=2, dagger_tasks=("cartpole",),
                          dagger_weights={"cartpole": 1.0})
    config = replace(config, record=record, train=replace(config.train, weights={"cartpole": 1.0, "acrobot": 1.0}))
    record_missing(config)
    first = train_stage(config)
    last, rounds = dagger_stage(config, first)
    learner = EpisodeDataset(config.run_dir / "dagger-1" / "cartpole")
    assert len(learner) == 2 and learner.index["driver"]["checkpoint"] == str(first.resolve())
    assert last.parent.parent == config.run_dir / "round-1"
    trained = read_trainer_state(last)["train_config"]
    assert trained.init_from == first and trained.learner_data_dir == config.run_dir
    first_trained = read_trainer_state(first)["train_config"]
    assert (trained.learning_rate, trained.max_minutes, trained.accumulation) == (3e-4, 0.05, 2)
    assert (trained.weights, first_trained.weights) == ({"cartpole": 1.0}, {"cartpole": 1.0, "acrobot": 1.0})
    assert (first_trained.learning_rate, first_trained.max_minutes, first_trained.accumulation) == (
        config.train.learning_rate, config.train.max_minutes, 1)
    # The round's warm-up and cosine span its minutes, whatever the first training's schedule.
    assert (trained.schedule, trained.warmup_steps) == ("time", record.dagger_warmup_steps)
    assert (first_trained.schedule, first_trained.warmup_steps) == ("steps", 1)
    assert rounds[0]["driver"] == str(first)
    games = rounds[0]["driven"]["cartpole"]  # what the agent did, read back from the recording
    ran = np.concatenate([learner.executed_actions(e) for e in range(2)]).reshape(-1)
    asked = np.concatenate([learner.actions(e) for e in range(2)]).reshape(-1)
    assert games["episodes"] == 2 and games["mean_length"] == len(ran) / 2
    assert games["agreement"] == pytest.approx((ran == asked).mean())
    assert games["ran"][1] == pytest.approx((ran == 1).mean())
    assert games["asked"][1] == pytest.approx((asked == 1).mean())
    assert sum(games["ran"].values()) == pytest.approx(1.0)
    assert not (config.run_dir / "dagger-1" / "acrobot").exists()  # trained on, but not one of the round's tasks
    again, _ = dagger_stage(config, first)  # a rerun records nothing twice and trains nothing again
    assert again == last and len(EpisodeDataset(config.run_dir / "dagger-1" / "cartpole")) == 2
    assert "training finished" in capsys.readouterr().out


def test_a_given_cloning_must_be_a_training_checkpoint(tmp_path):
    exported = tmp_path / "exported"  # a model without a trainer state: weights, but no training to go on from
    save_model(Generalist(tiny(n_layer=1, d_model=32, n_head=2, d_ff=64, context=128)), exported,
               TextTokenizer.default())
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        given_cloning(exported, TrainConfig())
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        given_cloning(tmp_path / "missing", TrainConfig())


@pytest.mark.slow
def test_a_run_given_a_cloning_goes_on_from_it_to_its_rounds_and_evaluation(tmp_path, monkeypatch):
    cloned = _smoke(tmp_path, steps=1, weights={"cartpole": 1.0})
    cloned = replace(cloned, record=RecordConfig(episodes=2), report=ReportConfig(curve_points=0))
    record_missing(cloned)
    checkpoint = train_stage(cloned)
    with pytest.raises(ValueError, match="--frame-stack"):  # the rounds would train another model than asked
        given_cloning(cloned.run_dir, replace(cloned.train, frame_stack=2))

    config = replace(cloned, name="from-cloning", cloning=cloned.run_dir, record=RecordConfig(
        episodes=2, dagger_rounds=1, dagger_episodes=1, dagger_minutes=0.02, dagger_tasks=("cartpole",)),
        eval=replace(cloned.eval, episodes=1))
    trainings = []
    real_train_stage = pipeline.train_stage
    monkeypatch.setattr(pipeline, "train_stage", lambda c: trainings.append(c.name) or real_train_stage(c))
    results = run_pipeline(config)
    assert trainings == ["from-cloning/round-1"]  # the round's training only
    assert not (config.run_dir / "checkpoints").exists()
    assert results.dagger[0]["driver"] == str(checkpoint)
    assert read_trainer_state(results.checkpoint)["train_config"].init_from == checkpoint
    assert [r.task for r in results.control] == ["cartpole"]

    first_round = Path(results.checkpoint)
    trained_at = (first_round / TRAINER_STATE).stat().st_mtime_ns
    more = run_pipeline(replace(config, record=replace(config.record, dagger_rounds=2)))  # a rerun with a round more
    assert [r["driver"] for r in more.dagger] == [str(checkpoint), str(first_round)]
    assert (first_round / TRAINER_STATE).stat().st_mtime_ns == trained_at  # round 1 found finished, not retrained
    assert read_trainer_state(more.checkpoint)["train_config"].init_from == first_round


@pytest.mark.parametrize("scene_task", ["scenes", "textured_scenes"])
def test_the_learning_curves_score_captions_of_a_run_trained_on_any_scenes(tmp_path, scene_task):
    text = TextTokenizer.default()
    config = RunConfig(name="curves", runs_dir=tmp_path, train=TrainConfig(weights={scene_task: 1.0}, scene_size=48),
                       report=ReportConfig(curve_points=1, curve_scenes=2))
    torch.manual_seed(0)
    save_model(Generalist(tiny(n_layer=1, d_model=32, n_head=2, d_ff=64, context=128)), config.run_dir /
               "checkpoints" / "step-0000001", text)
    curves = learning_curves(config, config.eval)
    assert set(curves) == {"captions/attribute_accuracy"} and 0 <= curves["captions/attribute_accuracy"][1] <= 1
