"""Evaluation: prompt-conditioned rollouts in the environments, captions of held-out scenes, chat perplexity.

Design choices:
- One function per kind of evaluation, called from training and from the CLI alike (docs/STYLE.md item 9), and
  one `EvalConfig` for every path: `generalist evaluate`, videos, `diagnose`, training and `generalist run`.
- Control (Gato section 4.1): the context of every episode opens with a demonstration of the same task, the
  last `prompt_tokens` tokens of a recorded expert episode (whole timesteps), then the agent acts step by step
  through the KV-cached `Agent`; `prompt="none"` measures the agent without it. Episodes run on a vector of
  environments through the one rollout loop (envs/rollout.py); environment `i` of `n` plays seeds
  `seed + i, seed + i + n, ...` and a fixed share of the episodes (the first `episodes % n` environments one
  more), so the evaluated episodes are always the seeds `seed .. seed + episodes - 1`, long ones as much as
  short ones. The default seed is far from the seeds of
  recording (0, 1, ...) and of the score baselines (1,000,000, ...).
- Scores: raw return, expert-normalized `(agent - random) / (expert - random)` with the stored baselines, and
  for Atari human-normalized with the published human scores.
- A failing task never stops the others: its row carries the error.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import sacrebleu
import torch
from PIL import Image

from generalist.agent import ActionStep, Agent, generate
from generalist.batch import collate
from generalist.config import EvalConfig
from generalist.datasets.emoji import emoji_accuracy, emoji_classes, render_emoji
from generalist.datasets.mixture import ControlSource, episode_source
from generalist.datasets.scenes import HELD_OUT_PAIRS, IMAGE_SIZE, generate_scene, parse_caption
from generalist.datasets.text import ASSISTANT_MARKER, CHAT_MARKERS, USER_MARKER, format_chat, words
from generalist.envs import TASKS, Task, expert_normalized, get_task, human_normalized, make, make_vector, step_cap
from generalist.envs.contract import Observation
from generalist.envs.external import GYM_PREFIX, MINARI_PREFIX
from generalist.envs.rollout import Actions, rollout, seed_sequences, single_env, unbatch
from generalist.model import Generalist
from generalist.precision import resolve_precision
from generalist.tokenizers import TextTokenizer, TokenizedSequence, TokenLayout, tokenize_caption, tokenize_text


@dataclass
class TaskResult:
    """The outcome of evaluating one task."""

    task: str
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    # Episodes the no-reward limit ended (Breakout: games in which the agent stopped serving the ball; it must
    # press FIRE after each lost life).
    stalled: int = 0
    capped_at: int | None = None  # the step cap that cut the episodes, where shorter than the task's own
    normalized: float = math.nan  # expert-normalized mean return
    human_normalized: float | None = None  # Atari only
    prompted: bool = True
    error: str | None = None

    @property
    def mean_return(self) -> float:
        """Mean raw return over the episodes."""
        return float(np.mean(self.returns)) if self.returns else math.nan

    @property
    def std_return(self) -> float:
        """Standard deviation of the raw returns."""
        return float(np.std(self.returns)) if self.returns else math.nan


def demonstration_prompt(
    task: str,
    data_dir: str | Path,
    layout: TokenLayout,
    rng: np.random.Generator,
    max_tokens: int,
    text_encoder: TextTokenizer | None = None,
) -> TokenizedSequence:
    """The last whole timesteps, at most `max_tokens` tokens, of a random recorded expert episode of `task`."""
    if task.startswith(GYM_PREFIX):
        raise FileNotFoundError(
            f"{task} has no recorded demonstrations to prompt with: evaluate it with prompt='none' (--prompt none), "
            "or evaluate minari:<dataset id>, whose dataset recorded this env and prompts from its episodes"
        )
    if not task.startswith(MINARI_PREFIX) and not (Path(data_dir) / task).is_dir():
        raise FileNotFoundError(
            f"no demonstrations of {task!r} at {Path(data_dir) / task}: record them with `generalist collect --tasks "
            f"{task}`, or evaluate with prompt='none'"
        )
    source = ControlSource(task, episode_source(task, data_dir), layout, text_encoder=text_encoder)
    episode = int(rng.integers(len(source.episodes)))
    length = source.episodes.episode_length(episode)
    per_step = source.tokens_per_step()
    steps = min(length, max_tokens // per_step)
    if steps < 1:
        raise ValueError(f"{task}: one timestep ({per_step} tokens) does not fit a prompt of {max_tokens} tokens")
    return source.tokenize_window(episode, length - steps, length)


def prompt_dir(config: EvalConfig, task: str, demonstrations: Path | None = None) -> Path:
    """Where `task`'s recorded demonstrations are: the config's data_dir, else a checkpoint's own, else `data`."""
    if config.data_dir is not None:
        return Path(config.data_dir)
    if demonstrations is not None and (demonstrations / task).is_dir():
        return demonstrations
    return Path("data")


