"""Loader throughput: sequences and tokens per second out of the mixture's DataLoader, by worker count.

Run from the repository root: `python -m bench.data` (`--quick` for a smoke run). It records small datasets of
CartPole and Pong (episodes cut at 500 steps) under `--data-dir` if they are missing, then times batches of 8
sequences of 1,024 tokens for control-only, caption-only and the default mixture with 0, 1 and 2 workers.
Tokens counted are real tokens, not padding.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from generalist.datasets.mixture import Mixture, MixtureConfig, build_sources, make_loader
from generalist.datasets.recording import CollectConfig, collect
from generalist.tokenizers import TextTokenizer, TokenLayout

MIXES = {
    "control (cartpole, pong)": {"cartpole": 1.0, "pong": 1.0},
    "captions (scenes)": {"scenes": 1.0},
    "default mixture": {"cartpole": 1.0, "pong": 1.0, "scenes": 1.0, "dialogue": 0.5, "prose": 0.25},
}


def measure(mixture: Mixture, workers: int, steps: int) -> tuple[float, float, float]:
    """Sequences/s, tokens/s and the share of real (non-padding) tokens over `steps` batches after a warm-up."""
    loader = iter(make_loader(mixture, num_workers=workers))
    next(loader)  # workers start and fill their queues
    start = time.perf_counter()
    sequences = tokens = slots = 0
    for _ in range(steps):
        (batch,) = next(loader)
        sequences += batch.ids.shape[0]
        tokens += batch.n_tokens
        slots += batch.ids.numel()
    seconds = time.perf_counter() - start
    return sequences / seconds, tokens / seconds, tokens / slots


def main() -> None:
    """Record the data if needed, then print one markdown row per mix and worker count."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data/bench"), help="where the bench datasets go")
    parser.add_argument("--steps", type=int, default=40, help="batches timed per figure")
    parser.add_argument("--quick", action="store_true", help="few batches, for a smoke run")
    args = parser.parse_args()
    steps = 3 if args.quick else args.steps
    collect(CollectConfig(("cartpole", "pong"), episodes=10, out=args.data_dir, max_episode_steps=500,
                          progress=False))
    tokenizer = TextTokenizer.default()
    layout = TokenLayout(tokenizer.vocab_size)
    print("| data | workers | sequences/s | tokens/s | real tokens |\n| --- | --- | --- | --- | --- |")
    for name, weights in MIXES.items():
        sources = build_sources(list(weights), args.data_dir, layout, tokenizer)
        mixture = Mixture(sources, MixtureConfig(weights, sequence_length=1024, batch_size=8), layout)
        for workers in (0, 1, 2):
            per_s, tokens_per_s, fill = measure(mixture, workers, steps)
            print(f"| {name} | {workers} | {per_s:,.1f} | {tokens_per_s:,.0f} | {fill:.0%} |", flush=True)
    # The packing decision: the same mixture with one sample per sequence, padded to the batch's longest.
    weights = MIXES["default mixture"]
    sources = build_sources(list(weights), args.data_dir, layout, tokenizer)
    unpacked = Mixture(sources, MixtureConfig(weights, 1024, 8, pack=False), layout)
    per_s, tokens_per_s, fill = measure(unpacked, 0, steps)
    print(f"| default mixture, not packed | 0 | {per_s:,.1f} | {tokens_per_s:,.0f} | {fill:.0%} |")


if __name__ == "__main__":
    main()
