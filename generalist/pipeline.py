"""`generalist run`: the whole pipeline in one command: record, train for a time budget, evaluate, report.

Design choices:
- A preset (config.py: `cpu()`, `control()`, `pong()`, `language()`, `full()`, `smoke()`) names a whole
  experiment: the model, the task mixture, how much data to record, how long to train and how to evaluate. `cpu`
  (the default) fits about half an hour of this 2-core machine; `control` the seven vector tasks with four DAgger
  rounds; `pong` and `language` the specialists of issues 18 and 20; `full` trains all nine tasks for up to three
  hours (4,000 steps), then the control rounds; `smoke` checks the plumbing in seconds.
  Flags override a preset; the resolved config is saved as the run's config.json.
- A time budget is a schedule over time (`TrainConfig.schedule="time"`): the cosine spans the minutes given
  and the run stops there, however fast the machine turns out to be (a step count measured up front is wrong
  as soon as another process starts or stops sharing the cores). Checkpoints fall at even fractions of the
  run (`ReportConfig.curve_points`): the run sets the training's checkpoint spacing from it.
- Rerunning the same command continues where it stopped: missing data is recorded, an unfinished training
  resumes exactly from its latest checkpoint, and the evaluation and report are made again.
- Learning curves of the scores come from re-evaluating the checkpoints kept along the way (few episodes
  each), not from evaluations inside the training loop, so they do not eat the training budget.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generalist.atomic import write_text_atomically
from generalist.checkpoint import (
    TRAINER_STATE,
    checkpoint_step,
    find_latest,
    list_checkpoints,
    load_model,
    read_model_config,
    read_trainer_state,
    resolve,
)
from generalist.config import (
    CHAT_SEED,
    CHAT_TEMPERATURE,
    CHAT_TOP_K,
    DIAGNOSIS_SEED,
    TIME_BUDGET_STEPS,
    CollectConfig,
    EvalConfig,
    RunConfig,
    TrainConfig,
)
from generalist.dagger import driven_games, learner_driver
from generalist.datasets.captions import skimage_samples
from generalist.datasets.mixture import SCENE_TASK_STYLES
from generalist.datasets.recording import collect, episodes_on_disk
from generalist.datasets.scenes import IMAGE_SIZE, generate_scene
from generalist.datasets.storage import EpisodeDataset
from generalist.datasets.text import (
    CHAT_MARKERS,
    CHAT_PROMPTS,
    TOKENIZER_CORPORA,
    chitchat_split,
    corpus_vocabulary,
    heldout_conversations,
    tokenizer_lines,
)
from generalist.diagnose import Diagnosis, diagnose
from generalist.envs import control_tasks, evaluated_tasks, get_task
from generalist.evaluate import (
    TaskResult,
    caption_images,
    chat_perplexities,
    chat_perplexity,
    chat_reply,
    evaluate,
    evaluate_captions,
    evaluate_emoji,
    format_table,
    reply_checks,
)
from generalist.flags import leaf_fields, load_json, save_json
from generalist.report import PERPLEXITY_CURVE, CaptionReport, ChatReport, RunResults, write_report
from generalist.tokenizers.text import TextTokenizerConfig, train_text_tokenizer
from generalist.train import check_same_model, read_precision, train

RUN_CONFIG = "config.json"


# ------------------------------------------------------------------------------------------------ stages


def record_missing(config: RunConfig) -> list[str]:
    """Record the datasets the mixture needs that the data directory lacks or holds too few episodes of."""
    data_dir, record = config.train.data_dir, config.record
    recorded = []
    for task in control_tasks(config.train.weights):
        atari = get_task(task).is_atari
        wanted = record.atari_episodes if atari else record.episodes
        if episodes_on_disk(data_dir / task) >= wanted:
            continue
        print(f"recording {wanted} expert episodes of {task} into {data_dir / task}", flush=True)
        collect(CollectConfig(
            tasks=(task,), episodes=wanted, out=data_dir, progress=config.train.progress,
            max_episode_steps=record.atari_max_steps if atari else None,
        ))
        recorded.append(task)
    return recorded


def run_tokenizer_path(config: RunConfig) -> Path | None:
    """Where the run's own text tokenizer (`record.text_corpus`) lives; None when it trains none."""
    record = config.record
    if record.text_corpus is None or config.train.text_tokenizer is not None:
        return None
    if record.text_corpus not in TOKENIZER_CORPORA:
        raise ValueError(f"--record.text-corpus must be one of {', '.join(TOKENIZER_CORPORA)}, "
                         f"got {record.text_corpus!r}")
    return config.train.data_dir / "tokenizers" / f"{record.text_corpus}-{record.text_vocab_size}.model"