class AgentActor:
    """The trained agent as a rollout actor: every episode opens with a fresh prompt (None: no prompt)."""

    def __init__(self, agent: Agent, new_prompt: Callable[[], TokenizedSequence | None]) -> None:
        self.agent, self.new_prompt = agent, new_prompt
        self.last: ActionStep | None = None  # the latest step's choice, its logits kept (diagnose reads them)

    def start(self, rows: Sequence[int], seeds: Sequence[int]) -> None:
        """Give the rows' new episodes their prompts (drawn in row order)."""
        prompts = [self.new_prompt() for _ in rows]
        self.agent.reset(prompts, episodes=None if self.agent.engine is None else list(rows))

    def act(self, observations: Observation, infos: Sequence[dict[str, Any]]) -> Actions:
        """The agent's actions for every row (executed, and its own labels)."""
        self.last = self.agent.step(unbatch(observations))
        return Actions(self.last.actions, self.last.actions)


def agent_actor(
    model: Generalist,
    task: str,
    config: EvalConfig,
    demonstrations: Path | None = None,
    text_tokenizer: TextTokenizer | None = None,
) -> AgentActor:
    """The agent of `model` acting in `task` per `config`, each episode prompted by a demonstration unless
    config.prompt is "none"; prompts are drawn from a generator seeded with config.seed. `text_tokenizer` (the
    checkpoint's) reads text observations, for a task that has them."""
    if config.prompt not in ("demonstration", "none"):
        raise ValueError(f"prompt must be 'demonstration' or 'none', got {config.prompt!r}")
    rng = np.random.default_rng(config.seed)
    layout, budget = model.config.layout, config.prompt_budget(model.config.context)
    directory = prompt_dir(config, task, demonstrations)

    def new_prompt() -> TokenizedSequence | None:
        if config.prompt == "none":
            return None
        return demonstration_prompt(task, directory, layout, rng, budget, text_tokenizer)

    # Sampled actions draw from a generator of their own, seeded like the prompts: the same seeds give the same
    # games, whatever else used torch's global generator before.
    device = next(model.parameters()).device
    sampler = torch.Generator(device).manual_seed(config.seed) if config.temperature > 0 else None
    agent = Agent(model, get_task(task).action_spec(), text_tokenizer, temperature=config.temperature,
                  keep_prompt=config.keep_prompt, slide_fraction=config.slide_fraction, generator=sampler,
                  continuous_decoding=config.continuous_decoding, change_penalty=config.change_penalty)
    return AgentActor(agent, new_prompt)


def acting_precision(model: Generalist, config: EvalConfig) -> contextlib.AbstractContextManager:
    """Autocast to the evaluation's precision on the model's device (a no-op in fp32)."""
    device = next(model.parameters()).device
    return resolve_precision(config.precision, device).autocast(device.type)


