"""The training mixture: an endless stream of batches of token sequences drawn from every task by weight.

Each sequence holds one task's data, at most `sequence_length` tokens:
- control: a window of a recorded episode, starting and ending on timestep boundaries. With probability
  `prompt_probability` (Gato section 3.3: 25%) a prompt is prepended: a slice of another episode of the same
  task, taken from that episode's end with probability `prompt_end_fraction` (half) and from a uniform point
  otherwise. The prompt takes half of the timesteps that fit, the window the rest.
- captions: image patches, then the caption's text and end-of-sequence.
- dialogue, chitchat and prose: the text and end-of-sequence, or a window of it when it is longer than the
  sequence.
Short samples (captions, dialogues) are packed: a sequence is filled with samples of its task until the next
one does not fit, rather than padded. bench/data.py measures why: a 64x64 caption is about 30 tokens, so
padding it to a control window's 1,024 would waste almost all of a batch's compute.

Determinism and distribution: batch `b` of shard `s` is drawn from `numpy.random.default_rng([seed, s, b])`
alone, so the stream does not depend on the number of DataLoader workers (worker `w` of `W` makes steps
`w, w + W, ...`), and resuming at step `b` is exact. Shards read disjoint parts of every source (episode `i`
belongs to shard `i % n_shards`; scene seeds likewise), and ranks read disjoint shards, so two ranks never draw
the same sequence.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from generalist.batch import Batch, collate
from generalist.datasets import captions, emoji, text
from generalist.datasets.minari_source import MinariEpisodes
from generalist.datasets.scenes import (
    CELL_PHRASES,
    COLOURS,
    GRID,
    IMAGE_SIZE,
    SHAPES,
    SIZES,
    UNIFORM_BACKGROUNDS,
    caption_of,
    generate_scene,
    recolour_objects,
    text_only_caption,
)
from generalist.datasets.storage import EpisodeDataset
from generalist.envs.external import MINARI_PREFIX
from generalist.tokenizers import (
    PATCH_SIZE,
    ActionSpec,
    TextTokenizer,
    TokenizedSequence,
    TokenLayout,
    stack_frames,
    tokenize_caption,
    tokenize_episode,
    tokenize_text,
)
from generalist.tokenizers.stream import TextEncoder


@dataclass(frozen=True)
class Shard:
    """The part of every source that one shard of the stream reads: items `index`, `index + count`, ..."""

    index: int = 0
    count: int = 1

    def items(self, n: int, source: str) -> np.ndarray:
        """Indices of this shard among `n` items; a shard with none is an error naming the source."""
        mine = np.arange(self.index, n, self.count)
        if len(mine) == 0:
            raise ValueError(
                f"{source}: {n} items cannot be shared among {self.count} data shards (ranks x accumulation "
                "steps); record more or use fewer"
            )
        return mine


class EpisodeSource(Protocol):
    """Recorded episodes of one task, read by window without loading the rest."""

    @property
    def action_spec(self) -> ActionSpec: ...

    def __len__(self) -> int: ...

    def episode_length(self, episode: int) -> int: ...

    def read(self, episode: int, start: int, stop: int) -> tuple[Mapping[str, Any], np.ndarray]:
        """Observations by key, stacked over steps start..stop-1, and the actions of those steps."""
        ...


class SequenceSource(Protocol):
    """One task of the mixture: draws one sample of at most `max_tokens` tokens."""

    packable: bool

    def sample(self, rng: np.random.Generator, shard: Shard, max_tokens: int) -> TokenizedSequence: ...


@dataclass
class ControlSource:
    """Windows of recorded episodes, with prompts from other episodes of the same task."""

    name: str
    episodes: EpisodeSource
    layout: TokenLayout
    prompt_probability: float = 0.25
    prompt_end_fraction: float = 0.5
    packable: bool = False
    prompts: ControlSource | None = None  # the source of prompts (None: other episodes of this one)
    text_encoder: TextEncoder | None = None  # reads text observations (a Minari dataset's Text space)
    # Learner-driven recordings: read the actions the env ran, predict the recorded labels (needs episodes with
    # `executed_actions`, as EpisodeDataset and EpisodeUnion have).
    reads_executed: bool = False
    _tokens_per_step: int | None = field(default=None, init=False, repr=False)

    def tokens_per_step(self) -> int:
        """Tokens of one timestep (observation, separator, action): the same for every step of a task."""
        if self._tokens_per_step is None:
            self._tokens_per_step = len(self.tokenize_window(0, 0, 1))
        return self._tokens_per_step

    def tokenize_window(
        self, episode: int, start: int, stop: int, shuffle_images: np.random.Generator | None = None
    ) -> TokenizedSequence:
        """Steps start..stop-1 of one episode as a token sequence.

        With a layout that stacks frames, each timestep's image is stacked from the recorded frames before it
        (read from up to `frame_stack - 1` steps before `start`). `shuffle_images` permutes the window's
        (stacked) images in time: a diagnosis of whether a policy reads them. With `reads_executed` the action
        tokens read what the env ran and the targets are the labels (`tokenize_episode`).
        """
        history = min(start, self.layout.frame_stack - 1) if self.layout.stacks_frames else 0
        read, actions = self.episodes.read(episode, start - history, stop)
        observations = {key: value[history:] for key, value in read.items()}
        if "image" in read and self.layout.stacks_frames:
            observations["image"] = stack_frames(read["image"], self.layout.frame_stack, self.layout.frame_colour,
                                                 history, self.layout.frame_size)
        actions = actions[history:]
        if shuffle_images is not None and "image" in observations:
            observations["image"] = observations["image"][shuffle_images.permutation(len(actions))]
        executed = self.episodes.executed_actions(episode, start, stop) if self.reads_executed else None
        return tokenize_episode(observations, actions, self.episodes.action_spec, self.layout, self.text_encoder,
                                executed=executed)

    def sample(self, rng: np.random.Generator, shard: Shard, max_tokens: int) -> TokenizedSequence:
        """A window of one of this shard's episodes, maybe behind a prompt from another episode."""
        max_steps = max_tokens // self.tokens_per_step()
        if max_steps < 1:
            raise ValueError(
                f"{self.name}: one timestep is {self.tokens_per_step()} tokens, more than the sequence length "
                f"{max_tokens}"
            )
        episode = int(rng.choice(shard.items(len(self.episodes), self.name)))
        parts = []
        prompter = self if self.prompts is None else self.prompts
        own = self.prompts is None  # prompts from this source's own episodes: never the window's episode
        if len(prompter.episodes) > own and max_steps > 1 and rng.random() < self.prompt_probability:
            other = int(rng.integers(len(prompter.episodes) - own))
            if own:
                other += other >= episode  # any episode but this one
            other_length = prompter.episodes.episode_length(other)
            prompt_steps = min(max_steps // 2, other_length)
            if rng.random() < self.prompt_end_fraction:
                prompt_start = other_length - prompt_steps
            else:
                prompt_start = int(rng.integers(other_length - prompt_steps + 1))
            parts.append(prompter.tokenize_window(other, prompt_start, prompt_start + prompt_steps))
            max_steps -= prompt_steps
        length = self.episodes.episode_length(episode)
        window = min(max_steps, length)
        start = int(rng.integers(length - window + 1))
        parts.append(self.tokenize_window(episode, start, start + window))
        return TokenizedSequence.concatenate(parts)


@dataclass
class LearnerMixSource:
    """A task's expert windows, and with probability `share` windows of its learner-driven recordings (DAgger),
    those prompted by expert demonstrations. A learner window reads the actions that ran and predicts the
    expert's labels: acting, the policy reads its own history, never the labels."""

    expert: ControlSource
    learner: ControlSource
    share: float
    packable: bool = False

    def sample(self, rng: np.random.Generator, shard: Shard, max_tokens: int) -> TokenizedSequence:
        """A window of the learner's recordings with probability `share`, else of the expert's."""
        source = self.learner if rng.random() < self.share else self.expert
        return source.sample(rng, shard, max_tokens)


@dataclass
class EpisodeUnion:
    """Several recordings of one task read as one (DAgger's aggregate of every round), episodes in order."""

    parts: Sequence[EpisodeDataset]

    def __post_init__(self) -> None:
        self._ends = np.cumsum([len(part) for part in self.parts])

    @property
    def action_spec(self) -> ActionSpec:
        """The action spec of the recordings (checked equal by `check_learner_data`)."""
        return self.parts[0].action_spec

    def __len__(self) -> int:
        return int(self._ends[-1])

    def _locate(self, episode: int) -> tuple[EpisodeDataset, int]:
        part = int(np.searchsorted(self._ends, episode, side="right"))
        return self.parts[part], episode - (int(self._ends[part - 1]) if part else 0)

    def episode_length(self, episode: int) -> int:
        """Timesteps of one episode."""
        part, local = self._locate(episode)
        return part.episode_length(local)

    def read(self, episode: int, start: int, stop: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Observations by key and actions of rows [start, stop) of one episode."""
        part, local = self._locate(episode)
        return part.read(local, start, stop)

    def executed_actions(self, episode: int, start: int, stop: int) -> np.ndarray:
        """The actions the env ran in rows [start, stop) of one episode (`EpisodeDataset.executed_actions`)."""
        part, local = self._locate(episode)
        return part.executed_actions(local, start, stop)


def learner_recordings(learner_data_dir: Path, task: str) -> list[Path]:
    """Every learner-driven recording of `task` under `learner_data_dir`: `<dir>/<task>`, then DAgger's rounds
    `<dir>/dagger-<k>/<task>` in round order (a `generalist run` directory): DAgger trains on the aggregate."""
    rounds = sorted(
        (d for d in learner_data_dir.glob("dagger-*") if d.name.removeprefix("dagger-").isdigit()),
        key=lambda d: int(d.name.removeprefix("dagger-")),
    )
    return [d / task for d in (learner_data_dir, *rounds) if (d / task).is_dir()]


# Settings a task's learner-driven recordings must share with its expert recordings to train beside them.
SHARED_SETTINGS = ("task", "env_id", "env_kwargs", "action_kind", "action_size")


def check_learner_data(expert: EpisodeDataset, learner: EpisodeDataset) -> None:
    """Refuse learner-driven recordings made in another env, or with other actions, than the expert's."""
    for key in SHARED_SETTINGS:
        if expert.index.get(key) != learner.index.get(key):
            raise ValueError(f"{learner.directory} was recorded with {key}={learner.index.get(key)!r}, "
                             f"{expert.directory} with {expert.index.get(key)!r}: they cannot train together")


@dataclass
class SceneCaptionSource:
    """Procedural scenes of the train split with their captions; rank r draws seeds congruent to r."""

    tokenizer: TextTokenizer
    layout: TokenLayout
    packable: bool = True
    style: str = "plain"  # `scenes.STYLES`: plain is the dark background only; varied, textured and gray vary it
    size: int = IMAGE_SIZE  # pixels per side (`SCENE_SIZES`)
    order: str = "colour-first"  # the captions' word order (`scenes.CAPTION_ORDERS`)
    # Share of scenes whose colour tokens read other objects' patches, captioned with those colours
    # (`scenes.recolour_objects`); 48-pixel scenes (one cell a patch) and two tokens a patch only.
    colour_recombine: float = 0.0
    # Recombine only scenes whose background is the same everywhere (`scenes.UNIFORM_BACKGROUNDS`): elsewhere a
    # moved colour token's border shows another place's background, and moved scenes can be told from drawn ones.
    colour_recombine_uniform: bool = False
    # Recombine by painting each object in its donor's colour in place (`Scene.painted`, the scene repainted): each
    # colour token reads its own patch, its own background, so a scene on any background can be recombined.
    colour_recombine_painted: bool = False

    def __post_init__(self) -> None:
        if (self.colour_recombine_uniform or self.colour_recombine_painted) and not self.colour_recombine:
            raise ValueError("colour_recombine_uniform and colour_recombine_painted say how colour_recombine moves "
                             "colours: give it a share")
        if not 0.0 <= self.colour_recombine <= 1.0:
            raise ValueError(f"colour_recombine is a share of scenes in [0, 1], got {self.colour_recombine}")
        if self.colour_recombine and not (self.layout.caption_route_tokens and self.size == GRID * PATCH_SIZE):
            raise ValueError("colour_recombine moves colour tokens between the objects' patches: it needs two tokens "
                             f"a caption patch (route_tokens) and 48-pixel scenes, one cell a patch (got {self.size})")
        if self.colour_recombine and self.style == "gray":
            raise ValueError("colour_recombine: gray scenes' captions name no colour")

    def sample(self, rng: np.random.Generator, shard: Shard, max_tokens: int) -> TokenizedSequence:
        """One scene: its patches, then its caption and end-of-sequence."""
        seed = int(rng.integers(2**40)) * shard.count + shard.index
        scene = generate_scene(seed, "train", self.style, self.size, self.order)
        caption, colour_from, colour_image = scene.caption, None, None
        eligible = not self.colour_recombine_uniform or scene.background in UNIFORM_BACKGROUNDS
        if self.colour_recombine and eligible and rng.random() < self.colour_recombine:  # no draw at 0 or ineligible
            moved = recolour_objects(scene.objects, rng)
            if moved is not None:
                objects, source = moved
                caption = caption_of(objects, order=self.order)
                if self.colour_recombine_painted:
                    colour_image = scene.painted(source)
                else:
                    colour_from = np.arange(GRID * GRID)  # one patch a cell, in raster order
                    colour_from[[obj.cell for obj in objects]] = [objects[k].cell for k in source]
        return _caption_sequence(scene.image, caption, self.tokenizer, self.layout, max_tokens, colour_from,
                                 colour_image)


@dataclass
class EmojiCaptionSource:
    """OpenMoji emoji, each drawn anew (`generalist.datasets.emoji`), with their templated captions."""

    tokenizer: TextTokenizer
    layout: TokenLayout
    packable: bool = True

    def sample(self, rng: np.random.Generator, shard: Shard, max_tokens: int) -> TokenizedSequence:
        """One rendering of a random emoji: its patches, then its caption and end-of-sequence."""
        seed = int(rng.integers(2**40)) * shard.count + shard.index
        image, caption = emoji.emoji_example(int(rng.integers(len(emoji.emoji_classes()))), seed, "train")
        return _caption_sequence(image, caption, self.tokenizer, self.layout, max_tokens)


@dataclass
class CaptionListSource:
    """A fixed list of (image, caption) pairs: real sample images, digits, a COCO-layout folder."""

    name: str
    images: Sequence[np.ndarray]
    captions: Sequence[str]
    tokenizer: TextTokenizer
    layout: TokenLayout
    packable: bool = True

    def __post_init__(self) -> None:
        if len(self.images) != len(self.captions):
            raise ValueError(f"{self.name}: {len(self.images)} images but {len(self.captions)} captions")
        if not self.captions:
            raise ValueError(f"{self.name}: no image-caption pairs")

    def sample(self, rng: np.random.Generator, shard: Shard, max_tokens: int) -> TokenizedSequence:
        """One pair of this shard."""
        index = int(rng.choice(shard.items(len(self.captions), self.name)))
        return _caption_sequence(self.images[index], self.captions[index], self.tokenizer, self.layout, max_tokens)


def _caption_sequence(
    image: np.ndarray, caption: str, tokenizer: TextTokenizer, layout: TokenLayout, max_tokens: int,
    colour_from: np.ndarray | None = None, colour_image: np.ndarray | None = None,
) -> TokenizedSequence:
    ids = np.append(tokenizer.encode(caption), tokenizer.eos_id)
    sequence = tokenize_caption(image, ids, layout, colour_from=colour_from, colour_image=colour_image)
    if len(sequence) > max_tokens:
        raise ValueError(f"a caption sequence of {len(sequence)} tokens does not fit the length {max_tokens}")
    return sequence


@dataclass
class SceneTextSource:
    """Scene captions without an image (`scenes.text_only_caption`): every colour-shape pair as language only."""

    tokenizer: TextTokenizer
    layout: TokenLayout
    packable: bool = True

    def sample(self, rng: np.random.Generator, shard: Shard, max_tokens: int) -> TokenizedSequence:
        """One caption's text ids and end-of-sequence."""
        ids = np.append(self.tokenizer.encode(text_only_caption(rng)), self.tokenizer.eos_id)
        return tokenize_text(ids[:max_tokens], self.layout)


@dataclass
class TextSource:
    """Documents of text (formatted dialogues, prose): whole, or a random window of a long one."""

    name: str
    documents: Sequence[str]
    tokenizer: TextTokenizer
    layout: TokenLayout
    packable: bool = True

    def __post_init__(self) -> None:
        if not any(document.strip() for document in self.documents):
            raise ValueError(f"{self.name}: empty corpus")

    def sample(self, rng: np.random.Generator, shard: Shard, max_tokens: int) -> TokenizedSequence:
        """One document of this shard and end-of-sequence, windowed to `max_tokens`."""
        index = int(rng.choice(shard.items(len(self.documents), self.name)))
        ids = np.append(self.tokenizer.encode(self.documents[index]), self.tokenizer.eos_id)
        start = int(rng.integers(max(len(ids) - max_tokens, 0) + 1))
        return tokenize_text(ids[start : start + max_tokens], self.layout)


@dataclass(frozen=True)
class MixtureConfig:
    """How batches are drawn."""

    weights: Mapping[str, float]
    """Task name -> relative frequency of its sequences; every named task needs a source."""
    sequence_length: int = 1024
    """Most tokens in one sequence (Gato: 1024)."""
    batch_size: int = 8
    """Sequences per batch."""
    seed: int = 0
    """Seed of the whole stream."""
    pack: bool = True
    """Fill a sequence of a packable task with several samples; else one sample, padded."""


class Mixture(IterableDataset):
    """An endless iterable of steps: each a list of `Batch`es, one per shard this process reads.

    A process reads `shards` out of `n_shards`. A trainer with R ranks and A micro-batches of gradient
    accumulation per step uses R x A shards, rank r reading shards r*A .. r*A + A-1: the data of a step is then
    the same whether it runs on one process accumulating A micro-batches or on A processes, so the two give the
    same weights.
    """

    def __init__(
        self,
        sources: Mapping[str, SequenceSource],
        config: MixtureConfig,
        layout: TokenLayout,
        shards: Sequence[int] = (0,),
        n_shards: int = 1,
        start_batch: int = 0,
    ) -> None:
        super().__init__()
        missing = sorted(set(config.weights) - set(sources))
        if missing:
            raise ValueError(f"task weights name tasks with no data: {missing}; tasks with data: {sorted(sources)}")
        weights = {task: float(w) for task, w in config.weights.items() if w > 0}
        if not weights or any(w < 0 or not np.isfinite(w) for w in config.weights.values()):
            raise ValueError(f"task weights must be finite, non-negative and not all zero: {dict(config.weights)}")
        if not shards or any(not 0 <= shard < n_shards for shard in shards):
            raise ValueError(f"shards {list(shards)} must be some of 0..{n_shards - 1}")
        self.sources = sources
        self.config = config
        self.layout = layout
        self.shards = [Shard(shard, n_shards) for shard in shards]
        self.start_batch = start_batch
        self.tasks = sorted(weights)
        total = sum(weights.values())
        self.probabilities = np.array([weights[t] / total for t in self.tasks])

    def sequence(self, rng: np.random.Generator, shard: Shard) -> tuple[str, TokenizedSequence]:
        """One sequence: its task, then its samples (several, packed, for short ones)."""
        task = self.tasks[int(rng.choice(len(self.tasks), p=self.probabilities))]
        source = self.sources[task]
        length = self.config.sequence_length
        parts = [source.sample(rng, shard, length)]
        used = len(parts[0])
        while self.config.pack and source.packable:
            candidate = source.sample(rng, shard, length)
            if used + len(candidate) > length:
                break
            parts.append(candidate)
            used += len(candidate)
        return task, TokenizedSequence.concatenate(parts) if len(parts) > 1 else parts[0]

    def batch(self, index: int, shard: Shard | None = None) -> tuple[list[str], Batch]:
        """Batch `index` of a shard (this process's first by default), with the task of each of its rows."""
        shard = shard or self.shards[0]
        rng = np.random.default_rng([self.config.seed, shard.index, index])
        drawn = [self.sequence(rng, shard) for _ in range(self.config.batch_size)]
        tasks = [task for task, _ in drawn]
        labels = [self.tasks.index(task) for task in tasks]
        return tasks, collate([seq for _, seq in drawn], self.layout, tasks=labels)

    def step(self, index: int) -> list[Batch]:
        """Batch `index` of every shard of this process."""
        return [self.batch(index, shard)[1] for shard in self.shards]

    def __iter__(self) -> Iterator[list[Batch]]:
        worker = get_worker_info()
        worker_id, n_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        index = self.start_batch + worker_id
        while True:
            yield self.step(index)
            index += n_workers


def make_loader(mixture: Mixture, num_workers: int = 2, prefetch_factor: int = 4) -> DataLoader:
    """A DataLoader over a mixture: batches are made in worker processes, so the trainer never waits on them."""
    return DataLoader(
        mixture,
        batch_size=None,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor if num_workers else None,
        persistent_workers=num_workers > 0,
        worker_init_fn=_single_threaded_worker,
    )


def _single_threaded_worker(_: int) -> None:
    # Workers tokenize with numpy; torch threads in each worker would only fight the trainer for the cores.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group, and a SIGTERM may too (a cluster's preemption, `pkill -f`): the
    # trainer finishes its step and checkpoints, which needs the workers alive until it shuts them down (a worker
    # left over exits when its parent does).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# The caption-scene tasks and the style of scenes each draws (`scenes.STYLES`).
SCENE_TASK_STYLES = {"scenes": "plain", "varied_scenes": "varied", "textured_scenes": "textured",
                     "gray_scenes": "gray", "spread_scenes": "spread"}
# Data tasks of the mixture besides the recorded control tasks (whose names are the env registry's).
CAPTION_AND_TEXT_TASKS = (
    *SCENE_TASK_STYLES, "scene_text", "emoji", "digits", "sample_images", "dialogue", "chitchat", "prose",
)


CAPTION_WORDS = {"size": tuple(SIZES), "colour": tuple(COLOURS), "shape": SHAPES}
"""The caption words `caption_word_targets` can mark, per attribute, in the grammar's order."""


def caption_word_pieces(tokenizer: TextTokenizer, attribute: str) -> tuple[dict[str, list[int]], str]:
    """Each word of a caption attribute (size, colour or shape) as the text ids it is written with after "a", and
    every phrase of the grammar written without that attribute."""
    if attribute not in CAPTION_WORDS:
        raise ValueError(f"unknown caption attribute {attribute!r}; expected one of {tuple(CAPTION_WORDS)}")
    others = [words for name, words in CAPTION_WORDS.items() if name != attribute]
    without = " and ".join(f"a {' '.join(choice)} {cell}," for choice in itertools.product(*others)
                           for cell in CELL_PHRASES)
    after_a = len(tokenizer.encode("a"))
    return {word: tokenizer.encode(f"a {word}")[after_a:].tolist() for word in CAPTION_WORDS[attribute]}, without


def caption_word_targets(
    tasks: Sequence[str], tokenizer: TextTokenizer, attribute: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The text ids that start an `attribute` word (size, colour or shape) in a scene caption, and which of `tasks` are
    caption scenes: the arguments of `batch.word_weights`.

    The first piece alone decides the word (the rest of it follows from it); a word's later pieces can be pieces
    of other caption words (purple's "le" ends "circle"), and a first piece that also occurs in captions without
    that attribute is left out, so that only the attribute's words weigh more.
    """
    pieces, without = caption_word_pieces(tokenizer, attribute)
    first = {word_pieces[0] for word_pieces in pieces.values()}
    ids = sorted(first - set(tokenizer.encode(without).tolist()))
    scene_tasks = torch.tensor([task in SCENE_TASK_STYLES for task in tasks], dtype=torch.bool)
    return torch.tensor(ids, dtype=torch.int64), scene_tasks


def caption_word_inputs(
    tasks: Sequence[str], tokenizer: TextTokenizer, attribute: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The text ids of an `attribute`'s words (colour or shape) in a scene caption and which of `tasks` are caption
    scenes: the arguments of `batch.shuffle_word_inputs`. Each word must be one piece of the text model, used by
    no other caption word (a swap of first pieces would leave a word's tail behind): a ValueError otherwise."""
    ids, scene_tasks = caption_word_targets(tasks, tokenizer, attribute)
    pieces, _ = caption_word_pieces(tokenizer, attribute)
    split = [word for word, word_pieces in pieces.items() if len(word_pieces) != 1]
    if split or len(ids) != len(pieces):
        raise ValueError(
            f"shuffling the {attribute} words needs each as one piece of the text model, its own; this one splits "
            f"or shares {split or 'some of ' + repr(tuple(pieces))}"
        )
    return ids, scene_tasks


def action_balance(tasks: Sequence[str], data_dir: str | Path, exponent: float) -> torch.Tensor:
    """Class weights of discrete action targets (tasks, actions): each recorded task's action of share p among its
    expert's recorded actions weighs p^-exponent, scaled to weigh 1 on average over those actions (an action never
    recorded: 1); tasks with no recorded discrete actions (captions, text, continuous control, Minari): all 1."""
    counts = {}
    for task in tasks:
        if task in CAPTION_AND_TEXT_TASKS or task.startswith(MINARI_PREFIX):
            continue
        recorded = episode_source(task, data_dir)
        if isinstance(recorded, EpisodeDataset) and recorded.action_spec.kind == "discrete":
            counts[task] = recorded.action_counts()
    table = np.ones((len(tasks), max([len(c) for c in counts.values()], default=1)), np.float32)
    for row, task in enumerate(tasks):
        if task in counts:
            shares = counts[task] / counts[task].sum()
            seen = shares > 0
            weights = np.ones_like(shares)
            weights[seen] = shares[seen] ** -exponent
            weights[seen] /= (shares[seen] * weights[seen]).sum()
            table[row, : len(weights)] = weights
    return torch.from_numpy(table)


def episode_source(task: str, data_dir: str | Path) -> EpisodeSource:
    """The recorded episodes of a control task: `data_dir/<task>`, or the local Minari dataset of a
    ``minari:<dataset id>`` task."""
    if task.startswith(MINARI_PREFIX):
        return MinariEpisodes(task[len(MINARI_PREFIX):])
    directory = Path(data_dir) / task
    if not directory.is_dir():
        raise FileNotFoundError(
            f"task {task!r}: no recorded data at {directory} (record it with `generalist collect --tasks {task} "
            f"--out {data_dir}`, or train on a local Minari dataset: minari:<dataset id>); caption and text tasks: "
            f"{list(CAPTION_AND_TEXT_TASKS)}"
        )
    episodes = EpisodeDataset(directory)
    if episodes.task != task:
        raise ValueError(f"{directory} holds episodes of {episodes.task!r} (its index says so), not of {task!r}")
    return episodes


def build_sources(
    tasks: Sequence[str],
    data_dir: str | Path,
    layout: TokenLayout,
    tokenizer: TextTokenizer,
    prompt_probability: float = 0.25,
    prompt_end_fraction: float = 0.5,
    learner_data_dir: str | Path | None = None,
    learner_share: float = 0.5,
    learner_reads_executed: bool = True,
    scene_size: int = IMAGE_SIZE,
    caption_order: str = "colour-first",
    colour_recombine: float = 0.0,
    colour_recombine_uniform: bool = False,
    colour_recombine_painted: bool = False,
) -> dict[str, SequenceSource]:
    """The source of every named task: recorded episodes under `data_dir/<task>`, or a caption or text corpus.

    A control task also recorded under `learner_data_dir` (driven by a trained agent, labelled by the expert:
    `learner_recordings`) draws `learner_share` of its windows from all those recordings together; those windows
    read the actions that ran (`learner_reads_executed`) or the expert's labels, and predict the labels. Caption
    scenes are drawn `scene_size` pixels square and captioned in `caption_order`, a share `colour_recombine` of
    them with their colours moved between their objects (`SceneCaptionSource`; only on uniform backgrounds with
    `colour_recombine_uniform`; painted in place with `colour_recombine_painted`).
    """
    if not 0.0 <= learner_share <= 1.0:
        raise ValueError(f"learner_share is a share of windows in [0, 1], got {learner_share}")
    sources: dict[str, SequenceSource] = {}
    for task in tasks:
        if task in SCENE_TASK_STYLES:
            sources[task] = SceneCaptionSource(tokenizer, layout, style=SCENE_TASK_STYLES[task], size=scene_size,
                                               order=caption_order, colour_recombine=colour_recombine,
                                               colour_recombine_uniform=colour_recombine_uniform,
                                               colour_recombine_painted=colour_recombine_painted)
        elif task == "scene_text":
            sources[task] = SceneTextSource(tokenizer, layout)
        elif task == "emoji":
            sources[task] = EmojiCaptionSource(tokenizer, layout)
        elif task in ("digits", "sample_images"):
            examples = captions.digit_captions() if task == "digits" else captions.skimage_samples()
            sources[task] = CaptionListSource(
                task, [e.image for e in examples], [e.caption for e in examples], tokenizer, layout
            )
        elif task == "dialogue":
            train, _ = text.split_conversations(text.chatterbot_conversations())
            sources[task] = TextSource(task, [text.format_chat(c) for c in train], tokenizer, layout)
        elif task == "chitchat":
            train, _ = text.chitchat_split()
            sources[task] = TextSource(task, [text.format_chat(c) for c in train], tokenizer, layout)
        elif task == "prose":
            sources[task] = TextSource(task, [*text.jokes(), *topics.values()], tokenizer, layout)
        else:
            expert = episode_source(task, data_dir)
            sources[task] = ControlSource(task, expert, layout, prompt_probability, prompt_end_fraction,
                                          text_encoder=tokenizer)
            learned = [] if learner_data_dir is None else learner_recordings(Path(learner_data_dir), task)
            if learned and isinstance(expert, EpisodeDataset):
                recordings = [EpisodeDataset(directory) for directory in learned]
                for learner in recordings:
                    check_learner_data(expert, learner)
                from_expert = sources[task]
                from_learner = ControlSource(task, EpisodeUnion(recordings), layout, prompt_probability,
                                             prompt_end_fraction, prompts=from_expert,
                                             reads_executed=learner_reads_executed)
                sources[task] = LearnerMixSource(from_expert, from_learner, learner_share)
    return sources
