"""Offline training: one plain loop over the task mixture, on one process or many under `torchrun`.

Design choices:
- AdamW as in Gato (section C.1: betas 0.9 / 0.95, weight decay 0.1 on matrices only), a linear warm-up then
  cosine decay to a tenth of the peak learning rate, gradient clipping at norm 1, gradient accumulation.
- Data: rank r of R with A accumulation steps reads shards r*A .. r*A+A-1 of R*A (datasets/mixture.py), and the
  torch random state of every micro-batch (patch position sampling, dropout) is seeded from (seed, step, shard).
  So a step computes the same thing on 1 process accumulating 2 micro-batches as on 2 processes, and a run
  resumed from a checkpoint continues exactly as if it had never stopped.
- Distributed: `torchrun --nproc_per_node N -m generalist.cli train ...` runs DistributedDataParallel (gloo on
  CPU, NCCL on GPU). Rank 0 alone writes checkpoints and logs.
- Checkpoints (checkpoint.py, the only module that knows their layout): the model, its text tokenizer, the
  optimizer's moments and the trainer's state, written atomically; `latest` names the newest one.
- Precision (`TrainConfig.precision`, precision.py): `auto` trains in bf16 autocast only where this machine runs
  it faster than fp32; the choice and its reason are written to the run directory's precision.json.
- Logs: TensorBoard event files (tensorboardX) and `metrics.csv` (step, metric, value) with fixed names:
  `train/loss`, `train/loss_text`, `train/loss_action`, `train/lr`, `train/tokens_per_s` of the logged step, and
  `task_loss/<task>`: each task's mean loss per target token over every step since the previous log (one batch
  holds few tasks, so a single step's would be mostly missing).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from generalist.batch import (
    Batch,
    balanced_action_weights,
    decisive_actions,
    drop_patch_routes,
    shuffle_action_inputs,
    shuffle_word_inputs,
    swap_colour_tokens,
    word_weights,
)
from generalist.checkpoint import (
    find_latest,
    latest_checkpoint,
    load_model,
    load_optimizer,
    load_text_tokenizer,
    load_weights,
    read_trainer_state,
    save_checkpoint,
)
from generalist.config import DEVICES, PRECISIONS, EvalConfig, TrainConfig
from generalist.datasets.mixture import (
    Mixture,
    MixtureConfig,
    action_balance,
    build_sources,
    caption_word_inputs,
    caption_word_targets,
    make_loader,
)
from generalist.datasets.scenes import CAPTION_ORDERS, SCENE_SIZES
from generalist.envs import TASKS
from generalist.evaluate import evaluate
from generalist.flags import save_json
from generalist.lock import exclusive
from generalist.metrics import TASK_LOSS_PREFIX, MetricLog
from generalist.model import Generalist, ModelConfig, preset
from generalist.precision import Precision, denormals_flushed, resolve_device, resolve_precision
from generalist.tokenizers import TextTokenizer, TextTokenizerConfig, frame_channels

# ------------------------------------------------------------------------------------------------ schedule


def learning_rate(step: int, config: TrainConfig, minutes: float = 0.0) -> float:
    """Linear warm-up to the peak, then cosine decay to `min_lr_ratio` of it at the last step (or minute)."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    if config.schedule == "time":
        progress = min(minutes / config.max_minutes, 1.0)  # type: ignore[operator]
    else:
        progress = min((step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1), 1.0)
    floor = config.learning_rate * config.min_lr_ratio
    return floor + (config.learning_rate - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (weights, the id table) and none on norms and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2))


# ------------------------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class Distributed:
    """Where this process sits: rank, world size, and the device it computes on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints and logs."""
        return self.rank == 0


