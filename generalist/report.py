"""A run's report: `report.md` with its tables, and the plots beside it (matplotlib, PNG).

Plots: `learning_curves.png` (training losses over steps, from metrics.csv), `task_losses.png` (the training
loss of each task), `scores.png` (each control task's expert-normalized score), `score_curves.png` (each task's
score at the kept checkpoints) and `captions.png` (the real sample images with the model's captions).
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from generalist.config import DIAGNOSIS_SEED, RunConfig, run_preset
from generalist.datasets.captions import skimage_samples
from generalist.diagnose import DIAGNOSIS_HEADER, Diagnosis, format_diagnosis, format_shares
from generalist.evaluate import CAPTION_ATTRIBUTES, CaptionScores, TaskResult, format_table
from generalist.flags import leaf_fields
from generalist.metrics import TASK_LOSS_PREFIX, read_metrics

PERPLEXITY_CURVE = "chat/perplexity"


@dataclass
class CaptionReport:
    """Caption scores on held-out scenes and examples of captions, scenes and real images."""

    scores: CaptionScores
    scene_examples: list[tuple[str, str]]  # (truth, prediction)
    sample_images: list[tuple[str, str, str]]  # (source, description, prediction)
    by_style: dict[str, CaptionScores] = field(default_factory=dict)  # held-out scenes of each style scored
    emoji_accuracy: float | None = None  # class accuracy on held-out emoji renderings, when the run trains on them
    emoji_examples: list[tuple[str, str]] = field(default_factory=list)  # (truth, caption)


@dataclass
class ChatReport:
    """Held-out chat perplexity and sample replies."""

    perplexity: float  # per text token, on the held-out chatterbot conversations (the figure older runs report)
    samples: list[tuple[str, str, str]]  # (user turn, reference reply, model reply)
    per_corpus: dict[str, tuple[float, float]] = field(default_factory=dict)  # corpus: (per token, per word)
    prompt_replies: list[tuple[str, str]] = field(default_factory=list)  # the fixed prompts and the replies
    known_words: float = math.nan  # share of the prompt replies' words that are words of the training corpora
    longest_run: int = 0  # longest run of one word repeated in those replies
    longest_phrase_run: int = 0  # most copies of one word sequence back to back in them (0: not measured)
    decoding: str = "greedy"  # how the replies were decoded (runs before sampled replies: greedy)


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
    dagger: list[dict[str, Any]] = field(default_factory=list)  # each DAgger round: driver, data, steps
    diagnoses: dict[str, list[Diagnosis]] = field(default_factory=dict)  # checkpoint label -> a row per task

    def to_json(self) -> str:
        """The results as JSON."""
        data = asdict(self)
        for rows, results in ((data["control"], self.control), (data["control_unprompted"], self.control_unprompted)):
            for row, result in zip(rows, results, strict=True):
                row["mean_return"], row["std_return"] = result.mean_return, result.std_return
        return json.dumps(data, indent=2, default=float)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def finite_mean(values: list[float]) -> float:
    """The mean of the finite values, NaN if there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _pyplot() -> Any:
    # Imported here: matplotlib takes 0.3 s to import, and only the report's plots need it.
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training machine
    import matplotlib.pyplot as plt

    return plt


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    """A trailing moving average (the first points average what there is)."""
    if width <= 1 or len(values) < 2:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), width)
    return (sums[1:] - sums[np.arange(1, len(values) + 1) - counts]) / counts


