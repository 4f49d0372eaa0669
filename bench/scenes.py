"""Caption scenes' cost in the loader: 48-pixel textured scenes a second, drawn as they are or with their colours
recombined among their objects (moved between patches on uniform backgrounds, or painted in place).

Run from the repository root: `python -m bench.scenes` (`--quick` for a smoke run). It times
`SceneCaptionSource.sample` (the scene drawn, captioned and tokenized with two tokens a patch, as the `language`
preset's loader does) in this process, one thread, and prints one markdown row per setting: scenes a second by the
wall clock and by this process's CPU time (the CPU figure moves less when something else shares the cores).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from generalist.datasets.mixture import SceneCaptionSource, Shard
from generalist.datasets.scenes import GRID
from generalist.tokenizers import PATCH_SIZE, TextTokenizer, TokenLayout

SETTINGS = {
    "drawn": {},
    "recombined on uniform backgrounds (moved tokens)": {"colour_recombine": 1.0, "colour_recombine_uniform": True},
    "recombined on every background (painted)": {"colour_recombine": 1.0, "colour_recombine_painted": True},
}


def measure(source: SceneCaptionSource, scenes: int) -> tuple[float, float]:
    """Scenes a second by the wall clock and by CPU time over `scenes` samples, after a few to warm up."""
    rng = np.random.default_rng(0)
    for _ in range(5):  # imports (skimage's resize) and first-call costs
        source.sample(rng, Shard(), 10_000)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(scenes):
        source.sample(rng, Shard(), 10_000)
    return scenes / (time.perf_counter() - wall), scenes / (time.process_time() - cpu)


def main() -> None:
    """Print one markdown row per recombination setting."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=400, help="scenes timed per setting")
    parser.add_argument("--style", default="textured", help="the scenes' style (`scenes.STYLES`, not gray)")
    parser.add_argument("--quick", action="store_true", help="few scenes, for a smoke run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scenes = 10 if args.quick else args.scenes
    tokenizer = TextTokenizer.default()
    layout = TokenLayout(tokenizer.vocab_size, caption_route_tokens=True)
    print(f"| {args.style} scenes, {GRID * PATCH_SIZE} pixels | scenes/s (wall) | scenes/s (CPU) |")
    print("| --- | --- | --- |")
    for name, setting in SETTINGS.items():
        source = SceneCaptionSource(tokenizer, layout, style=args.style, size=GRID * PATCH_SIZE, **setting)
        per_s, per_cpu_s = measure(source, scenes)
        print(f"| {name} | {per_s:,.1f} | {per_cpu_s:,.1f} |", flush=True)


if __name__ == "__main__":
    main()