def init_distributed(device: str) -> Distributed:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else a single process."""
    use_cuda = resolve_device(device).type == "cuda"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return Distributed(rank, world_size, torch.device("cuda", local_rank))
    if world_size > 1:
        # Processes on one machine share its cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    return Distributed(rank, world_size, torch.device("cpu"))


def check_same_frames(config: TrainConfig, saved_model: ModelConfig, checkpoint: Path) -> None:
    """Refuse to continue training a checkpoint on frames stacked otherwise than it was trained on."""
    saved = (saved_model.frame_stack, saved_model.frame_colour, saved_model.frame_size)
    asked = (config.frame_stack, config.frame_colour, config.frame_size)
    if saved != asked:
        raise ValueError(f"{checkpoint}: the checkpoint reads {frames_text(*saved)} a timestep, the config asks for "
                         f"{frames_text(*asked)} (--frame-stack, --frame-colour, --frame-size): give the checkpoint's, "
                         "or train a new model")


def check_same_model(config: TrainConfig, saved: ModelConfig, checkpoint: Path) -> None:
    """Refuse to continue training a checkpoint whose model the config would build otherwise: its frames, sizes and
    patch block are the checkpoint's, so a setting asked for and not had is an error, never silently dropped."""
    check_same_frames(config, saved, checkpoint)
    if saved.context < config.sequence_length:
        raise ValueError(f"{checkpoint}: a context of {saved.context} tokens cannot read sequences of "
                         f"{config.sequence_length}")
    asked = model_config(config, saved.text_vocab_size)
    # The context may be longer than the sequences; the text vocabulary is the checkpoint's own tokenizer's.
    differ = [f"{f.name} {getattr(saved, f.name)!r} (config: {getattr(asked, f.name)!r})" for f in fields(ModelConfig)
              if f.name not in ("context", "text_vocab_size") and getattr(saved, f.name) != getattr(asked, f.name)]
    if differ:
        raise ValueError(f"{checkpoint}: the checkpoint's model has {', '.join(differ)}: give the checkpoint's "
                         "settings (--model, --patch-input, --dropout, ...) or train a new model")


def frames_text(stack: int, colour: str, size: int) -> str:
    """How a timestep's frames read in an error: "4 gray frame(s) at 48 pixels"."""
    return f"{stack} {colour} frame(s) " + (f"at {size} pixels" if size else "as recorded")


def model_config(config: TrainConfig, text_vocab_size: int) -> ModelConfig:
    """The model a training config asks for, for a text tokenizer of `text_vocab_size` pieces."""
    patch_stride = {} if config.patch_stride is None else {"patch_stride": config.patch_stride}
    return preset(
        config.model, text_vocab_size=text_vocab_size, context=config.sequence_length, dropout=config.dropout,
        frame_stack=config.frame_stack, frame_colour=config.frame_colour, frame_size=config.frame_size,
        centre_patches=config.centre_patches, centre_colour_tokens=config.centre_colour_tokens,
        colour_centre_gate=config.colour_centre_gate,
        patch_input=config.patch_input, mask_background=config.mask_background,
        caption_patch_input=config.caption_patch_input, caption_mask_background=config.caption_mask_background,
        route_norm=config.route_norm, route_tokens=config.route_tokens, value_frequencies=config.value_frequencies,
        image_channels=max(3, frame_channels(config.frame_stack, config.frame_colour)), **patch_stride,
    )


def build_model(config: TrainConfig, tokenizer: TextTokenizer) -> Generalist:
    """The model of a training config, initialized from its seed (the same on every rank)."""
    torch.manual_seed(config.seed)
    return Generalist(model_config(config, tokenizer.vocab_size))


def _seed_micro_batch(config: TrainConfig, step: int, shard: int, n_shards: int) -> None:
    # A function of (seed, step, shard) only: the same on 1 process or many, before and after a resume.
    torch.manual_seed((config.seed * 1_000_003 + step) * n_shards + shard)


