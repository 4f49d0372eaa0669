"""Model speed: training tokens/s and MFU, a GPT-2 baseline, the patch block, and ms per action with and
without the KV cache.

Run from the repository root: `python -m bench.model` (`--quick` for a smoke run; `--device cuda` on a GPU).
Prints markdown tables for docs/BENCHMARKS.md. Batches are realistic in shape, synthetic in content (speed does
not depend on the values): 8 windows of up to 1,024 tokens each, as training reads them.

- Precision: fp32 always; bf16 (autocast) only where `resolve_precision("auto")` picks it (a GPU with native
  bf16; a CPU with AVX-512 whose bf16 matmuls time 1.2x faster), else its rows are skipped with a message:
  on an AVX2-only CPU one bf16 training step takes about 29x an fp32 one, so they would not finish.
  `--precisions fp32 bf16` forces both.

- Training: one step is forward, backward and AdamW on one batch; tokens/s counts every non-padding token;
  the figure is the median step of `--steps` timed steps after two warm-up steps.
- MFU: the model's matmul and convolution FLOPs per step (forward x 3 for forward + backward; causal attention
  counted as the half of the score matrix it computes; norms and activations not counted) over the square
  matmul peak of this machine in the row's precision, measured in the same run (2048x2048 on a CPU, 8192x8192
  on a GPU, which a smaller one leaves partly idle; fp32 on a GPU without TF32, torch's default).
- GPT-2: Hugging Face transformers' `GPT2LMHeadModel` of the same depth, width, heads and vocabulary (table
  size), built from a config, through SDPA attention, on the same ids (patch placeholders as ids: it is spared
  the pixel network) with the same loss mask (labels -100 elsewhere). Skipped with a message when transformers
  is not installed (`pip install -e ".[bench]"`). One extra row runs both at Gato's 32,000 text ids.
- Acting: a kept prompt of about 200 tokens, then steps of B episodes until the next step would not fit the
  1,024-token context; then `--act-steps` timed steps. "KV cache" is `Agent.step` (mean: slides included,
  their re-prefill amortized; median: a step without a slide); "recompute" is one forward over the whole
  full context per action token, as acting without a cache must. Acting and the patch block run in fp32.
- On a GPU every timed call ends by waiting for the GPU, so wall time covers the kernels it queued.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bench.timing import median_seconds
from generalist.agent import Agent
from generalist.batch import Batch, collate
from generalist.model import PATCH_INPUTS, Generalist, ModelConfig, PatchEncoder, preset
from generalist.precision import Precision, matmul_flops, resolve_precision
from generalist.tokenizers import ActionSpec, TokenizedSequence, TokenLayout, tokenize_caption, tokenize_episode
from generalist.tokenizers import tokenize_text as text_sequence

WINDOW = 1024
GATO_TEXT_VOCAB = 32_000  # Gato's SentencePiece vocabulary (section 2.1)
ATARI_FRAME = (80, 80, 3)  # what generalist.envs.atari hands the agent: 25 patches a frame
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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


def peak_size(device: torch.device) -> int:
    """Side of the square matmul whose speed is the MFU denominator on `device`."""
    return 8192 if device.type == "cuda" else 2048


def matmul_peak(dtype: torch.dtype, device: torch.device) -> float:
    """Square matmul FLOP/s on `device` (the MFU denominator)."""
    size = peak_size(device)
    if device.type == "cpu":
        # Time-bounded, not a fixed count: a forced bf16 peak on an AVX2 CPU is about 20 s per 2048 matmul.
        return matmul_flops(dtype, size=size, seconds=1.0)
    a, b = torch.randn(size, size, dtype=dtype, device=device), torch.randn(size, size, dtype=dtype, device=device)
    seconds = median_seconds(synchronized(lambda: a @ b, device), repeats=10, warmup=2)
    return 2 * size**3 / seconds


def synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """`fn`, then a wait for `device` to finish what it queued (a GPU runs kernels asynchronously)."""

    def run() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


# -------------------------------------------------------------------------------------- precision


def cpu_matmul_test() -> dict[torch.dtype, float]:
    """FLOP/s of generalist.precision's start-up matmul test (512x512, 0.1 s) in fp32 and bf16."""
    return {dtype: matmul_flops(dtype) for dtype in DTYPES.values()}


