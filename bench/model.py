"""Model speed: training tokens/s and MFU, a GPT-2 baseline, the patch block, and ms per action with and
without the KV cache.

Run from the repository root: `python -m bench.model` (`--quick` for a smoke run). Prints markdown tables for
docs/BENCHMARKS.md. Batches are realistic in shape, synthetic in content (speed does not depend on the
values): 8 windows of up to 1,024 tokens each, as training reads them.

- Training: one step is forward, backward and AdamW on one batch; tokens/s counts every non-padding token;
  the figure is the median step of `--steps` timed steps after two warm-up steps.
- MFU: the model's matmul and convolution FLOPs per step (forward x 3 for forward + backward; causal attention
  counted as the half of the score matrix it computes; norms and activations not counted) over the square
  matmul peak of this machine, measured in the same run.
- GPT-2: Hugging Face transformers' `GPT2LMHeadModel` of the same depth, width, heads and vocabulary (table
  size), built from a config, through SDPA attention, on the same ids (patch placeholders as ids: it is spared
  the pixel network) with the same loss mask (labels -100 elsewhere). Skipped with a message when transformers
  is not installed (`pip install -e ".[bench]"`). One extra row runs both at Gato's 32,000 text ids.
- Acting: a kept prompt of about 200 tokens, then steps of B episodes until the next step would not fit the
  1,024-token context; then `--act-steps` timed steps. "KV cache" is `Policy.step` (mean: slides included,
  their re-prefill amortized; median: a step without a slide); "recompute" is one forward over the whole
  full context per action token, as acting without a cache must.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bench.timing import median_seconds
from generalist.datasets.batching import Batch, collate
from generalist.model import Generalist, ModelConfig, PatchEncoder, preset
from generalist.policy import Policy
from generalist.tokenizers import ActionSpec, TokenizedSequence, TokenLayout, tokenize_caption, tokenize_episode
from generalist.tokenizers import tokenize_text as text_sequence

WINDOW = 1024
GATO_TEXT_VOCAB = 32_000  # Gato's SentencePiece vocabulary (section 2.1)
ATARI_FRAME = (80, 80, 3)  # what generalist.envs.atari hands the agent: 25 patches a frame


# ---------------------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Task:
    """The shape of one control task's timesteps."""

    name: str
    spec: ActionSpec
    continuous: int = 0  # continuous observation values per step
    image: tuple[int, int, int] | None = None


CARTPOLE = Task("cartpole", ActionSpec("discrete", 1, 2), continuous=4)
LUNAR = Task("lunarlander", ActionSpec("discrete", 1, 4), continuous=8)
HALFCHEETAH = Task("halfcheetah", ActionSpec("continuous", 6), continuous=17)
ATARI = Task("atari", ActionSpec("discrete", 1, 18), image=ATARI_FRAME)