def train_missing_tokenizer(config: RunConfig) -> Path | None:
    """Train the run's own text tokenizer if it is missing (written whole or not at all); its path, if trained."""
    path = run_tokenizer_path(config)
    if path is None or path.is_file():
        return None
    print(f"training a {config.record.text_vocab_size}-piece text tokenizer on the {config.record.text_corpus} "
          f"corpus into {path}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    train_text_tokenizer(
        tokenizer_lines(config.record.text_corpus),
        TextTokenizerConfig(vocab_size=config.record.text_vocab_size, user_defined_symbols=CHAT_MARKERS),
        out=path,
    )
    return path


# Settings a rerun of an existing run may change: how it is watched, how many driven episodes it plays at once,
# how many DAgger rounds it has (each round trains from the one before, so more rounds go on from the last one
# finished, and fewer evaluate an earlier round), and how it is evaluated and reported.
RERUN_MAY_CHANGE = ("train.progress", "train.num_workers", "train.device", "record.dagger_num_envs",
                    "record.dagger_rounds", "eval.", "report.")


def check_same_run(config: RunConfig) -> None:
    """Refuse to rerun an existing run with other training settings (a rerun resumes it, it does not retrain)."""
    path = config.run_dir / RUN_CONFIG
    if not path.is_file():
        return
    saved = load_json(RunConfig, path)
    differ = []
    for dotted, *_ in leaf_fields(RunConfig):
        now, before = config, saved
        for part in dotted.split("."):
            now, before = getattr(now, part), getattr(before, part)
        if now != before and not any(dotted == allowed or dotted.startswith(allowed) for allowed in RERUN_MAY_CHANGE):
            differ.append(f"{dotted}={before!r} (now {now!r})")
    if differ:
        raise ValueError(f"{config.run_dir} was run with {'; '.join(differ)}: rerunning it resumes that run, it "
                         "does not retrain it; choose another --name for other settings")