def _optimizer_step(
    wrapped: torch.nn.Module, model: Generalist, optimizer: torch.optim.Optimizer, micro_batches: list[Batch],
    config: TrainConfig, lr: float, step: int, shards: list[int], n_shards: int, where: Distributed, n_tasks: int,
    precision: Precision, balance: torch.Tensor | None = None,
    caption_words: Sequence[tuple[torch.Tensor, torch.Tensor, float]] = (),
    shuffled_words: Sequence[tuple[torch.Tensor, torch.Tensor, float]] = (),
    route_words: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One optimizer step over this process's micro-batches; returns its sums (see `totals` and `per_task`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    totals = torch.zeros(6, dtype=torch.float64)  # loss, text sum, text n, action sum, action n, tokens
    per_task = torch.zeros(2, n_tasks, dtype=torch.float64)  # each task's summed target loss, its targets
    for micro, batch in enumerate(micro_batches):
        _seed_micro_batch(config, step, shards[micro], n_shards)
        batch = batch.to(where.device)
        last = micro == len(shards) - 1
        sync = contextlib.nullcontext() if last or where.world_size == 1 else wrapped.no_sync()
        with sync, precision.autocast(where.device.type):
            weights = None
            if config.decisive_weight != 1.0:
                decisive = decisive_actions(batch, model.config.layout.discrete_range, config.decisive_after_ran,
                                            config.decisive_held)
                weights = 1.0 + (config.decisive_weight - 1.0) * decisive.float()
            if balance is not None:
                balanced = balanced_action_weights(batch, balance, model.config.layout.discrete_range)
                weights = balanced if weights is None else weights * balanced
            for word_ids, scene_tasks, weight in caption_words:
                worded = word_weights(batch, word_ids, scene_tasks, weight)
                weights = worded if weights is None else weights * worded
            inputs = shuffle_action_inputs(batch, config.action_shuffle)
            for word_ids, scene_tasks, probability in shuffled_words:
                inputs = shuffle_word_inputs(inputs, word_ids, scene_tasks, probability)
            if route_words is not None:  # (scene tasks, shape, colour and size word ids)
                scene_tasks, shape_ids, colour_ids, size_ids = route_words
                inputs, without_shape, without_colour = drop_patch_routes(
                    inputs, scene_tasks, config.shape_dropout, config.colour_dropout, None, config.route_swap)
                inputs, recoloured = swap_colour_tokens(inputs, scene_tasks, config.colour_swap)
                for share, rows, word_ids, weight in (
                    (config.shape_dropout, without_shape, shape_ids, config.dropped_shape_weight),
                    (config.colour_dropout, without_colour, colour_ids, 0.0),
                    # a swapped shape route is another object's mask: its size too
                    (config.shape_dropout if config.route_swap else 0.0, without_shape, size_ids, 0.0),
                    # the recoloured rows' colour words name colours their tokens do not carry
                    (config.colour_swap, recoloured, colour_ids, 0.0),
                ):
                    if share:  # a route never dropped or swapped has no rows to weigh
                        unread = torch.where(rows[:, None], word_weights(batch, word_ids, scene_tasks, weight), 1.0)
                        weights = unread if weights is None else weights * unread
            output = wrapped(inputs, batch.targets, weights, config.action_sigma)
            (output.loss / config.accumulation).backward()
        totals += torch.tensor([
            output.loss.item(),
            output.text_loss.nan_to_num().item() * output.n_text, output.n_text,
            output.action_loss.nan_to_num().item() * output.n_action, output.n_action,
            batch.n_tokens,
        ], dtype=torch.float64)
        labelled = batch.tasks >= 0
        task_index = batch.tasks[labelled].cpu()
        per_task[0].index_add_(0, task_index, output.row_loss[labelled].cpu().double())
        per_task[1].index_add_(0, task_index, output.row_targets[labelled].cpu().double())
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return torch.cat([totals, per_task.flatten()])


def task_losses(tasks: list[str], sums: torch.Tensor) -> dict[str, float]:
    """`task_loss/<task>`: each task's mean target loss over the (2, tasks) sums; tasks with no targets left out."""
    return {
        f"{TASK_LOSS_PREFIX}{task}": float(sums[0, i] / sums[1, i]) for i, task in enumerate(tasks) if sums[1, i] > 0
    }


RESUMABLE_CHANGES = (
    "steps", "max_minutes", "num_workers", "progress", "device", "log_every", "checkpoint_every", "checkpoint_minutes",
    "keep_checkpoints", "interim_minutes", "eval_every", "eval_tasks",
)
"""Settings a resumed run may change: how long it trains, how it is watched and saved. The others (the model, the
mixture, the data, the optimizer, the seed) decide what it learns and stay the saved ones."""


def resumed_config(saved: TrainConfig, given: TrainConfig) -> TrainConfig:
    """The config a resumed run continues with: the saved one, with the changes a resume allows.

    A setting given now (other than its default) that differs from the saved one is an error naming it, unless
    it is in RESUMABLE_CHANGES; the run writes where it is told (`given.run_dir`), wherever it was first trained.
    """
    default = TrainConfig()
    names = [f.name for f in fields(TrainConfig) if f.name != "run_dir"]
    changed = [name for name in names if getattr(given, name) != getattr(saved, name)
               and getattr(given, name) != getattr(default, name)]
    refused = [name for name in changed if name not in RESUMABLE_CHANGES]
    if refused:
        listed = "; ".join(f"{name} was {getattr(saved, name)!r}, now {getattr(given, name)!r}" for name in refused)
        raise ValueError(f"a resumed run keeps what decides what it learns ({listed}): train a new run for that, "
                         f"or resume with its settings (a resume may change {', '.join(RESUMABLE_CHANGES)})")
    kept = {name: getattr(given, name) for name in ("progress", "num_workers")}
    return replace(saved, run_dir=given.run_dir, **kept, **{name: getattr(given, name) for name in changed})


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM after saving the step it had reached; `--resume` continues it."""


class _StopSignals:
    """Once installed, the first SIGINT or SIGTERM asks the loop to stop at the end of its step; a second one stops now.

    Stopping between steps, never inside one, is what lets the loop checkpoint the step it reached: a cluster's
    preemption (SIGTERM) or a Ctrl-C then loses nothing. Outside the main thread signals cannot be caught, so
    there this does nothing.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, number: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(number).name

    def install(self) -> _StopSignals:
        """Catch SIGINT and SIGTERM (from the main thread only: elsewhere Python cannot)."""
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def restore(self) -> None:
        """Put back the handlers that were there before."""
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()


def check_config(config: TrainConfig) -> None:
    """Reject settings that cannot work, before any data is read."""
    if config.schedule not in ("steps", "time"):
        raise ValueError(f"schedule must be 'steps' or 'time', got {config.schedule!r}")
    if config.schedule == "time" and not (config.max_minutes and config.max_minutes > 0):
        raise ValueError("schedule='time' needs max_minutes > 0: the time the schedule spans")
    if not 0.0 <= config.action_shuffle <= 1.0:
        raise ValueError(f"action_shuffle is a share of action tokens in [0, 1], got {config.action_shuffle}")
    if not 0.0 <= config.colour_shuffle <= 1.0:
        raise ValueError(f"colour_shuffle is a share of colour words in [0, 1], got {config.colour_shuffle}")
    if not 0.0 <= config.shape_dropout <= 1.0:
        raise ValueError(f"shape_dropout is a share of caption sequences in [0, 1], got {config.shape_dropout}")
    if not (0.0 <= config.colour_dropout <= 1.0 and config.shape_dropout + config.colour_dropout <= 1.0):
        raise ValueError(f"colour_dropout is a share of caption sequences in [0, 1 - shape_dropout], got "
                         f"{config.colour_dropout} beside shape_dropout {config.shape_dropout}")
    captions_read = config.caption_patch_input or config.patch_input
    if config.route_swap and not (config.shape_dropout or config.colour_dropout):
        raise ValueError("route_swap reads the dropped route from another patch: give shape_dropout or "
                         "colour_dropout the rows it does so in")
    if not 0.0 <= config.colour_swap <= 1.0:
        raise ValueError(f"colour_swap is a share of caption sequences in [0, 1], got {config.colour_swap}")
    if config.colour_swap and not config.route_tokens:
        raise ValueError("colour_swap swaps the caption patches' colour tokens: it needs route_tokens")
    # colour_recombine's share, scene size and route tokens: `SceneCaptionSource` refuses what it cannot draw.
    if config.colour_recombine and config.colour_swap:
        raise ValueError("colour_recombine and colour_swap each move colour tokens: give one or the other")
    if config.colour_swap and (config.shape_dropout or config.colour_dropout):
        raise ValueError("colour_swap and the route dropouts each choose rows of their own: give one or the other")
    if (config.shape_dropout or config.colour_dropout) and captions_read != "mask+colour":
        raise ValueError(f"shape_dropout and colour_dropout need the captions read as 'mask+colour' (two routes "
                         f"apart; patch_input, or caption_patch_input), got {captions_read!r}")
    positive = {name: getattr(config, name) for name in (
        "steps", "batch_size", "accumulation", "sequence_length", "checkpoint_every", "keep_checkpoints", "log_every",
        "frame_stack")}
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    for name in ("warmup_steps", "eval_every", "num_workers", "learning_rate", "weight_decay", "grad_clip",
                 "min_lr_ratio", "decisive_weight", "colour_weight", "shape_weight",
                 "dropped_shape_weight", "action_sigma", "action_balance"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must not be negative, got {getattr(config, name)}")
    for name in ("max_minutes", "checkpoint_minutes", "interim_minutes"):
        value = getattr(config, name)
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number of minutes, or none; got {value}")
    if os.path.lexists(config.run_dir) and not config.run_dir.is_dir():
        raise ValueError(f"--run-dir {config.run_dir} is not a directory (a file, or a link that leads nowhere)")
    unknown = [task for task in config.eval_tasks if task not in TASKS]
    if unknown:
        raise ValueError(f"eval_tasks: unknown tasks {unknown}; known: {', '.join(TASKS)}")
    if config.precision not in PRECISIONS or config.device not in DEVICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} and device one of {', '.join(DEVICES)}; "
                         f"got {config.precision!r} and {config.device!r}")
    if config.scene_size not in SCENE_SIZES:
        raise ValueError(f"scene_size must be one of {SCENE_SIZES} pixels, got {config.scene_size}")
    if config.caption_order not in CAPTION_ORDERS:
        raise ValueError(f"caption_order must be one of {CAPTION_ORDERS}, got {config.caption_order!r}")
    model_config(config, TextTokenizerConfig().vocab_size)  # the model's own checks: patch inputs, mask backgrounds
    if config.decisive_after_ran and config.decisive_weight == 1.0:
        raise ValueError("decisive_after_ran chooses which steps decisive_weight weighs: give a decisive_weight "
                         "other than 1")
    if config.decisive_held and not config.decisive_after_ran:
        raise ValueError("decisive_held narrows decisive_after_ran's steps: give decisive_after_ran too")
    for background, read in (("mask_background", config.patch_input),
                             ("caption_mask_background", config.caption_patch_input)):
        if getattr(config, background) != "median" and read in ("", "pixels"):
            raise ValueError(f"{background} {getattr(config, background)!r} needs a mask: give its block a "
                             f"patch input other than 'pixels'")