def evaluate_task(
    model: Generalist,
    task: str,
    config: EvalConfig,
    demonstrations: Path | None = None,
    text_tokenizer: TextTokenizer | None = None,
) -> TaskResult:
    """Roll out `config.episodes` prompt-conditioned episodes of `task`; a failure is returned in the result."""
    result = TaskResult(task, prompted=config.prompt != "none")
    try:
        spec = get_task(task)
        n = min(config.num_envs, config.episodes)
        # Each env plays a fixed share, so the episodes are always the same seeds: keeping the first `episodes` to
        # finish would favour short episodes.
        quotas = config.episodes // n + (np.arange(n) < config.episodes % n)
        result.capped_at = step_cap(task, config.max_episode_steps)
        if result.capped_at is not None:
            normalized_score(spec, 0.0, config)  # a missing cut baseline is an error before minutes of play
        actor = agent_actor(model, task, config, demonstrations, text_tokenizer)
        env = make_vector(task, n, autoreset_mode=gym.vector.AutoresetMode.DISABLED, max_episode_steps=result.capped_at)
        try:
            with acting_precision(model, config):
                ends = rollout(env, actor, seed_sequences(config.seed, n), quotas.tolist())
            for end in ends:
                if end.counted:
                    result.returns.append(end.episode_return)
                    result.lengths.append(end.length)
                    result.stalled += end.stalled
        finally:
            env.close()
        result.normalized = normalized_score(spec, result.mean_return, config)
        if spec.human_scores is not None and result.capped_at is None:  # human scores are of whole games
            result.human_normalized = human_normalized(task, result.mean_return)
    except Exception as error:  # one bad task must not end an evaluation of many
        result.error = f"{type(error).__name__}: {error}"
    return result


def normalized_score(task: Task, score: float, config: EvalConfig) -> float:
    """`score` normalized so that 0 is the random policy and 1 the expert: by the config's reference scores when
    given, else the task's own (a Minari dataset's), else the measured baselines of a registered task (cut at the
    config's step cap); NaN when a task outside the registry has none."""
    low, high = config.reference_scores() or task.reference_scores or (None, None)
    if low is not None and high is not None:
        if high == low:
            raise ValueError(f"{task.name}: the reference scores are equal ({low}); nothing to normalize by")
        return (score - low) / (high - low)
    return expert_normalized(task.name, score, max_episode_steps=config.max_episode_steps) if task.name in TASKS \
        else math.nan


@torch.no_grad()
def record_video(
    model: Generalist,
    task: str,
    path: str | Path,
    config: EvalConfig,
    demonstrations: Path | None = None,
    max_steps: int = 1000,
    fps: int = 30,
) -> float:
    """Play one episode (seed config.seed) and write its rendered frames as an animated GIF; returns its return."""

    model.eval()
    actor = agent_actor(model, task, config, demonstrations)
    env = make(task, render_mode="rgb_array")
    frames: list[np.ndarray] = []
    try:
        with acting_precision(model, config):
            (end,) = rollout(
                single_env(env), actor, [iter([config.seed])], quotas=[1], max_steps=max_steps,
                on_start=lambda rows, observations: frames.append(env.render()),
                on_step=lambda step: frames.append(env.render()),
            )
    finally:
        env.close()
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return end.episode_return


def evaluate(
    model: Generalist,
    tasks: Sequence[str],
    config: EvalConfig,
    demonstrations: Path | None = None,
    text_tokenizer: TextTokenizer | None = None,
) -> list[TaskResult]:
    """Evaluate many tasks, one after another; each row holds its scores or its error.

    `demonstrations`: a checkpoint's own recorded demonstrations, used for the tasks it has when
    config.data_dir is not set; `text_tokenizer`: the checkpoint's, for tasks with text observations.
    """
    model.eval()
    with torch.no_grad():
        return [evaluate_task(model, task, config, demonstrations, text_tokenizer) for task in tasks]