def train_config(config: RunConfig) -> TrainConfig:
    """The run's `TrainConfig`: in the run's directory, checkpoints spaced for the learning curves."""
    train = config.train
    curve_points = max(config.report.curve_points, 1)
    by_time = train.schedule == "time"
    return replace(
        train, run_dir=config.run_dir, text_tokenizer=train.text_tokenizer or run_tokenizer_path(config),
        checkpoint_every=train.steps if by_time else max(train.steps // curve_points, 1),
        checkpoint_minutes=train.max_minutes / curve_points if by_time and train.max_minutes else None,
        keep_checkpoints=curve_points + 1, log_every=10 if by_time else max(min(10, train.steps // 50), 1),
    )


def round_minutes(config: RunConfig) -> float | None:
    """Training minutes of each DAgger round: `record.dagger_minutes`, else the first training's."""
    return config.record.dagger_minutes or config.train.max_minutes


def dagger_tasks(config: RunConfig) -> list[str]:
    """The control tasks DAgger rounds drive (none without rounds); naming one the mixture does not train on, or
    rounds without a time to train for, is an error."""
    if not config.record.dagger_rounds:
        return []  # a preset's driven tasks do not bind a run without rounds (`pong` with --weights breakout=1)
    if not round_minutes(config):
        raise ValueError("DAgger rounds train for a time: give --record.dagger-minutes (or --max-minutes)")
    trained = control_tasks(config.train.weights)
    unknown = [task for task in config.record.dagger_tasks if task not in trained]
    if unknown:
        raise ValueError(f"--record.dagger-tasks names {', '.join(unknown)}, not among the control tasks this run "
                         f"trains on ({', '.join(trained) or 'none'})")
    driven = list(config.record.dagger_tasks) or trained
    rounds_mixture = config.record.dagger_weights
    if rounds_mixture is not None:
        outside = [task for task in rounds_mixture if task not in config.train.weights]
        undriven = [task for task in driven if rounds_mixture.get(task, 0) <= 0]
        if outside or undriven or not rounds_mixture:
            mixture = ", ".join(config.train.weights)
            raise ValueError(f"--record.dagger-weights is a part of the run's mixture ({mixture}) holding every "
                             f"driven task ({', '.join(driven)}); got {rounds_mixture}")
    return driven


DAGGER_SEED = 2_000_000
"""First seed of DAgger rounds' episodes (round k from DAGGER_SEED + 100,000 k): far from recording (0 on), the
score baselines (1,000,000 on) and evaluation (5,000,000 on)."""


def dagger_stage(config: RunConfig, checkpoint: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Run the DAgger rounds after the first training; the last checkpoint and what each round recorded.

    Every step is idempotent, so a rerun after a kill resumes: a recording resumes at its next seed (its index
    names the checkpoint that drives it), a round's training resumes or is found finished.
    """
    rounds = []
    tasks = dagger_tasks(config)
    for k in range(1, config.record.dagger_rounds + 1):
        learner_dir = config.run_dir / f"dagger-{k}"
        for task in tasks:
            collect_config = CollectConfig(
                tasks=(task,), episodes=config.record.dagger_episodes, out=learner_dir,
                first_seed=DAGGER_SEED + 100_000 * k, beta=config.record.dagger_beta, prompt_data=config.train.data_dir,
                num_envs=config.record.dagger_num_envs,
                max_episode_steps=config.record.atari_max_steps if get_task(task).is_atari else None,
                progress=config.train.progress,
            )
            print(f"DAgger round {k}: {checkpoint} drives {collect_config.episodes} episodes of {task}", flush=True)
            collect(collect_config, partial(learner_driver, checkpoint, config=collect_config))
        driven = {task: EpisodeDataset(learner_dir / task) for task in tasks}
        driver = checkpoint
        round_config = replace(config, name=f"{config.name}/round-{k}", train=replace(
            config.train, init_from=checkpoint, learner_data_dir=config.run_dir,  # rounds 1..k
            weights=config.record.dagger_weights or config.train.weights,
            learning_rate=config.record.dagger_learning_rate or config.train.learning_rate,
            accumulation=config.record.dagger_accumulation or config.train.accumulation,
            schedule="time", steps=TIME_BUDGET_STEPS, warmup_steps=config.record.dagger_warmup_steps,
            max_minutes=round_minutes(config)))
        checkpoint = train_stage(round_config)
        rounds.append({
            "round": k, "driver": str(driver), "checkpoint": str(checkpoint),
            "steps": read_trainer_state(checkpoint)["step"],
            "driven": {task: driven_games(data) for task, data in driven.items()},
        })
    return checkpoint, rounds


def train_stage(config: RunConfig) -> Path:
    """Train the run, or resume it if it stopped early, or do nothing if it finished; its final checkpoint."""
    checkpoint = find_latest(config.run_dir)
    if checkpoint is not None:
        state = read_trainer_state(checkpoint)
        saved = state["train_config"]
        out_of_time = saved.max_minutes is not None and state["minutes"] >= saved.max_minutes
        if state["step"] >= saved.steps or out_of_time:
            print(f"training finished: {checkpoint}", flush=True)
            return checkpoint
        print(f"resuming {config.run_dir} at step {state['step']} of {saved.steps}", flush=True)
        resumed = replace(saved, progress=config.train.progress, num_workers=config.train.num_workers)
        return train(resumed, resume=True, eval_config=config.eval)
    return train(train_config(config), eval_config=config.eval)


def given_cloning(cloning: Path, train: TrainConfig) -> Path:
    """The checkpoint `--cloning` names, in place of the run's own first training; refused unless it is a training
    checkpoint of the model `train` builds (frames, sizes, patch blocks), so the rounds train what the run asks."""
    checkpoint = resolve(cloning)
    if not (checkpoint / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"--cloning {cloning}: {checkpoint} is not a training checkpoint (no {TRAINER_STATE})")
    check_same_model(train, read_model_config(checkpoint), checkpoint)
    print(f"cloning: {checkpoint} stands in for this run's training", flush=True)
    return checkpoint


def evaluate_captions_stage(
    model: Any, tokenizer: Any, scenes: int, seed: int, styles: tuple[str, ...] = (), emoji: bool = False,
    scene_size: int = IMAGE_SIZE,
) -> CaptionReport:
    """Caption held-out scenes of `scene_size` pixels (scores and a few examples), held-out scenes of other
    `styles`, held-out emoji renderings (with `emoji`), and the real sample images."""
    scores, predictions = evaluate_captions(model, tokenizer, scenes, seed, size=scene_size)
    by_style = {"plain": scores} if styles else {}
    by_style.update({style: evaluate_captions(model, tokenizer, scenes, seed, style=style, size=scene_size)[0]
                     for style in styles})
    truths = [generate_scene(seed + i, "heldout", size=scene_size).caption for i in range(min(scenes, 8))]
    samples = skimage_samples()[:8]
    captions = caption_images(model, tokenizer, [sample.image for sample in samples])
    return CaptionReport(
        scores,
        list(zip(truths, predictions[: len(truths)], strict=True)),
        [(s.source, s.caption, c) for s, c in zip(samples, captions, strict=True)],
        by_style,
        *(evaluate_emoji(model, tokenizer, scenes, seed) if emoji else (None, [])),
    )


def evaluate_chat_stage(model: Any, tokenizer: Any, samples: int, heldout: int | None = None) -> ChatReport:
    """Perplexity per token and per word over both corpora's held-out conversations (the first `heldout` of each;
    None: all), the model's reply to the first turn of a few, and its replies to the fixed prompts with their
    checks."""
    corpora = {"chatterbot": heldout_conversations()[:heldout], "chitchat": chitchat_split()[1][:heldout]}
    scores = {name: chat_perplexities(model, tokenizer, conversations) for name, conversations in corpora.items()}

    def replies_to(turns: list[str]) -> list[str]:
        # Seeded per list, as `generalist chat --prompts` is (which may autocast to bf16 where this runs in
        # fp32, so its replies can differ in a piece where two were nearly tied).
        generator = torch.Generator(next(model.parameters()).device).manual_seed(CHAT_SEED)
        return [chat_reply(model, tokenizer, [turn], temperature=CHAT_TEMPERATURE, top_k=CHAT_TOP_K,
                           generator=generator) for turn in turns]

    firsts = corpora["chatterbot"][:samples]
    said = replies_to([c[0] for c in firsts])
    replies = [(c[0], c[1] if len(c) > 1 else "", reply) for c, reply in zip(firsts, said, strict=True)]
    answers = list(zip(CHAT_PROMPTS, replies_to(list(CHAT_PROMPTS)), strict=True))
    checks = reply_checks([reply for _, reply in answers], corpus_vocabulary())
    return ChatReport(scores["chatterbot"].per_token, replies,
                      {name: (s.per_token, s.per_word) for name, s in scores.items()}, answers, checks.known_words,
                      checks.longest_word_run, checks.longest_phrase_run,
                      f"temperature {CHAT_TEMPERATURE}, top-k {CHAT_TOP_K}, seed {CHAT_SEED}")


EVALUATIONS = "evaluations.json"


def _cache_key(task: str, config: EvalConfig) -> str:
    # The settings that change an evaluation's result; the episodes are the same seeds whatever num_envs is.
    key = f"{task}|episodes={config.episodes}|seed={config.seed}|prompt={config.prompt}"
    defaults = EvalConfig()
    for name in ("prompt_tokens", "temperature", "continuous_decoding", "keep_prompt", "slide_fraction",
                 "reference_min", "reference_max", "max_episode_steps"):
        if getattr(config, name) != getattr(defaults, name):  # keys of runs evaluated with the defaults stay valid
            key += f"|{name}={getattr(config, name)}"
    return key


def cached_evaluate(
    model: Any, checkpoint: Path, tasks: list[str], config: EvalConfig, tokenizer: Any = None
) -> list[TaskResult]:
    """`evaluate`, one task at a time, keeping each task's result in the checkpoint's evaluations.json.

    An evaluation of a large run takes long: one interrupted, or rerun for the report, repeats none of the tasks
    already done. The file lives inside the checkpoint, so a checkpoint rewritten by training takes it along.
    Failed tasks are not kept: a rerun tries them again.
    """
    path = checkpoint / EVALUATIONS
    cache = json.loads(path.read_text()) if path.is_file() else {}
    results = []
    for task in tasks:
        key = _cache_key(task, config)
        if key in cache:
            results.append(TaskResult(**cache[key]))
            continue
        (result,) = evaluate(model, [task], config, text_tokenizer=tokenizer)
        results.append(result)
        if result.error is None:
            cache[key] = asdict(result)
            write_text_atomically(path, json.dumps(cache, indent=1, default=float) + "\n")
    return results


def learning_curves(config: RunConfig, eval_config: EvalConfig) -> dict[str, dict[int, float]]:
    """Scores of every kept checkpoint: control tasks' normalized scores, caption accuracy, chat perplexity."""
    report, weights = config.report, config.train.weights
    curves: dict[str, dict[int, float]] = {}
    tasks = evaluated_tasks(weights)
    checkpoints = list_checkpoints(config.run_dir)
    talks = weights.get("dialogue", 0) > 0 or weights.get("chitchat", 0) > 0
    conversations = heldout_conversations() if talks else []
    if len(checkpoints) > report.curve_points + 1:  # a run that kept more: evenly spaced ones, the last included
        keep = np.unique(np.linspace(0, len(checkpoints) - 1, report.curve_points + 1).round().astype(int))
        checkpoints = [checkpoints[i] for i in keep]
    curve_eval = replace(eval_config, episodes=report.curve_episodes)
    for checkpoint in checkpoints:
        step = checkpoint_step(checkpoint)
        model, tokenizer = load_model(checkpoint)
        for result in cached_evaluate(model, checkpoint, tasks, curve_eval, tokenizer):
            curves.setdefault(f"{result.task}/normalized", {})[step] = result.normalized
        if any(weights.get(task, 0) > 0 for task in SCENE_TASK_STYLES):  # the plain held-out scenes, any style
            scores, _ = evaluate_captions(model, tokenizer, report.curve_scenes, eval_config.seed,
                                          size=config.train.scene_size)
            curves.setdefault("captions/attribute_accuracy", {})[step] = scores.attribute_accuracy
        if conversations:
            curves.setdefault(PERPLEXITY_CURVE, {})[step] = chat_perplexity(model, tokenizer, conversations)
    return curves


def diagnosis_stage(config: RunConfig, eval_config: EvalConfig,
                    checkpoints: dict[str, Path]) -> dict[str, list[Diagnosis]]:
    """`generalist diagnose` of every control task at each named checkpoint (the first training's, each round's),
    if the report asks for it: a row per task under "<name>, step <n>"."""
    if not config.report.diagnose_episodes:
        return {}
    diagnose_config = replace(eval_config, episodes=config.report.diagnose_episodes, seed=DIAGNOSIS_SEED)
    diagnoses = {}
    for name, checkpoint in checkpoints.items():
        print(f"diagnosing {checkpoint}", flush=True)
        model, _ = load_model(checkpoint)
        diagnoses[f"{name}, step {checkpoint_step(checkpoint):,}"] = [
            diagnose(model, task, diagnose_config) for task in control_tasks(config.train.weights)]
    return diagnoses


def run_pipeline(config: RunConfig) -> RunResults:
    """Record what is missing, train (or resume), evaluate every task, write `report.md`; the results."""
    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(stage: str) -> None:
        nonlocal clock
        timings[stage] = (time.monotonic() - clock) / 60
        clock = time.monotonic()

    check_same_run(config)
    dagger_tasks(config)  # a misspelt task fails now, not after the first training
    run_tokenizer_path(config)  # and so does an unknown text corpus
    config.run_dir.mkdir(parents=True, exist_ok=True)
    save_json(config, config.run_dir / RUN_CONFIG)
    record_missing(config)
    if config.cloning is None:  # a given cloning reads text with its own tokenizer
        train_missing_tokenizer(config)
    lap("record")
    checkpoint = train_stage(config) if config.cloning is None else given_cloning(config.cloning, config.train)
    lap("train")
    cloned = checkpoint
    checkpoint, rounds = dagger_stage(config, checkpoint)
    if rounds:
        lap("dagger")
    state = read_trainer_state(checkpoint)
    model, tokenizer = load_model(checkpoint)
    weights = config.train.weights
    # Demonstrations come from the data the run trained on unless the evaluation names its own.
    eval_config = config.eval if config.eval.data_dir is not None else replace(config.eval,
                                                                                data_dir=config.train.data_dir)
    tasks = evaluated_tasks(weights)
    if tasks:
        print(f"evaluating {checkpoint} on {len(tasks)} control tasks", flush=True)
    control = cached_evaluate(model, checkpoint, tasks, eval_config, tokenizer)
    unprompted = (
        cached_evaluate(model, checkpoint, tasks, replace(eval_config, prompt="none"), tokenizer)
        if config.report.prompt_ablation else []
    )
    captions = chat = None
    if any(weights.get(task, 0) > 0 for task in (*SCENE_TASK_STYLES, "emoji", "sample_images")):
        styled = any(weights.get(task, 0) > 0 for task, style in SCENE_TASK_STYLES.items() if style != "plain")
        styles = ("varied", "unseen") if styled else ()
        captions = evaluate_captions_stage(model, tokenizer, config.report.caption_scenes, eval_config.seed, styles,
                                           weights.get("emoji", 0) > 0, config.train.scene_size)
    if weights.get("dialogue", 0) > 0 or weights.get("chitchat", 0) > 0:
        chat = evaluate_chat_stage(model, tokenizer, config.report.chat_samples, config.report.chat_heldout)
    lap("evaluate")
    checkpoints = {"cloning": cloned, **{f"round {r['round']}": Path(r["checkpoint"]) for r in rounds}}
    diagnoses = diagnosis_stage(config, eval_config, checkpoints)
    if diagnoses:
        lap("diagnose")
    curves = learning_curves(config, eval_config) if config.report.curve_points else {}
    lap("curves")
    results = RunResults(
        checkpoint=str(checkpoint), step=state["step"], tokens=state["tokens"], train_minutes=state["minutes"],
        control=control, control_unprompted=unprompted, captions=captions, chat=chat, curves=curves,
        stage_minutes=timings, dagger=rounds, diagnoses=diagnoses,
    )
    (config.run_dir / "results.json").write_text(results.to_json() + "\n")
    report = write_report(config.run_dir, results, config, machine_description(), read_precision(config.run_dir))
    if control:
        print(format_table(control + unprompted))
    if captions is not None:
        s = captions.scores
        print(f"captions ({s.n} held-out scenes): exact {s.exact:.1%}, attributes {s.attribute_accuracy:.1%}, "
              f"BLEU-4 {s.bleu4:.1f}")
    if chat is not None:  # per word, each corpus: the figure comparable across tokenizers (issue 20's)
        corpora = ", ".join(f"{name} {per_word:,.1f}" for name, (_, per_word) in chat.per_corpus.items())
        print(f"chat: held-out perplexity per word: {corpora}" if corpora else
              f"chat: held-out perplexity per token {chat.perplexity:.2f}")
    print(f"report: {report}")
    return results


def machine_description() -> str:
    """One line: CPU or GPU, cores, torch and Python versions."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        cpuinfo = Path("/proc/cpuinfo")
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")] if cpuinfo.is_file() else []
        device = names[0] if names else platform.processor() or "CPU"
    return (f"{device}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")