def observations(task: Task, n_steps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Stacked random observations of a task (n_steps, ...)."""
    obs: dict[str, np.ndarray] = {}
    if task.continuous:
        obs["continuous"] = rng.normal(size=(n_steps, task.continuous)).astype(np.float32)
    if task.image:
        obs["image"] = rng.integers(0, 256, (n_steps, *task.image), dtype=np.uint8)
    return obs


def random_actions(task: Task, n_steps: int, rng: np.random.Generator) -> np.ndarray:
    """Random valid actions (n_steps, size)."""
    if task.spec.kind == "discrete":
        return rng.integers(0, task.spec.n, (n_steps, task.spec.size))
    return rng.uniform(-1, 1, (n_steps, task.spec.size)).astype(np.float32)


def episode(task: Task, n_steps: int, layout: TokenLayout, rng: np.random.Generator) -> TokenizedSequence:
    """A tokenized random episode of a task."""
    return tokenize_episode(observations(task, n_steps, rng), random_actions(task, n_steps, rng), task.spec, layout)


def control_window(task: Task, layout: TokenLayout, rng: np.random.Generator) -> TokenizedSequence:
    """As many whole timesteps of a task as fit in one window."""
    one = episode(task, 1, layout, rng)
    return episode(task, WINDOW // len(one), layout, rng)


def caption_window(layout: TokenLayout, rng: np.random.Generator) -> TokenizedSequence:
    """64x64 images (16 patches) each followed by a 12-token caption, packed into one window."""
    pairs, total = [], 0
    while total + 28 <= WINDOW:
        image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        pairs.append(tokenize_caption(image, rng.integers(4, layout.text_vocab_size, 12), layout))
        total += len(pairs[-1])
    return TokenizedSequence.concatenate(pairs)


def text_window(layout: TokenLayout, rng: np.random.Generator) -> TokenizedSequence:
    """A full window of dialogue text."""
    return text_sequence(rng.integers(4, layout.text_vocab_size, WINDOW), layout)


def control_batch(layout: TokenLayout, rng: np.random.Generator) -> Batch:
    """Control-heavy: 2 Atari, 2 CartPole, 2 LunarLander and 2 HalfCheetah windows."""
    tasks = [ATARI, ATARI, CARTPOLE, CARTPOLE, LUNAR, LUNAR, HALFCHEETAH, HALFCHEETAH]
    return collate([control_window(task, layout, rng) for task in tasks], layout)


def mixed_batch(layout: TokenLayout, rng: np.random.Generator) -> Batch:
    """Every modality: 2 Atari, 1 CartPole, 1 HalfCheetah, 2 caption and 2 dialogue windows."""
    windows = [control_window(task, layout, rng) for task in (ATARI, ATARI, CARTPOLE, HALFCHEETAH)]
    windows += [caption_window(layout, rng) for _ in range(2)] + [text_window(layout, rng) for _ in range(2)]
    return collate(windows, layout)


# ------------------------------------------------------------------------------------------ FLOPs


def training_flops(config: ModelConfig, batch: Batch) -> float:
    """Matmul and convolution FLOPs of one training step (forward + backward = 3 x forward) on `batch`."""
    d, f, n_layer = config.d_model, config.d_ff, config.n_layer
    lengths = batch.lengths.double()
    n_tokens = float(lengths.sum())
    blocks = 2 * n_layer * (4 * d * d + 3 * d * f) * n_tokens
    attention = n_layer * 4 * d * float((lengths * (lengths + 1) / 2).sum())  # QK^T and AV over causal pairs
    grid = (config.patch_size // config.patch_stride) ** 2
    c = config.patch_channels
    per_patch = 2 * grid * (config.image_channels * config.patch_stride**2 * c + 2 * 9 * c * c + c * d)
    patches = per_patch * len(batch.patches)
    head = 2 * d * config.layout.table_size * float(batch.loss_mask[:, 1:].sum())
    return 3 * (blocks + attention + patches + head)


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Square matmul FLOP/s on this machine (the MFU denominator)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, repeats, warmup=2)
    return 2 * size**3 / seconds


# --------------------------------------------------------------------------------------- training


def train_step_fn(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], bf16: bool) -> Callable[[], None]:
    """One forward, backward and AdamW step, in bf16 autocast or fp32."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def ours(config: ModelConfig, batch: Batch) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    """Our model and its loss on the batch."""
    model = Generalist(config).train()
    return model, lambda: model(batch).loss


def gpt2(config: ModelConfig, batch: Batch) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]] | None:
    """GPT2LMHeadModel of the same depth, width, heads and vocabulary, or None without transformers."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    gpt_config = GPT2Config(
        vocab_size=config.layout.table_size, n_positions=config.context, n_embd=config.d_model,
        n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None,
    )
    model = GPT2LMHeadModel._from_config(gpt_config, attn_implementation="sdpa").train()
    labels = batch.ids.masked_fill(~batch.loss_mask, -100)  # the model shifts labels itself
    attention_mask = torch.arange(batch.ids.shape[1])[None, :] < batch.lengths[:, None]
    return model, lambda: model(input_ids=batch.ids, attention_mask=attention_mask.long(), labels=labels).loss