def plot_losses(metrics: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path | None:
    """Training loss, text loss and action loss over steps (smoothed), if the run logged any."""
    names = [name for name in ("train/loss", "train/loss_text", "train/loss_action") if name in metrics]
    if not names:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for name in names:
        steps, values = metrics[name]
        width = max(len(values) // 10, 1)  # one logged step is one batch: its task mix makes it noisy
        axis.plot(steps, _smooth(values, width), label=name.removeprefix("train/"))
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("cross-entropy (nats per target token)")
    axis.set_yscale("log")
    axis.set_title("training losses (moving average)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def task_loss_series(metrics: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The per-task training losses of metrics.csv, by task name."""
    return {
        name.removeprefix(TASK_LOSS_PREFIX): series
        for name, series in sorted(metrics.items())
        if name.startswith(TASK_LOSS_PREFIX)
    }


def final_task_losses(metrics: Mapping[str, tuple[np.ndarray, np.ndarray]], fraction: float = 0.1) -> dict[str, float]:
    """Each task's training loss averaged over the last `fraction` of the run's logged steps."""
    series = task_loss_series(metrics)
    if not series:
        return {}
    cutoff = (1 - fraction) * max(int(steps[-1]) for steps, _ in series.values())
    return {task: float(values[steps >= cutoff].mean()) for task, (steps, values) in series.items()
            if (steps >= cutoff).any()}


def plot_task_losses(metrics: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path | None:
    """Each task's training loss over steps (smoothed over a tenth of its points), if the run logged them."""
    series = task_loss_series(metrics)
    if not series:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab20")
    for i, (task, (steps, values)) in enumerate(series.items()):
        axis.plot(steps, _smooth(values, max(len(values) // 10, 1)), label=task, color=colours(i % 20))
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("cross-entropy (nats per target token)")
    axis.set_yscale("log")
    axis.set_title("training loss per task (moving average)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_scores(results: Sequence[TaskResult], path: Path) -> Path | None:
    """A bar per control task: its expert-normalized score, with the expert's 100% marked."""
    rows = [r for r in results if r.returns and math.isfinite(r.normalized)]
    if not rows:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    positions = np.arange(len(rows))
    axis.barh(positions, [100 * r.normalized for r in rows], color="tab:blue")
    axis.set_yticks(positions, [r.task for r in rows])
    axis.invert_yaxis()
    axis.axvline(100, color="black", linestyle="--", linewidth=1, label="expert")
    axis.axvline(0, color="grey", linewidth=1)
    axis.set_xlabel("expert-normalized score (%): 0 random, 100 expert")
    axis.legend(loc="lower right")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_score_curves(curves: Mapping[str, Mapping[int, float]], path: Path) -> Path | None:
    """Each task's score at the kept checkpoints, in percent, against the step; chat perplexity in its own panel."""
    scores = {name: points for name, points in curves.items() if name != PERPLEXITY_CURVE}
    perplexity = curves.get(PERPLEXITY_CURVE)
    if not scores and not perplexity:
        return None
    plt = _pyplot()
    panels = int(bool(scores)) + int(bool(perplexity))
    figure, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    axes = list(axes.flat)
    if scores:
        axis = axes.pop(0)
        for name, points in sorted(scores.items()):
            steps = sorted(points)
            axis.plot(steps, [100 * points[s] for s in steps], marker="o", label=name.split("/")[0])
        axis.axhline(100, color="black", linestyle="--", linewidth=1)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("expert-normalized score / caption attribute accuracy (%)")
        axis.set_title("scores over training")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small", ncol=2)
    if perplexity:
        axis = axes.pop(0)
        steps = sorted(perplexity)
        axis.plot(steps, [perplexity[s] for s in steps], marker="o", color="tab:purple")
        axis.set_yscale("log")
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("held-out chat perplexity (lower is better)")
        axis.set_title("chat perplexity over training")
        axis.grid(alpha=0.3, which="both")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_captions(images: Sequence[np.ndarray], titles: Sequence[str], path: Path) -> Path | None:
    """The images in a row of panels, each titled with its caption."""
    if not images:
        return None
    plt = _pyplot()
    columns = min(len(images), 4)
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, title in zip(axes.flat, images, titles, strict=False):
        axis.imshow(image)
        axis.set_title("\n".join(textwrap.wrap(title, 28)[:4]), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _command(config: RunConfig) -> str:
    """The `generalist run` command line that gives this config: its preset and the flags that differ from it."""
    base = run_preset(config.preset)
    parts = ["generalist run", f"--preset {config.preset}"]
    for dotted, _, _, _ in leaf_fields(RunConfig):
        value, default = config, base
        for part in dotted.split("."):
            value, default = getattr(value, part), getattr(default, part)
        if value == default or dotted in ("preset", "train.progress"):
            continue
        flag = f"--{dotted.replace('_', '-')}"
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{flag[2:]}")
            continue
        if isinstance(value, Mapping):
            value = ",".join(f"{k}={v:g}" for k, v in value.items())
        elif isinstance(value, tuple):
            value = ",".join(value)
        parts.append(f"{flag} {value}")
    return " ".join(parts)


def _prompt_comparison(prompted: Sequence[TaskResult], unprompted: Sequence[TaskResult]) -> str:
    """A table: each task's expert-normalized score with and without the prompt, and the difference."""
    lines = ["| task | with prompt | without | difference |", "| --- | --- | --- | --- |"]
    without = {r.task: r.normalized for r in unprompted}
    for r in prompted:
        other = without.get(r.task, math.nan)
        lines.append(f"| {r.task} | {r.normalized:.1%} | {other:.1%} | {r.normalized - other:+.1%} |")
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(
    run_dir: Path, results: RunResults, config: RunConfig, machine: str, precision: Mapping[str, str] | None = None
) -> Path:
    """Write `run_dir/report.md` and its plots; returns the report's path.

    `precision`: what training computed in and why (train.py's precision.json), when known.
    """
    lines = [
        f"# Run `{config.name}`",
        "",
        f"- Command: `{_command(config)}`",
        f"- Machine: {machine}",
        f"- Precision: {precision['precision']} ({precision['reason']})" if precision else "- Precision: not recorded",
        f"- Written: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Checkpoint: `{results.checkpoint}`: step {results.step:,}, {results.tokens:,} tokens, "
        f"{results.train_minutes:.1f} minutes of training",
        f"- Model `{config.train.model}`; mixture {', '.join(f'{k}={v:g}' for k, v in config.train.weights.items())}",
        "- Time per stage of this invocation (minutes; a resumed training's total is on the checkpoint line): "
        + ", ".join(f"{k} {v:.1f}" for k, v in results.stage_minutes.items()),
        "",
        "## Training",
        "",
    ]
    metrics_path = run_dir / "metrics.csv"
    metrics = read_metrics(metrics_path) if metrics_path.is_file() else {}
    if plot_losses(metrics, run_dir / "learning_curves.png"):
        lines += ["![training losses](learning_curves.png)", ""]
        final = {name: values[-1] for name, (_, values) in metrics.items() if name.startswith("train/loss")}
        lines += ["Last logged: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(final.items())), ""]
    if plot_task_losses(metrics, run_dir / "task_losses.png"):
        lines += [
            "![training loss per task](task_losses.png)",
            "",
            "Training loss per target token (text or action) of each task, averaged over the last tenth of the run:",
            "",
            "| task | loss |",
            "| --- | ---: |",
            *(f"| {task} | {loss:.3f} |" for task, loss in final_task_losses(metrics).items()),
            "",
        ]

    if results.dagger:
        lines += [
            "## DAgger rounds",
            "",
            "Each round: the previous checkpoint's agent drove episodes of every control task while the expert "
            "labelled each step; training then continued from it on the expert and these recordings. For discrete "
            "actions: the share of the driven steps whose action that ran was the expert's label, and the actions "
            f"that ran (those the expert ran itself, with probability {config.record.dagger_beta:g}, among them) "
            "against the labels.",
            "",
            "| round | driven by | task | episodes | mean length | return while the agent drove | ran = label | "
            "actions that ran | expert's labels | steps trained | checkpoint |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | --- |",
        ]
        for entry in results.dagger:
            for task, games in entry["driven"].items():
                agreement = f"{games['agreement']:.1%}" if "agreement" in games else "-"
                ran, asked = (format_shares(games[key], task) if key in games else "-" for key in ("ran", "asked"))
                lines.append(
                    f"| {entry['round']} | `{entry['driver']}` | {task} | {games['episodes']} | "
                    f"{games['mean_length']:,.0f} | {games['mean_return']:.1f} | {agreement} | {ran} | {asked} | "
                    f"{entry['steps']:,} | `{entry['checkpoint']}` |")
        lines.append("")
    if results.diagnoses:
        lines += [
            "## Diagnosis",
            "",
            f"`generalist diagnose` ({_count(config.report.diagnose_episodes, 'on-policy episode')} per task from seed "
            f"{DIAGNOSIS_SEED:,}; teacher-forced on windows of the recorded episodes): does the policy read its "
            "observations (decisive steps, the same with the frames shuffled in time) or repeat itself, and does "
            "it act as the expert would on the states it reaches (on-policy agreement)? Shares of each action id.",
            "",
            "| checkpoint " + DIAGNOSIS_HEADER.split("\n")[0],
            "| --- " + DIAGNOSIS_HEADER.split("\n")[1],
            *(f"| {label} " + format_diagnosis(row) for label, rows in results.diagnoses.items() for row in rows),
            "",
        ]
    lines += ["## Control tasks", ""]
    if results.control:
        mean = finite_mean([r.normalized for r in results.control])
        lines += [
            f"{config.eval.episodes} episodes per task, each opened by a recorded expert demonstration; greedy "
            f"actions. Mean expert-normalized score: {mean:.1%}.",
            "",
            format_table(results.control),
            "",
        ]
        if plot_scores(results.control, run_dir / "scores.png"):
            lines += ["![expert-normalized scores](scores.png)", ""]
        if results.control_unprompted:
            lines += ["The same checkpoint and seeds without the demonstration prompt (the context starts with the "
                      "episode itself):", "", format_table(results.control_unprompted), "",
                      _prompt_comparison(results.control, results.control_unprompted), ""]
    else:
        lines += ["No control tasks in this run's mixture.", ""]

    if results.curves:
        lines += ["## Scores over training", ""]
        plot_score_curves(results.curves, run_dir / "score_curves.png")
        steps = sorted({s for points in results.curves.values() for s in points})
        lines += [
            f"Every kept checkpoint re-evaluated ({config.report.curve_episodes} episodes per task, "
            f"{config.report.curve_scenes} held-out scenes).",
            "",
            "![scores over training](score_curves.png)",
            "",
            "| score | " + " | ".join(f"step {s:,}" for s in steps) + " |",
            "| --- |" + " --- |" * len(steps),
        ]
        for name, points in sorted(results.curves.items()):
            form = "{:.1f}" if name == PERPLEXITY_CURVE else "{:.1%}"
            cells = [form.format(points[s]) if s in points and math.isfinite(points[s]) else "" for s in steps]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")

    if results.captions is not None:
        s = results.captions.scores
        lines += [
            "## Captions",
            "",
            f"{s.n} scenes whose colour-shape pairs never appear in training: exact captions {s.exact:.1%}, "
            f"per-attribute accuracy {s.attribute_accuracy:.1%}, BLEU-4 {s.bleu4:.1f} (sacrebleu).",
            "",
        ]
        if results.captions.by_style:
            lines += ["| held-out scenes | n | exact | size | colour | shape | cell | BLEU-4 "
                      "| shape: held-out pairs / trained pairs | colour: held-out pairs / trained pairs "
                      "| most frequent colour mistakes (truth -> caption) |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
            for style, t in results.captions.by_style.items():
                cells = " | ".join(f"{t.per_attribute.get(a, math.nan):.1%}" for a in CAPTION_ATTRIBUTES)
                pairs = " | ".join(" / ".join(f"{split.get(p, math.nan):.1%}" for p in ("held-out", "trained"))
                                   for split in (t.shape_by_pair, t.colour_by_pair))
                mistakes = ", ".join(f"{m} ({n})" for m, n in list(t.colour_mistakes.items())[:3])
                lines.append(f"| {style} | {t.n} | {t.exact:.1%} | {cells} | {t.bleu4:.1f} | {pairs} | {mistakes} |")
            lines += ["", "A shape (colour) read from the image scores alike on the objects of held-out and of "
                      "trained colour-shape pairs; one named from the colour (shape) word beside it, on the trained "
                      "pairs only.", ""]
        if results.captions.emoji_accuracy is not None:
            n_emoji = len(results.captions.emoji_examples)
            lines += [f"OpenMoji emoji (held-out renderings of {n_emoji} classes spread over the 1,417): class "
                      f"accuracy {results.captions.emoji_accuracy:.1%}.", "",
                      "| emoji | caption |", "| --- | --- |"]
            lines += [f"| {_escape(t)} | {_escape(p)} |" for t, p in results.captions.emoji_examples[:8]]
            lines.append("")
        lines += [
            "| truth | caption |",
            "| --- | --- |",
        ]
        lines += [f"| {_escape(t)} | {_escape(p)} |" for t, p in results.captions.scene_examples]
        lines += ["", "Real images (scikit-image samples, 64x64):", "", "| image | description | caption |",
                  "| --- | --- | --- |"]
        lines += [f"| `{src}` | {_escape(d)} | {_escape(p)} |" for src, d, p in results.captions.sample_images]
        samples = skimage_samples()[: len(results.captions.sample_images)]
        titles = [p for _, _, p in results.captions.sample_images]
        if plot_captions([s.image for s in samples], titles, run_dir / "captions.png"):
            lines += ["", "![captions of the sample images](captions.png)"]
        lines.append("")

    if results.chat is not None:
        lines += [
            "## Chat",
            "",
            f"Held-out perplexity per text token: {results.chat.perplexity:.2f}.",
            "",
        ]
        if results.chat.per_corpus:
            lines += ["| held-out corpus | perplexity per token | per word |", "| --- | ---: | ---: |"]
            lines += [f"| {name} | {token:.2f} | {word:.1f} |"
                      for name, (token, word) in results.chat.per_corpus.items()]
            lines.append("")
        lines += ["| user | reference | model |", "| --- | --- | --- |"]
        lines += [f"| {_escape(u)} | {_escape(r)} | {_escape(m)} |" for u, r, m in results.chat.samples]
        lines.append("")
        if results.chat.prompt_replies:
            lines += [
                f"The fixed prompts (`generalist chat --prompts`, {results.chat.decoding}): "
                f"{results.chat.known_words:.1%} of the replies' "
                f"words are words of the training corpora; the longest run of one word is {results.chat.longest_run}, "
                f"of one phrase {results.chat.longest_phrase_run}.",
                "", "| prompt | reply |", "| --- | --- |",
            ]
            lines += [f"| {_escape(p)} | {_escape(r)} |" for p, r in results.chat.prompt_replies]
            lines.append("")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
