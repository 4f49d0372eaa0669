"""`generalist run`: the whole pipeline in one command: record, train for a time budget, evaluate, report.

Design choices:
- A preset names a whole experiment: the model, the task mixture, how much data to record, how long to train
  and how to evaluate. `cpu` (the default) fits about half an hour of this 2-core machine; `full` trains all
  nine tasks for up to three hours (4,000 steps); `smoke` checks the plumbing in seconds. Flags override a
  preset.
- A time budget is a schedule over time (`TrainConfig.schedule="time"`): the cosine spans the minutes given
  and the run stops there, however fast the machine turns out to be (a step count measured up front is wrong
  as soon as another process starts or stops sharing the cores). Checkpoints fall at even fractions of it.
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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generalist.evaluate import CaptionScores, TaskResult

VECTOR_TASKS = (
    "cartpole", "acrobot", "mountaincar", "mountaincar_continuous", "pendulum", "lunarlander", "lunarlander_continuous",
)
ATARI_TASKS = ("pong", "breakout")


@dataclass(frozen=True)
class RunPreset:
    """A whole experiment: what to record, what to train for how long, and how to evaluate it."""

    model: str
    weights: Mapping[str, float]
    minutes: float  # training time: the schedule spans it unless `steps` is set, which it then only bounds
    steps: int | None = None  # a fixed step count instead (reproducible to the bit)
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    batch_size: int = 8
    sequence_length: int = 1024
    bf16: bool = True
    action_shuffle: float = 0.0  # share of action tokens read as another timestep's (`TrainConfig.action_shuffle`)
    episodes: int = 100  # recorded per vector task
    atari_episodes: int = 50
    atari_max_steps: int = 2000  # recorded Atari games are cut here (a Pong expert game lasts ~24,600 steps)
    eval_episodes: int = 10
    eval_envs: int = 8  # environments stepped together: more rows per forward pass make each step cheaper
    caption_scenes: int = 100
    chat_samples: int = 3
    curve_points: int = 4  # checkpoints kept and re-evaluated for the learning curves (0: none)
    curve_episodes: int = 3
    curve_scenes: int = 20
    prompt_ablation: bool = False  # also evaluate every control task without the demonstration prompt


CPU_WEIGHTS = {
    **dict.fromkeys(VECTOR_TASKS, 1.0), "scenes": 1.0, "digits": 0.1, "sample_images": 0.05, "dialogue": 0.3,
    "prose": 0.15,
}

# The full run's tokens, moved (docs/RESULTS.md, full-v2) from the Atari games, flat at 0% with 2 of 12.6 each,
# and from the tasks at the expert by mid-run, to the three control tasks that failed and to captions; the text's
# share (0.45 of 12.6) is unchanged, so the text-only baselines still apply.
FULL_WEIGHTS = {
    "cartpole": 1.0, "acrobot": 0.75, "mountaincar": 0.75, "mountaincar_continuous": 0.5, "pendulum": 2.0,
    "lunarlander": 2.0, "lunarlander_continuous": 2.0, "pong": 0.5, "breakout": 0.5,
    "scenes": 2.0, "digits": 0.1, "sample_images": 0.05, "dialogue": 0.3, "prose": 0.15,
}

PRESETS: dict[str, RunPreset] = {
    "cpu": RunPreset(model="tiny", weights=CPU_WEIGHTS, minutes=20.0, warmup_steps=50),
    "full": RunPreset(
        model="tiny", weights=FULL_WEIGHTS, minutes=180.0, steps=4000, warmup_steps=200, action_shuffle=0.5,
        episodes=200, eval_episodes=50, eval_envs=50, curve_points=8, curve_episodes=5, curve_scenes=50,
        prompt_ablation=True,
    ),
    "smoke": RunPreset(
        model="tiny", weights={"cartpole": 1.0, "scenes": 1.0, "dialogue": 0.5}, minutes=1.0, steps=2,
        warmup_steps=1, batch_size=2, sequence_length=128, bf16=False, episodes=2, eval_episodes=2,
        caption_scenes=4, chat_samples=1, curve_points=2, curve_episodes=1, curve_scenes=2,
    ),
}


@dataclass(frozen=True)
class RunConfig:
    """What `generalist run` does; unset fields take the preset's value."""

    name: str = "default"
    """the run's name: it lives in <runs-dir>/<name>"""
    preset: str = "cpu"
    """cpu (about 20 minutes of training on 2 cores), full (the 3-hour generalist), smoke (seconds)"""
    minutes: float | None = None
    """training time budget in minutes"""
    steps: int | None = None
    """train exactly this many steps instead of measuring how many fit the time budget"""
    model: str | None = None
    """model preset: tiny, small, gato-79m, ..."""
    weights: Mapping[str, float] | None = None
    """task mixture, name=weight pairs (see `generalist train --help`)"""
    learning_rate: float | None = None
    """peak learning rate"""
    warmup_steps: int | None = None
    """linear warm-up steps"""
    eval_episodes: int | None = None
    """evaluation episodes per control task"""
    prompt_ablation: bool | None = None
    """also evaluate every control task without its demonstration prompt"""
    curve_points: int | None = None
    """kept checkpoints re-evaluated for the learning curves (0: no curves)"""
    action_shuffle: float | None = None
    """share of action tokens the model reads as the action of another timestep, against copying the last one"""
    runs_dir: Path = Path("runs")
    """parent directory of runs"""
    data_dir: Path = Path("data")
    """parent directory of the recorded datasets; missing ones are recorded"""
    seed: int = 0
    """seed of the model, the data stream and the evaluation's demonstrations"""
    num_workers: int = 1
    """DataLoader worker processes"""
    progress: bool = True
    """progress bars"""