def train(config: TrainConfig, resume: bool = False, eval_config: EvalConfig | None = None) -> Path:
    """Train per `config` (or continue the run in `config.run_dir`); returns the last checkpoint's directory.

    `eval_config` sets the evaluations inside training (`eval_every`); they use the defaults without it. One
    process at a time trains into a run directory (under torchrun, rank 0 holds the lock).
    """
    with denormals_flushed():  # the CLI's already; here for callers of `train`
        if int(os.environ.get("RANK", "0")) != 0:
            return _train(config, resume, eval_config)
        with exclusive(config.run_dir, "a training run"):
            return _train(config, resume, eval_config)


def _train(config: TrainConfig, resume: bool, eval_config: EvalConfig | None) -> Path:
    check_config(config)
    where = init_distributed(config.device)
    tokenizer = TextTokenizer.default() if config.text_tokenizer is None else TextTokenizer.load(config.text_tokenizer)
    start_step, tokens_seen, minutes_before = 0, 0, 0.0
    if not resume and (existing := find_latest(config.run_dir)) is not None:
        raise ValueError(f"{config.run_dir} already holds a run (its latest checkpoint: {existing.name}): continue it "
                         "with --resume, or train into another --run-dir")
    if resume:
        checkpoint = latest_checkpoint(config.run_dir)
        state = read_trainer_state(checkpoint)
        config = resumed_config(state["train_config"], config)
        check_config(config)
        start_step, tokens_seen, minutes_before = state["step"], state["tokens"], state["minutes"]
        model = load_weights(checkpoint)
        tokenizer = load_text_tokenizer(checkpoint)
    elif config.init_from is not None:
        model, tokenizer = load_model(config.init_from)
        check_same_model(config, model.config, config.init_from)
    else:
        model = build_model(config, tokenizer)
    precision = _agreed_precision(config.precision, where, read_precision(config.run_dir) if resume else None)
    model.to(where.device).train()
    optimizer = make_optimizer(model, config)
    if resume:
        load_optimizer(optimizer, checkpoint)
    # A caption-only batch leaves the action embedding without a gradient, a text-only one the patch block:
    # DDP must look for unused parameters, or the ranks' gradient reductions fall out of step.
    wrapped = DistributedDataParallel(model, find_unused_parameters=True) if where.world_size > 1 else model

    layout = model.config.layout
    n_shards = where.world_size * config.accumulation
    shards = [where.rank * config.accumulation + m for m in range(config.accumulation)]
    sources = build_sources(list(config.weights), config.data_dir, layout, tokenizer, config.prompt_probability,
                            learner_data_dir=config.learner_data_dir, learner_share=config.learner_share,
                            learner_reads_executed=not config.learner_reads_labels, scene_size=config.scene_size,
                            caption_order=config.caption_order, colour_recombine=config.colour_recombine,
                            colour_recombine_uniform=config.colour_recombine_uniform,
                            colour_recombine_painted=config.colour_recombine_painted)
    mixture = Mixture(
        sources,
        MixtureConfig(config.weights, config.sequence_length, config.batch_size, config.seed),
        layout, shards, n_shards, start_batch=start_step,
    )
    # Counted on the expert recordings only: a DAgger round's labels follow the states the agent reached.
    balance = action_balance(mixture.tasks, config.data_dir, config.action_balance) if config.action_balance else None
    caption_words = [(*caption_word_targets(mixture.tasks, tokenizer, attribute), weight)
                     for attribute, weight in (("colour", config.colour_weight), ("shape", config.shape_weight))
                     if weight != 1.0]
    shuffled_words = [(*caption_word_inputs(mixture.tasks, tokenizer, "colour"), config.colour_shuffle)
                      ] if config.colour_shuffle else []
    route_words = (_route_words(mixture.tasks, tokenizer)
                   if config.shape_dropout or config.colour_dropout or config.colour_swap else None)
    log = None
    if where.is_main:
        config.run_dir.mkdir(parents=True, exist_ok=True)
        save_json(config, config.run_dir / "train_config.json")
        write_precision(config.run_dir, precision)
        print(f"training in {precision.name}: {precision.reason}", flush=True)
        log = MetricLog(config.run_dir, after_step=start_step if resume else None)

    steps: Iterator[list[Batch]] = iter(make_loader(mixture, config.num_workers))
    progress = _progress_bar(config, start_step, where.is_main)
    started = time.monotonic()

    def elapsed_minutes() -> float:
        # Under DDP every rank takes rank 0's clock: the learning rate and when to stop must agree across ranks.
        minutes = minutes_before + (time.monotonic() - started) / 60
        if where.world_size > 1:
            value = torch.tensor([minutes], dtype=torch.float64)
            dist.broadcast(value, src=0)
            minutes = float(value)
        return minutes

    task_sums = torch.zeros(2, len(mixture.tasks), dtype=torch.float64)  # since the last log: loss sums, targets
    last_saved_minutes = minutes_before
    last_checkpoint = None
    step = start_step
    stop = _StopSignals().install()
    try:
        while step < config.steps:
            step_start = time.monotonic()
            lr = learning_rate(step, config, elapsed_minutes())
            totals = _optimizer_step(
                wrapped, model, optimizer, next(steps), config, lr, step, shards, n_shards, where, len(mixture.tasks),
                precision, balance, caption_words, shuffled_words, route_words,
            )
            if where.world_size > 1:
                dist.all_reduce(totals)
            task_sums += totals[6:].view(2, -1)
            step += 1
            tokens_seen += int(totals[5])
            tokens_per_s = float(totals[5]) / (time.monotonic() - step_start)
            loss = float(totals[0]) / (config.accumulation * where.world_size)
            if progress is not None:
                progress.update(1)
                postfix = {"loss": f"{loss:.3f}", "tok_s": f"{tokens_per_s:,.0f}"}
                if config.max_minutes is not None:
                    left = config.max_minutes - minutes_before - (time.monotonic() - started) / 60
                    postfix["min_left"] = f"{left:.1f}"
                progress.set_postfix(postfix)
            if log is not None and (step % config.log_every == 0 or step == config.steps):
                log.log(step, {
                    "train/loss": loss,
                    "train/loss_text": float(totals[1] / totals[2]) if totals[2] else math.nan,
                    "train/loss_action": float(totals[3] / totals[4]) if totals[4] else math.nan,
                    "train/lr": lr,
                    "train/tokens_per_s": tokens_per_s,
                    **task_losses(mixture.tasks, task_sums),
                })
                task_sums.zero_()
            minutes = elapsed_minutes()
            out_of_time = config.max_minutes is not None and minutes > config.max_minutes
            if log is not None and config.eval_every and config.eval_tasks and step % config.eval_every == 0:
                log.log(step, evaluation_metrics(model, config, eval_config or EvalConfig()))
            on_the_minute = config.checkpoint_minutes is not None and (
                minutes // config.checkpoint_minutes > last_saved_minutes // config.checkpoint_minutes
            )
            milestone = step % config.checkpoint_every == 0 or step == config.steps or out_of_time or on_the_minute
            interim = config.interim_minutes is not None and minutes - last_saved_minutes >= config.interim_minutes
            if milestone or interim:
                last_saved_minutes = minutes
                if where.is_main:
                    last_checkpoint = save_checkpoint(
                        config.run_dir, model, optimizer, tokenizer, config, step, tokens_seen, minutes, milestone
                    )
            if out_of_time:
                break
            if _stop_requested(stop, where):
                if where.is_main and not (milestone or interim):
                    last_checkpoint = save_checkpoint(
                        config.run_dir, model, optimizer, tokenizer, config, step, tokens_seen, minutes, False
                    )
                raise TrainingInterrupted(
                    f"training stopped by {stop.received or 'a signal'} at step {step}; saved "
                    f"{last_checkpoint or latest_checkpoint(config.run_dir)}; `generalist train --run-dir "
                    f"{config.run_dir} --resume` (or the same `generalist run` command) resumes from it"
                )
    finally:
        # The data workers ignore SIGTERM (they must outlive a signal until the step is saved), so the exit's
        # terminate-and-join of daemon processes would wait on them for ever: shut them down here, normally.
        shutdown = getattr(steps, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        stop.restore()
        if progress is not None:
            progress.close()
        if log is not None:
            log.close()
    if where.world_size > 1:
        dist.barrier()
    return last_checkpoint or latest_checkpoint(config.run_dir)


def _route_words(
    tasks: Sequence[str], tokenizer: TextTokenizer,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which of `tasks` are caption scenes, and the text ids of their shape, colour and size words: what
    `drop_patch_routes`' and `swap_colour_tokens`' rows leave unread."""
    shape_ids, scene_tasks = caption_word_targets(tasks, tokenizer, "shape")
    colour_ids, _ = caption_word_targets(tasks, tokenizer, "colour")
    size_ids, _ = caption_word_targets(tasks, tokenizer, "size")
    return scene_tasks, shape_ids, colour_ids, size_ids


PRECISION_FILE = "precision.json"


def _agreed_precision(requested: str, where: Distributed, recorded: dict[str, str] | None = None) -> Precision:
    """The precision this run trains in: what a resumed run recorded when `requested` is auto, else resolved
    now; under DDP rank 0's choice, so that every rank computes alike."""
    if requested == "auto" and recorded is not None:
        precision = Precision(recorded["precision"], f"{recorded['reason']} (chosen when the run started)")
    else:
        precision = resolve_precision(requested, where.device)
    if where.world_size > 1:
        flag = torch.tensor([float(precision.bf16)], device=where.device)
        dist.broadcast(flag, src=0)
        if bool(flag) != precision.bf16:
            precision = Precision("bf16" if bool(flag) else "fp32", "chosen by rank 0: " + precision.reason)
    return precision


def write_precision(run_dir: Path, precision: Precision) -> None:
    """Record in the run directory which precision training uses and why (the report shows it)."""
    (run_dir / PRECISION_FILE).write_text(json.dumps({"precision": precision.name, "reason": precision.reason}) + "\n")


def read_precision(run_dir: Path) -> dict[str, str] | None:
    """What `write_precision` recorded, or None for runs from before it."""
    path = run_dir / PRECISION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _stop_requested(stop: _StopSignals, where: Distributed) -> bool:
    # Under DDP a signal may reach the ranks at different steps: they stop together when any has one.
    if where.world_size == 1:
        return stop.received is not None
    flag = torch.tensor([float(stop.received is not None)], device=where.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag)


def evaluation_metrics(model: Generalist, config: TrainConfig, eval_config: EvalConfig) -> dict[str, float]:
    """`eval/<task>/return` and `eval/<task>/normalized` of the model now; the model goes back to training mode."""
    if eval_config.data_dir is None:  # prompted by the demonstrations the run trains on
        eval_config = replace(eval_config, data_dir=config.data_dir)
    results = evaluate(model, config.eval_tasks, eval_config)
    model.train()
    metrics = {}
    for result in results:
        metrics[f"eval/{result.task}/return"] = result.mean_return
        metrics[f"eval/{result.task}/normalized"] = result.normalized
    return metrics


def _progress_bar(config: TrainConfig, start_step: int, is_main: bool) -> Any:
    if not (is_main and config.progress):
        return None
    total = None if config.schedule == "time" else config.steps  # a time budget: the step count is unknown
    return tqdm(total=total, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