def batches_for(layout: TokenLayout, names: list[str]) -> dict[str, Batch]:
    """The named batches ("control", "mixed") in a layout; the same content for the same layout."""
    rng = np.random.default_rng(0)
    makers = {"control": control_batch, "mixed": mixed_batch}
    return {name: makers[name](layout, rng) for name in names}


def training_rows(runs: list[tuple[str, ModelConfig, list[str]]], steps: int) -> tuple[list[str], list[str]]:
    """Training tokens/s rows (ours vs GPT-2, fp32 and bf16) of (label, config, batch names) runs, and notes."""
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    notes = [f"Matmul peak measured in the same run (2048x2048, {torch.get_num_threads()} threads): fp32 "
             f"{peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s."]
    rows = []
    for label, config, batch_names in runs:
        for batch_name, batch in batches_for(config.layout, batch_names).items():
            flops = training_flops(config, batch)
            for precision in ("fp32", "bf16"):
                model, loss_fn = ours(config, batch)
                seconds = median_seconds(train_step_fn(model, loss_fn, precision == "bf16"), steps, warmup=2)
                tokens_per_s = batch.n_tokens / seconds
                mfu = flops / seconds / peaks[precision]
                baseline = gpt2(config, batch)
                if baseline is None:
                    theirs, ratio = "skipped", "-"
                else:
                    gpt_model, gpt_loss = baseline
                    gpt_step = train_step_fn(gpt_model, gpt_loss, precision == "bf16")
                    gpt_seconds = median_seconds(gpt_step, steps, warmup=2)
                    theirs = f"{batch.n_tokens / gpt_seconds:,.0f}"
                    ratio = f"{gpt_seconds / seconds:.2f}x"
                rows.append(f"| {label} | {batch_name} | {precision} | {tokens_per_s:,.0f} | {mfu:.0%} "
                            f"| {theirs} | {ratio} |")
                print(rows[-1], flush=True)
    try:
        import transformers  # noqa: F401
    except ImportError:
        notes.append("GPT-2 baseline skipped: transformers is not installed (`pip install -e \".[bench]\"`).")
    return rows, notes


def patch_rows(repeats: int) -> list[str]:
    """Forward + backward time of patch-block variants (channels, stride) over 1,000 patches."""
    patches = torch.rand(1000, 3, 16, 16) * 0.5 - 0.25
    rows = []
    for channels, stride in ((64, 4), (32, 4), (32, 2), (64, 2), (128, 2), (16, 1)):
        encoder = PatchEncoder(preset("tiny", patch_channels=channels, patch_stride=stride))
        seconds = median_seconds(lambda encoder=encoder: encoder(patches).sum().backward(), repeats, warmup=2)
        n_parameters = sum(p.numel() for p in encoder.parameters())
        grid = f"{16 // stride}x{16 // stride}"
        rows.append(f"| {channels} | {stride} | {grid} | {n_parameters:,} | {seconds * 1e3:.0f} |")
        print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------------------- acting


def recompute_seconds(model: Generalist, batch: Batch, n_action_tokens: int) -> float:
    """Seconds to choose one action without a cache: one forward over the whole context per action token
    (timed once per batch and multiplied: each of those forwards costs the same)."""

    @torch.no_grad()
    def forward() -> None:
        hidden = model.hidden(batch)
        model.output_logits(hidden[torch.arange(len(hidden)), batch.lengths - 1])

    return n_action_tokens * median_seconds(forward, repeats=3, warmup=1)