def resolve_preset(config: RunConfig) -> RunPreset:
    """The preset named by `config` with the config's overrides applied."""
    if config.preset not in PRESETS:
        raise ValueError(f"unknown preset {config.preset!r}; known: {', '.join(PRESETS)}")
    overrides = {
        name: value
        for name in ("minutes", "steps", "model", "weights", "learning_rate", "warmup_steps", "eval_episodes",
                     "prompt_ablation", "curve_points", "action_shuffle")
        if (value := getattr(config, name)) is not None
    }
    return replace(PRESETS[config.preset], **overrides)


def control_tasks(weights: Mapping[str, float]) -> list[str]:
    """The environment tasks of a mixture, in registry order."""
    from generalist.envs import TASKS

    return [task for task in TASKS if weights.get(task, 0) > 0]


# ------------------------------------------------------------------------------------------------ stages


def record_missing(preset: RunPreset, data_dir: Path, progress: bool = True) -> list[str]:
    """Record the datasets the mixture needs that `data_dir` lacks or holds too few episodes of; returns them."""
    from generalist.datasets.recording import CollectConfig, collect, episodes_on_disk

    recorded = []
    for task in control_tasks(preset.weights):
        atari = task in ATARI_TASKS
        wanted = preset.atari_episodes if atari else preset.episodes
        if episodes_on_disk(data_dir / task) >= wanted:
            continue
        print(f"recording {wanted} expert episodes of {task} into {data_dir / task}", flush=True)
        collect(CollectConfig(
            tasks=(task,), episodes=wanted, out=data_dir, progress=progress,
            max_episode_steps=preset.atari_max_steps if atari else None,
        ))
        recorded.append(task)
    return recorded