def choose_precisions(
    forced: list[str] | None, device: torch.device, cpu_test: dict[torch.dtype, float]
) -> tuple[list[Precision], list[str]]:
    """The precisions to time (those forced, else fp32 plus bf16 where "auto" picks it) and notes on why."""
    if forced:
        chosen = [resolve_precision(name, device) for name in dict.fromkeys(forced)]
        return chosen, [f"Precisions forced: {precision.name} ({precision.reason})." for precision in chosen]
    auto = resolve_precision("auto", device, measure=cpu_test.__getitem__)  # reuses the test already timed
    if auto.bf16:
        return [Precision("fp32", "the baseline"), auto], [f"Precision auto: bf16 ({auto.reason})."]
    return [auto], [f"bf16 rows skipped: auto chose fp32 ({auto.reason}); `--precisions fp32 bf16` forces them."]


def machine_notes(device: torch.device, cpu_test: dict[torch.dtype, float], peaks: dict[str, float]) -> list[str]:
    """What this machine offers: CPU capability, the start-up matmul test, the matmul peaks (GFLOP/s)."""
    test = ", ".join(f"{name} {cpu_test[dtype] / 1e9:.1f}" for name, dtype in DTYPES.items())
    notes = [f"CPU capability (torch.backends.cpu.get_cpu_capability()): {torch.backends.cpu.get_cpu_capability()}; "
             f"start-up matmul test (512x512, 0.1 s each, {torch.get_num_threads()} threads): {test} GFLOP/s."]
    size = peak_size(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    measured = ", ".join(f"{name} {flops / 1e9:,.0f} GFLOP/s" for name, flops in peaks.items())
    notes.append(f"Matmul peak measured in the same run ({size}x{size}, {where}): {measured}.")
    return notes


# --------------------------------------------------------------------------------------- training


def train_step_fn(
    model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], precision: Precision, device: torch.device
) -> Callable[[], None]:
    """One forward, backward and AdamW step in `precision`, waiting for the device at its end."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with precision.autocast(device.type):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return synchronized(step, device)


def ours(config: ModelConfig, batch: Batch) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    """Our model, on the batch's device, and its loss on the batch."""
    model = Generalist(config).to(batch.ids.device).train()
    return model, lambda: model(batch).loss