def format_table(results: Sequence[TaskResult]) -> str:
    """A markdown table: task, episodes (stalled ones), mean and std return, normalized scores, error."""
    lines = [
        "| task | prompt | episodes (stalled) | return | expert-normalized | human-normalized | error |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        human = "" if r.human_normalized is None else f"{r.human_normalized:.1%}"
        score = "" if math.isnan(r.normalized) else f"{r.normalized:.1%}"
        value = "" if not r.returns else f"{r.mean_return:.1f} ± {r.std_return:.1f}"
        prompt = "demo" if r.prompted else "none"
        episodes = f"{len(r.returns)} ({r.stalled} stalled)" if r.stalled else str(len(r.returns))
        if r.capped_at is not None:
            episodes += f", cut at {r.capped_at:,} steps"
        lines.append(f"| {r.task} | {prompt} | {episodes} | {value} | {score} | {human} | {r.error or ''} |")
    return "\n".join(lines)


def results_json(results: Sequence[TaskResult]) -> str:
    """The results as strict JSON, one object per task; a number that is not finite (no episode) is null."""
    rows = []
    for r in results:
        row = asdict(r)
        row["mean_return"], row["std_return"] = r.mean_return, r.std_return
        rows.append({key: None if isinstance(value, float) and not math.isfinite(value) else value
                     for key, value in row.items()})
    return json.dumps(rows, indent=2, allow_nan=False)


# ------------------------------------------------------------------------------------- captions and chat


@dataclass
class CaptionScores:
    """How well captions match held-out scenes."""

    n: int
    exact: float  # share of captions equal to the truth
    attribute_accuracy: float  # share of (object, attribute) slots right: size, colour, shape, cell
    bleu4: float  # corpus BLEU-4 (sacrebleu), 0..100
    per_attribute: dict[str, float] = field(default_factory=dict)  # size, colour, shape, cell: share right
    # The shape's share right on the objects whose colour-shape pair is held out, and on the others: a shape read
    # from the image scores alike on both, a shape named from the colour word before it only on the trained pairs.
    shape_by_pair: dict[str, float] = field(default_factory=dict)  # "held-out", "trained"
    # The same split of the colour: a colour named from the shape after it scores on the trained pairs only.
    colour_by_pair: dict[str, float] = field(default_factory=dict)  # "held-out", "trained"
    # The colours said in place of the truth, most frequent first: which colours the captioner confuses.
    colour_mistakes: dict[str, int] = field(default_factory=dict)  # "red -> purple": count


CAPTION_ATTRIBUTES = ("size", "colour", "shape", "cell")


def caption_scores(predictions: Sequence[str], scenes: Sequence) -> CaptionScores:
    """Exact-caption rate, per-attribute accuracy (objects compared in order) and BLEU-4 against the truths."""

    right = dict.fromkeys(CAPTION_ATTRIBUTES, 0)
    objects = exact_captions = 0
    by_pair = {"held-out": np.zeros(3, int), "trained": np.zeros(3, int)}  # shapes right, colours right, objects
    mistakes: Counter[str] = Counter()
    for prediction, scene in zip(predictions, scenes, strict=True):
        stated = parse_caption(prediction) or []
        # Exact: the caption follows the grammar (in either word order) and states every object, and nothing else.
        exact_captions += [(o.size, o.colour, o.shape, o.cell) for o in stated] == [
            (o.size, o.colour, o.shape, o.cell) for o in scene.objects]
        for index, obj in enumerate(scene.objects):
            objects += 1
            pair = by_pair["held-out" if (obj.colour, obj.shape) in HELD_OUT_PAIRS else "trained"]
            pair[2] += 1
            if index < len(stated):
                said = stated[index]
                for name in CAPTION_ATTRIBUTES:
                    right[name] += getattr(said, name) == getattr(obj, name)
                pair[:2] += (said.shape == obj.shape, said.colour == obj.colour)
                if said.colour != obj.colour:
                    mistakes[f"{obj.colour} -> {said.colour}"] += 1
    truths = [scene.caption for scene in scenes]
    exact = exact_captions / len(truths) if truths else float("nan")
    bleu = sacrebleu.corpus_bleu(list(predictions), [truths]).score
    per_attribute = {name: count / max(objects, 1) for name, count in right.items()}
    shape_by_pair, colour_by_pair = (
        {pair: float(counts[which] / counts[2]) if counts[2] else float("nan") for pair, counts in by_pair.items()}
        for which in (0, 1))
    return CaptionScores(len(truths), exact, sum(right.values()) / max(4 * objects, 1), float(bleu), per_attribute,
                         shape_by_pair, colour_by_pair, dict(mistakes.most_common()))


def caption_images(
    model: Generalist,
    tokenizer: TextTokenizer,
    images: Sequence[np.ndarray],
    max_new_tokens: int = 48,
    batch: int | None = None,
) -> list[str]:
    """A caption for each image (H, W, 3) uint8: its patches prompt the model, which writes text until eos;
    `batch` images at a time (None: all at once)."""
    layout = model.config.layout
    step = batch or max(len(images), 1)
    captions: list[str] = []
    for start in range(0, len(images), step):
        prompts = [tokenize_caption(image, np.zeros(0, np.int64), layout) for image in images[start : start + step]]
        captions += [tokenizer.decode(ids) for ids in generate(model, prompts, max_new_tokens)]
    return captions


def evaluate_captions(
    model: Generalist, tokenizer: TextTokenizer, n: int = 100, seed: int = 0, batch: int = 32, style: str = "plain",
    size: int = IMAGE_SIZE,
) -> tuple[CaptionScores, list[str]]:
    """Caption `n` held-out scenes (colour-shape pairs never seen in training) of a scene style ("unseen": on
    backgrounds never seen in training either), drawn `size` pixels square; the scores and the captions."""
    model.eval()
    scenes = [generate_scene(seed + i, "heldout", style, size) for i in range(n)]
    predictions = caption_images(model, tokenizer, [s.image for s in scenes], batch=batch)
    return caption_scores(predictions, scenes), predictions


@dataclass(frozen=True)
class ChatPerplexity:
    """Perplexity of held-out conversations per text token and per word (comparable across tokenizers)."""

    per_token: float
    per_word: float
    tokens: int
    words: int


def evaluate_emoji(
    model: Generalist, tokenizer: TextTokenizer, n: int = 200, seed: int = 0, batch: int = 32
) -> tuple[float, list[tuple[str, str]]]:
    """Class accuracy on `n` held-out renderings of emoji spread over the classes; the (truth, caption) pairs."""
    model.eval()
    classes = emoji_classes()
    indices = [int(i) for i in np.linspace(0, len(classes) - 1, n).round()]
    images = [render_emoji(classes[i], seed + k, "heldout") for k, i in enumerate(indices)]
    predictions = caption_images(model, tokenizer, images, batch=batch)
    pairs = [(classes[i].caption, p) for i, p in zip(indices, predictions, strict=True)]
    return emoji_accuracy(predictions, indices), pairs


@torch.no_grad()
def chat_perplexities(
    model: Generalist, tokenizer: TextTokenizer, conversations: Sequence[Sequence[str]], batch: int = 16
) -> ChatPerplexity:
    """Perplexities of whole conversations (chat format, then eos), each cut to the model's context.

    Per word: the summed loss of every text token over the words scored (`text.words` of the chat text the kept
    tokens decode to, each turn marker one word, the end-of-sequence one more when it fits), so two tokenizers
    that cut the same text into different pieces score on one scale.
    """
    model.eval()
    layout = model.config.layout
    context = model.config.context
    total_loss = total_tokens = total_words = 0.0
    for start in range(0, len(conversations), batch):
        kept = [np.append(tokenizer.encode(format_chat(c)), tokenizer.eos_id)[:context]
                for c in conversations[start : start + batch]]
        sequences = [tokenize_text(ids, layout) for ids in kept]
        output = model(collate(sequences, layout).to(next(model.parameters()).device))
        total_loss += float(output.loss) * output.n_text
        total_tokens += output.n_text
        for ids in kept:
            text = tokenizer.decode(ids[1:])  # the first token is read, never predicted
            markers = sum(text.count(marker) for marker in CHAT_MARKERS)
            for marker in CHAT_MARKERS:
                text = text.replace(marker, " ")
            total_words += len(words(text)) + markers + int(ids[-1] == tokenizer.eos_id)
    if not total_tokens:
        raise ValueError("chat_perplexity: no conversations with text to score")
    return ChatPerplexity(math.exp(total_loss / total_tokens), math.exp(total_loss / max(total_words, 1)),
                          int(total_tokens), int(total_words))


def chat_perplexity(
    model: Generalist, tokenizer: TextTokenizer, conversations: Sequence[Sequence[str]], batch: int = 16
) -> float:
    """Perplexity per text token of whole conversations (`chat_perplexities`)."""
    return chat_perplexities(model, tokenizer, conversations, batch).per_token


@dataclass(frozen=True)
class ReplyChecks:
    """What the fixed prompts' replies are made of."""

    known_words: float  # share of the replies' words that are words of the training corpora
    longest_word_run: int  # most copies of one word back to back ("the the the": 3)
    longest_phrase_run: int  # most copies of one word sequence back to back ("I'm not sure. I'm not sure.": 2)


def longest_repeat(sequence: Sequence[str], max_width: int | None = None) -> int:
    """The most copies of one run of items (at most `max_width` long) that follow each other back to back in
    `sequence`: 1 if nothing repeats, 0 if it is empty."""
    best = min(len(sequence), 1)
    for width in range(1, min(len(sequence) // 2, max_width or len(sequence)) + 1):
        for start in range(len(sequence) - width):
            copies = 1
            while sequence[start + copies * width : start + (copies + 1) * width] == sequence[start : start + width]:
                copies += 1
            best = max(best, copies)
    return best


def reply_checks(replies: Sequence[str], vocabulary: set[str]) -> ReplyChecks:
    """How many of the replies' words are words of `vocabulary`, and the longest back-to-back repeats in them."""
    said = [words(reply) for reply in replies]
    flat = [w for reply in said for w in reply]
    known = sum(w in vocabulary for w in flat) / len(flat) if flat else math.nan
    return ReplyChecks(known, max((longest_repeat(reply, max_width=1) for reply in said), default=0),
                       max((longest_repeat(reply) for reply in said), default=0))


def chat_prompt(tokenizer: TextTokenizer, history: Sequence[str]) -> np.ndarray:
    """The ids the assistant's next turn follows: those the training text of the whole conversation opens with.

    The marker is not followed by its space: SentencePiece writes that space into the reply's first piece
    ("▁Hi"), while a prompt ending in the space ends in a lone "▁", which training text has only before
    pieces that never join a space (the replies then opened with "..", "?", digits).
    """
    return tokenizer.encode(format_chat(history) + f"\n{ASSISTANT_MARKER}")


def chat_reply(
    model: Generalist, tokenizer: TextTokenizer, history: Sequence[str], max_new_tokens: int = 64,
    temperature: float = 0.0, top_k: int | None = None, generator: torch.Generator | None = None,
) -> str:
    """The assistant's next turn after `history` (user first, alternating, ending with the user's turn): greedy
    at temperature 0, else sampled (from the `top_k` most likely pieces if given, drawn with `generator`)."""
    if not 1 <= max_new_tokens < model.config.context:
        raise ValueError(f"max_new_tokens must lie in 1..{model.config.context - 1} (the context of "
                         f"{model.config.context} tokens also holds the conversation), got {max_new_tokens}")
    prompt = chat_prompt(tokenizer, history)[-(model.config.context - max_new_tokens) :]  # the latest turns
    (ids,) = generate(model, [prompt], max_new_tokens, temperature, top_k, generator=generator)
    # The model writes on into a next turn (the user's, or its own again) when it does not stop: the reply ends
    # at the first turn marker.
    text = tokenizer.decode(ids)
    for marker in (USER_MARKER, ASSISTANT_MARKER):
        text = text.split(marker)[0]
    return text.strip()