def train_config(preset: RunPreset, config: RunConfig) -> Any:
    """The `TrainConfig` of a preset: a fixed step count, or a time budget the schedule spans."""
    from generalist.train import TrainConfig

    curve_points = max(preset.curve_points, 1)
    by_time = preset.steps is None
    steps = 10**9 if by_time else preset.steps  # under a time budget steps only bound the run
    return TrainConfig(
        run_dir=config.runs_dir / config.name, data_dir=config.data_dir, model=preset.model,
        weights=dict(preset.weights), steps=steps, schedule="time" if by_time else "steps",
        max_minutes=preset.minutes, batch_size=preset.batch_size, sequence_length=preset.sequence_length,
        learning_rate=preset.learning_rate, warmup_steps=preset.warmup_steps, bf16=preset.bf16, seed=config.seed,
        action_shuffle=preset.action_shuffle,
        checkpoint_every=steps if by_time else max(steps // curve_points, 1),
        checkpoint_minutes=preset.minutes / curve_points if by_time else None,
        keep_checkpoints=curve_points + 1, log_every=10 if by_time else max(min(10, steps // 50), 1),
        num_workers=config.num_workers, progress=config.progress,
    )


def train_stage(preset: RunPreset, config: RunConfig) -> Path:
    """Train the run, or resume it if it stopped early, or do nothing if it finished; its final checkpoint."""
    from generalist.train import latest_checkpoint, read_trainer_state, train

    run_dir = config.runs_dir / config.name
    try:
        checkpoint = latest_checkpoint(run_dir)
    except FileNotFoundError:
        checkpoint = None
    if checkpoint is not None:
        state = read_trainer_state(checkpoint)
        saved = state["train_config"]
        out_of_time = saved.max_minutes is not None and state["minutes"] >= saved.max_minutes
        if state["step"] >= saved.steps or out_of_time:
            print(f"training finished: {checkpoint}", flush=True)
            return checkpoint
        print(f"resuming {run_dir} at step {state['step']} of {saved.steps}", flush=True)
        return train(replace(saved, progress=config.progress, num_workers=config.num_workers), resume=True)
    return train(train_config(preset, config))


@dataclass
class CaptionReport:
    """Caption scores on held-out scenes and examples of captions, scenes and real images."""

    scores: CaptionScores
    scene_examples: list[tuple[str, str]]  # (truth, prediction)
    sample_images: list[tuple[str, str, str]]  # (source, description, prediction)


@dataclass
class ChatReport:
    """Held-out chat perplexity and sample replies."""

    perplexity: float
    samples: list[tuple[str, str, str]]  # (user turn, reference reply, model reply)


@dataclass
class RunResults:
    """Everything a run measured at its final checkpoint, and the learning curves."""

    checkpoint: str
    step: int
    tokens: int
    train_minutes: float
    control: list[TaskResult]
    control_unprompted: list[TaskResult]  # the same tasks without a demonstration prompt (if measured)
    captions: CaptionReport | None
    chat: ChatReport | None
    curves: dict[str, dict[int, float]] = field(default_factory=dict)  # metric -> step -> value
    stage_minutes: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        """The results as JSON."""
        data = asdict(self)
        for rows, results in ((data["control"], self.control), (data["control_unprompted"], self.control_unprompted)):
            for row, result in zip(rows, results, strict=True):
                row["mean_return"], row["std_return"] = result.mean_return, result.std_return
        return json.dumps(data, indent=2, default=float)


def evaluate_captions_stage(model: Any, tokenizer: Any, scenes: int, seed: int) -> CaptionReport:
    """Caption held-out scenes (scores and a few examples) and the real sample images."""
    from generalist.datasets.captions import skimage_samples
    from generalist.datasets.scenes import generate_scene
    from generalist.evaluate import caption_images, evaluate_captions

    scores, predictions = evaluate_captions(model, tokenizer, scenes, seed)
    truths = [generate_scene(seed + i, "heldout").caption for i in range(min(scenes, 8))]
    samples = skimage_samples()[:8]
    captions = caption_images(model, tokenizer, [sample.image for sample in samples])
    return CaptionReport(
        scores,
        list(zip(truths, predictions[: len(truths)], strict=True)),
        [(s.source, s.caption, c) for s, c in zip(samples, captions, strict=True)],
    )


PERPLEXITY_CURVE = "chat/perplexity"


def evaluate_chat_stage(model: Any, tokenizer: Any, samples: int) -> ChatReport:
    """Perplexity over the held-out conversations and the model's reply to the first turn of a few of them."""
    from generalist.datasets.text import heldout_conversations
    from generalist.evaluate import chat_perplexity, chat_reply

    heldout = heldout_conversations()
    perplexity = chat_perplexity(model, tokenizer, heldout)
    replies = [
        (c[0], c[1] if len(c) > 1 else "", chat_reply(model, tokenizer, [c[0]])) for c in heldout[:samples]
    ]
    return ChatReport(perplexity, replies)


EVALUATIONS = "evaluations.json"


def cached_evaluate(
    model: Any, checkpoint: Path, tasks: list[str], episodes: int, seed: int, data_dir: Path,
    prompt: str = "demonstration", num_envs: int = 8,
) -> list[TaskResult]:
    """`evaluate`, one task at a time, keeping each task's result in the checkpoint's evaluations.json.

    An evaluation of a large run takes long: one interrupted, or rerun for the report, repeats none of the tasks
    already done. The file lives inside the checkpoint, so a checkpoint rewritten by training takes it along.
    Failed tasks are not kept: a rerun tries them again. The episodes are the same seeds whatever `num_envs` is,
    so it is not part of the key.
    """
    from generalist.evaluate import evaluate

    path = checkpoint / EVALUATIONS
    cache = json.loads(path.read_text()) if path.is_file() else {}
    results = []
    for task in tasks:
        key = f"{task}|episodes={episodes}|seed={seed}|prompt={prompt}"
        if key in cache:
            results.append(TaskResult(**cache[key]))
            continue
        (result,) = evaluate(model, [task], episodes, seed, prompt, data_dir=data_dir, num_envs=num_envs)
        results.append(result)
        if result.error is None:
            cache[key] = asdict(result)
            partial = path.with_name(path.name + ".partial")
            partial.write_text(json.dumps(cache, indent=1, default=float) + "\n")
            os.replace(partial, path)
    return results


def learning_curves(preset: RunPreset, config: RunConfig, seed: int) -> dict[str, dict[int, float]]:
    """Scores of every kept checkpoint: control tasks' normalized scores, caption accuracy, chat perplexity."""
    from generalist.datasets.text import heldout_conversations
    from generalist.evaluate import chat_perplexity, evaluate_captions, load_model

    folder = config.runs_dir / config.name / "checkpoints"
    curves: dict[str, dict[int, float]] = {}
    tasks = control_tasks(preset.weights)
    checkpoints = sorted(folder.glob("step-*"))
    conversations = heldout_conversations() if preset.weights.get("dialogue", 0) > 0 else []
    if len(checkpoints) > preset.curve_points + 1:  # a run that kept more: evenly spaced ones, the last included
        keep = np.unique(np.linspace(0, len(checkpoints) - 1, preset.curve_points + 1).round().astype(int))
        checkpoints = [checkpoints[i] for i in keep]
    for checkpoint in checkpoints:
        step = int(checkpoint.name.removeprefix("step-"))
        model, tokenizer = load_model(checkpoint)
        for result in cached_evaluate(
            model, checkpoint, tasks, preset.curve_episodes, seed, config.data_dir, num_envs=preset.eval_envs
        ):
            curves.setdefault(f"{result.task}/normalized", {})[step] = result.normalized
        if preset.weights.get("scenes", 0) > 0:
            scores, _ = evaluate_captions(model, tokenizer, preset.curve_scenes, seed)
            curves.setdefault("captions/attribute_accuracy", {})[step] = scores.attribute_accuracy
        if conversations:
            curves.setdefault(PERPLEXITY_CURVE, {})[step] = chat_perplexity(model, tokenizer, conversations)
    return curves


def run_pipeline(config: RunConfig) -> RunResults:
    """Record what is missing, train (or resume), evaluate every task, write `report.md`; the results."""
    from generalist.evaluate import DEFAULT_SEED, format_table, load_model
    from generalist.report import write_report
    from generalist.train import read_trainer_state

    preset = resolve_preset(config)
    run_dir = config.runs_dir / config.name
    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(stage: str) -> None:
        nonlocal clock
        timings[stage] = (time.monotonic() - clock) / 60
        clock = time.monotonic()

    record_missing(preset, config.data_dir, config.progress)
    lap("record")
    checkpoint = train_stage(preset, config)
    lap("train")
    state = read_trainer_state(checkpoint)
    model, tokenizer = load_model(checkpoint)
    seed = DEFAULT_SEED + config.seed
    tasks = control_tasks(preset.weights)
    if tasks:
        print(f"evaluating {checkpoint} on {len(tasks)} control tasks", flush=True)
    control = cached_evaluate(model, checkpoint, tasks, preset.eval_episodes, seed, config.data_dir,
                              num_envs=preset.eval_envs)
    unprompted = (
        cached_evaluate(model, checkpoint, tasks, preset.eval_episodes, seed, config.data_dir, prompt="none",
                        num_envs=preset.eval_envs)
        if preset.prompt_ablation else []
    )
    captions = chat = None
    if preset.weights.get("scenes", 0) > 0 or preset.weights.get("sample_images", 0) > 0:
        captions = evaluate_captions_stage(model, tokenizer, preset.caption_scenes, seed)
    if preset.weights.get("dialogue", 0) > 0:
        chat = evaluate_chat_stage(model, tokenizer, preset.chat_samples)
    lap("evaluate")
    curves = learning_curves(preset, config, seed) if preset.curve_points else {}
    lap("curves")
    results = RunResults(
        checkpoint=str(checkpoint), step=state["step"], tokens=state["tokens"], train_minutes=state["minutes"],
        control=control, control_unprompted=unprompted, captions=captions, chat=chat, curves=curves,
        stage_minutes=timings,
    )
    (run_dir / "results.json").write_text(results.to_json() + "\n")
    report = write_report(run_dir, results, preset, config, machine_description())
    if control:
        print(format_table(control + unprompted))
    if captions is not None:
        s = captions.scores
        print(f"captions ({s.n} held-out scenes): exact {s.exact:.1%}, attributes {s.attribute_accuracy:.1%}, "
              f"BLEU-4 {s.bleu4:.1f}")
    if chat is not None:
        print(f"chat: held-out perplexity {chat.perplexity:.2f}")
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