def gpt2(config: ModelConfig, batch: Batch) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]] | None:
    """GPT2LMHeadModel of the same depth, width, heads and vocabulary on the batch's device, or None without
    transformers."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    gpt_config = GPT2Config(
        vocab_size=config.layout.table_size, n_positions=config.context, n_embd=config.d_model,
        n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None,
    )
    model = GPT2LMHeadModel._from_config(gpt_config, attn_implementation="sdpa").to(batch.ids.device).train()
    labels = batch.ids.masked_fill(~batch.loss_mask, -100)  # the model shifts labels itself
    attention_mask = torch.arange(batch.ids.shape[1], device=batch.ids.device)[None, :] < batch.lengths[:, None]
    return model, lambda: model(input_ids=batch.ids, attention_mask=attention_mask.long(), labels=labels).loss


def batches_for(layout: TokenLayout, names: list[str]) -> dict[str, Batch]:
    """The named batches ("control", "mixed") in a layout; the same content for the same layout."""
    rng = np.random.default_rng(0)
    makers = {"control": control_batch, "mixed": mixed_batch}
    return {name: makers[name](layout, rng) for name in names}


def training_rows(
    runs: list[tuple[str, ModelConfig, list[str]]], steps: int, precisions: list[Precision],
    peaks: dict[str, float], device: torch.device,
) -> tuple[list[str], list[str]]:
    """Training tokens/s rows (ours vs GPT-2, in each precision) of (label, config, batch names) runs, and notes."""
    rows, notes = [], []
    for label, config, batch_names in runs:
        for batch_name, batch in batches_for(config.layout, batch_names).items():
            batch = batch.to(device)
            flops = training_flops(config, batch)
            for precision in precisions:
                model, loss_fn = ours(config, batch)
                seconds = median_seconds(train_step_fn(model, loss_fn, precision, device), steps, warmup=2)
                tokens_per_s = batch.n_tokens / seconds
                mfu = flops / seconds / peaks[precision.name]
                del model, loss_fn  # free its weights and moments before GPT-2's: the gato presets are large
                baseline = gpt2(config, batch)
                if baseline is None:
                    theirs, ratio = "skipped", "-"
                else:
                    gpt_model, gpt_loss = baseline
                    gpt_step = train_step_fn(gpt_model, gpt_loss, precision, device)
                    gpt_seconds = median_seconds(gpt_step, steps, warmup=2)
                    theirs = f"{batch.n_tokens / gpt_seconds:,.0f}"
                    ratio = f"{gpt_seconds / seconds:.2f}x"
                    del gpt_model, gpt_loss, gpt_step
                rows.append(f"| {label} | {batch_name} | {precision.name} | {tokens_per_s:,.0f} | {mfu:.0%} "
                            f"| {theirs} | {ratio} |")
                print(rows[-1], flush=True)
    try:
        import transformers  # noqa: F401
    except ImportError:
        notes.append("GPT-2 baseline skipped: transformers is not installed (`pip install -e \".[bench]\"`).")
    return rows, notes


def patch_rows(repeats: int, device: torch.device) -> list[str]:
    """Forward + backward time of patch-block variants (channels, stride) over 1,000 patches."""
    patches = (torch.rand(1000, 3, 16, 16) * 0.5 - 0.25).to(device)
    rows = []
    for channels, stride in ((64, 4), (32, 4), (32, 2), (64, 2), (128, 2), (16, 1)):
        encoder = PatchEncoder(preset("tiny", patch_channels=channels, patch_stride=stride)).to(device)
        step = synchronized(lambda encoder=encoder: encoder(patches).sum().backward(), device)
        seconds = median_seconds(step, repeats, warmup=2)
        n_parameters = sum(p.numel() for p in encoder.parameters())
        grid = f"{16 // stride}x{16 // stride}"
        rows.append(f"| {channels} | {stride} | {grid} | {n_parameters:,} | {seconds * 1e3:.0f} |")
        print(rows[-1], flush=True)
    return rows


def patch_input_rows(repeats: int, device: torch.device) -> list[str]:
    """Forward + backward time of the default block over 1,000 Pong-like patches (4 gray frames) per
    `patch_input`: what the foreground mask adds."""
    patches = (torch.rand(1000, 4, 16, 16) * 0.5 - 0.25).to(device)
    rows = []
    for patch_input in PATCH_INPUTS:
        encoder = PatchEncoder(preset("tiny", image_channels=4, frame_stack=4, frame_colour="gray",
                                      patch_input=patch_input)).to(device)
        step = synchronized(lambda encoder=encoder: encoder(patches).sum().backward(), device)
        seconds = median_seconds(step, repeats, warmup=2)
        rows.append(f"| {patch_input} | {seconds * 1e3:.0f} |")
        print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------------------- acting


def recompute_seconds(model: Generalist, batch: Batch, n_action_tokens: int) -> float:
    """Seconds to choose one action without a cache: one forward over the whole context per action token
    (timed once per batch and multiplied: each of those forwards costs the same)."""
    device = next(model.parameters()).device
    batch = batch.to(device)

    @torch.no_grad()
    def forward() -> None:
        hidden = model.hidden(batch)
        model.output_logits(hidden[torch.arange(len(hidden), device=device), batch.lengths - 1])

    return n_action_tokens * median_seconds(synchronized(forward, device), repeats=3, warmup=1)


def act_rows(name: str, tasks: list[Task], episodes: list[int], act_steps: int, device: torch.device) -> list[str]:
    """Milliseconds per step of B episodes with the KV cache against recomputing the whole context."""
    torch.manual_seed(0)
    config = preset(name)
    model = Generalist(config).to(device).eval()
    layout = config.layout
    rng = np.random.default_rng(0)
    rows = []
    for task in tasks:
        for n_episodes in episodes:
            prompt = episode(task, 1, layout, rng)
            prompt = episode(task, max(1, 200 // len(prompt)), layout, rng)
            policy = Agent(model, task.spec)
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
                policy.step(step_obs)  # returns actions on the CPU, so it has waited for the device
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
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the models run")
    parser.add_argument("--precisions", nargs="+", choices=list(DTYPES), default=None,
                        help="training precisions to time (default: fp32, plus bf16 where auto precision picks it)")
    parser.add_argument("--quick", action="store_true", help="tiny only, few steps: a smoke run")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.quick:
        args.presets, args.steps, args.act_steps, args.act_presets, args.gato_vocab = ["tiny"], 1, 5, ["tiny"], False
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    cpu_test = cpu_matmul_test()
    precisions, precision_notes = choose_precisions(args.precisions, device, cpu_test)
    # Peaks of the precisions timed only (on a CPU): a bf16 peak where bf16 is emulated would take minutes.
    timed = [p.name for p in precisions] if device.type == "cpu" else list(DTYPES)
    peaks = {name: matmul_peak(DTYPES[name], device) for name in DTYPES if name in timed}
    notes = [*machine_notes(device, cpu_test, peaks), *precision_notes]
    print("\n".join(notes), flush=True)
    for batch_name, batch in batches_for(preset("tiny").layout, ["control", "mixed"]).items():
        targets = int(batch.loss_mask[:, 1:].sum())
        print(f"{batch_name} batch: {batch.n_tokens} tokens, {len(batch.patches)} patches, {targets} targets")
    runs = [(name, preset(name), ["control", "mixed"]) for name in args.presets]
    if args.gato_vocab:
        runs.append(("tiny, V=32,000", preset("tiny", text_vocab_size=GATO_TEXT_VOCAB), ["control"]))
    header = ["| preset | batch | precision | tokens/s | MFU | GPT-2 tokens/s | ours / GPT-2 |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    print("\n".join(header), flush=True)
    rows, training_notes = training_rows(runs, args.steps, precisions, peaks, device)
    print("\n".join(["", *header, *rows, "", *notes, *training_notes]))
    patch_header = ["| channels | stride | grid | parameters | ms forward + backward per 1,000 patches |",
                    "| ---: | ---: | --- | ---: | ---: |"]
    print("\n".join(patch_header), flush=True)
    patches = patch_rows(args.steps, device)
    print("\n".join(["", *patch_header, *patches]))
    input_header = ["| patch_input | ms forward + backward per 1,000 patches of 4 gray frames |", "| --- | ---: |"]
    print("\n".join(input_header), flush=True)
    inputs = patch_input_rows(args.steps, device)
    print("\n".join(["", *input_header, *inputs]))
    act_header = ["| preset | task | action tokens | episodes B | context before timing | KV cache ms/step, mean "
                  "| KV cache ms/step, median | recompute ms/step | speed-up (mean) | steps that slid |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    print("\n" + "\n".join(act_header), flush=True)
    tasks = [CARTPOLE, HALFCHEETAH, ATARI]
    act = [row for name in args.act_presets for row in act_rows(name, tasks, [1, 16], args.act_steps, device)]
    print("\n".join(["", *act_header, *act]))


if __name__ == "__main__":
    main()