def act_rows(name: str, tasks: list[Task], episodes: list[int], act_steps: int) -> list[str]:
    """Milliseconds per step of B episodes with the KV cache against recomputing the whole context."""
    torch.manual_seed(0)
    config = preset(name)
    model = Generalist(config).eval()
    layout = config.layout
    rng = np.random.default_rng(0)
    rows = []
    for task in tasks:
        for n_episodes in episodes:
            prompt = episode(task, 1, layout, rng)
            prompt = episode(task, max(1, 200 // len(prompt)), layout, rng)
            policy = Policy(model, task.spec)
            policy.reset([prompt] * n_episodes)
            step_obs = [observations(task, 1, rng) for _ in range(n_episodes)]
            step_obs = [{key: value[0] for key, value in obs.items()} for obs in step_obs]
            step_tokens = len(policy.context(0))
            policy.step(step_obs)
            step_tokens = len(policy.context(0)) - step_tokens
            while len(policy.context(0)) + step_tokens <= config.context:  # fill the context to the brim
                policy.step(step_obs)
            contexts = [policy.context(row) for row in range(n_episodes)]
            full = recompute_seconds(model, collate(contexts, layout), task.spec.size)
            slides, times = policy.n_slides, []
            for _ in range(act_steps):
                start = time.perf_counter()
                policy.step(step_obs)
                times.append(time.perf_counter() - start)
            slides = policy.n_slides - slides
            mean, median = float(np.mean(times)), float(np.median(times))
            rows.append(f"| {name} | {task.name} | {task.spec.size} | {n_episodes} | {len(contexts[0])} "
                        f"| {mean * 1e3:.1f} | {median * 1e3:.1f} | {full * 1e3:.0f} | {full / mean:.0f}x "
                        f"| {slides // n_episodes}/{act_steps} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    """Run every measurement and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], help="model presets to train")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per figure")
    parser.add_argument("--act-steps", type=int, default=60, help="timed policy steps per figure")
    parser.add_argument("--act-presets", nargs="+", default=["tiny", "small"], help="model presets that act")
    parser.add_argument("--no-gato-vocab", dest="gato_vocab", action="store_false",
                        help="skip the tiny model at Gato's text vocabulary (32,000)")
    parser.add_argument("--quick", action="store_true", help="tiny only, few steps: a smoke run")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.quick:
        args.presets, args.steps, args.act_steps, args.act_presets, args.gato_vocab = ["tiny"], 1, 5, ["tiny"], False
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for batch_name, batch in batches_for(preset("tiny").layout, ["control", "mixed"]).items():
        targets = int(batch.loss_mask[:, 1:].sum())
        print(f"{batch_name} batch: {batch.n_tokens} tokens, {len(batch.patches)} patches, {targets} targets")
    runs = [(name, preset(name), ["control", "mixed"]) for name in args.presets]
    if args.gato_vocab:
        runs.append(("tiny, V=32,000", preset("tiny", text_vocab_size=GATO_TEXT_VOCAB), ["control"]))
    header = ["| preset | batch | precision | tokens/s | MFU | GPT-2 tokens/s | ours / GPT-2 |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    print("\n".join(header), flush=True)
    rows, notes = training_rows(runs, args.steps)
    print("\n".join(["", *header, *rows, "", *notes]))
    patch_header = ["| channels | stride | grid | parameters | ms forward + backward per 1,000 patches |",
                    "| ---: | ---: | --- | ---: | ---: |"]
    print("\n".join(patch_header), flush=True)
    patches = patch_rows(args.steps)
    print("\n".join(["", *patch_header, *patches]))
    act_header = ["| preset | task | action tokens | episodes B | context before timing | KV cache ms/step, mean "
                  "| KV cache ms/step, median | recompute ms/step | speed-up (mean) | steps that slid |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    print("\n" + "\n".join(act_header), flush=True)
    tasks = [CARTPOLE, HALFCHEETAH, ATARI]
    act = [row for name in args.act_presets for row in act_rows(name, tasks, [1, 16], args.act_steps)]
    print("\n".join(["", *act_header, *act]))


if __name__ == "__main__":
    main()
