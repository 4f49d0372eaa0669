"""Tokenizer throughput: continuous values/s, image frames/s, whole-episode timesteps/s.

Run from the repository root: `python -m bench.tokenize` (`--quick` for a smoke run). As a module, not as a
script: a script named tokenize.py would shadow the standard library module of that name. Prints a markdown
table for docs/BENCHMARKS.md; each figure is the median of `--repeats` timed runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from bench.timing import median_seconds
from generalist.tokenizers import (
    ActionSpec,
    TokenLayout,
    continuous_to_bins,
    images_to_patches,
    patch_intervals,
    tokenize_episode,
)

LAYOUT = TokenLayout(3072)


def frame_tokens(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame's patches and the bucket ranges of every patch, as a rollout tokenizes one observation."""
    patches, n_rows, n_cols = images_to_patches(frame)
    rows, cols = patch_intervals(n_rows, n_cols)
    return patches, rows, cols


def main() -> None:
    """Run every measurement and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per figure")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n_values = 100_000 if args.quick else 10_000_000
    n_frames = 10 if args.quick else 200
    n_steps = 100 if args.quick else 1000

    rows: list[tuple[str, str, str]] = []
    values = rng.normal(scale=5.0, size=n_values).astype(np.float32)
    seconds = median_seconds(lambda: continuous_to_bins(values), args.repeats)
    rows.append(
        ("continuous values, mu-law + bins (float32)", f"{n_values:,} values", f"{n_values / seconds:,.0f} values/s")
    )
    seconds = median_seconds(lambda: LAYOUT.continuous_ids(continuous_to_bins(values)), args.repeats)
    rows.append(
        (
            "continuous values to ids (bins + layout check)",
            f"{n_values:,} values",
            f"{n_values / seconds:,.0f} values/s",
        )
    )

    for height, width in ((80, 80), (210, 160)):
        frames = rng.integers(0, 256, (n_frames, height, width, 3), dtype=np.uint8)

        def one_at_a_time(frames: np.ndarray = frames) -> None:
            for frame in frames:
                frame_tokens(frame)

        seconds = median_seconds(one_at_a_time, args.repeats)
        rows.append(
            (
                f"{height}x{width}x3 frames one at a time (patches + buckets)",
                f"{n_frames} frames",
                f"{n_frames / seconds:,.0f} frames/s",
            )
        )
        seconds = median_seconds(lambda frames=frames: images_to_patches(frames), args.repeats)
        rows.append(
            (f"{height}x{width}x3 frames as one batch", f"{n_frames} frames", f"{n_frames / seconds:,.0f} frames/s")
        )

    cartpole = {"continuous": rng.normal(size=(n_steps, 4)).astype(np.float32)}
    cartpole_actions = rng.integers(0, 2, n_steps)
    spec = ActionSpec("discrete", n=2)
    seconds = median_seconds(lambda: tokenize_episode(cartpole, cartpole_actions, spec, LAYOUT), args.repeats)
    rows.append(
        (
            "CartPole episode (4 values, separator, 1 action)",
            f"{n_steps} steps",
            f"{n_steps / seconds:,.0f} timesteps/s",
        )
    )

    for height, width in ((80, 80), (208, 160)):
        atari = {"image": rng.integers(0, 256, (n_steps, height, width, 3), dtype=np.uint8)}
        atari_actions = rng.integers(0, 6, n_steps)
        spec = ActionSpec("discrete", n=6)
        seconds = median_seconds(
            lambda atari=atari, actions=atari_actions, spec=spec: tokenize_episode(atari, actions, spec, LAYOUT),
            args.repeats,
        )
        rows.append(
            (f"Atari episode, {height}x{width}x3 frames", f"{n_steps} steps", f"{n_steps / seconds:,.0f} timesteps/s")
        )

    print(f"numpy {np.__version__}, {os.cpu_count()} cores\n")
    print("| measurement | size | throughput |\n| --- | --- | --- |")
    for row in rows:
        print(f"| {' | '.join(row)} |")


if __name__ == "__main__":
    main()
