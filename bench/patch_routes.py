"""The caption patches' embedding with route dropout: forward + backward time of `TokenEmbedding.patch_content`.

Run from the repository root: `python -m bench.patch_routes` (`--repeats`, `--images`). Prints a markdown table
for docs/BENCHMARKS.md.

The `language` preset's patches (`config.LANGUAGE_PATCHES`: "mask+colour" read with the mask from the border's
nearest colours, centred per image) on 48-pixel textured train scenes (9 patches each), as one batch of
`--images` caption rows, in three cases: no row dropped; a quarter of the rows read by the colour route alone
(`shape_dropout=0.25`); the same rows with `route_swap` (skipped where the code has no swap flag by that name,
so the script also times a commit from before it). fp32, the `tiny` preset's width, median of `--repeats` after
two warm-ups.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from bench.timing import median_seconds
from generalist.batch import Batch, collate
from generalist.datasets.scenes import generate_scene
from generalist.model import Generalist, preset
from generalist.tokenizers import TokenLayout, tokenize_caption


def caption_batch(n_images: int, layout: TokenLayout) -> Batch:
    """`n_images` textured 48-pixel train scenes with their captions as ids 1..12 (the text is not read here)."""
    images = [generate_scene(seed, "train", "textured", 48).image for seed in range(n_images)]
    return collate([tokenize_caption(image, np.arange(1, 13), layout) for image in images], layout)


def cases(batch: Batch) -> dict[str, Batch]:
    """The batch with no route dropped, with a quarter of its rows by the colour route, and those rows swapped."""
    rows = torch.arange(batch.ids.shape[0]) % 4 == 0
    colour_only = rows[batch.patch_batch_index]
    found = {"no row dropped": batch,
             "a quarter of the rows by the colour route": dataclasses.replace(batch, patch_colour_only=colour_only)}
    if "patch_route_swap" in {f.name for f in dataclasses.fields(batch)}:
        found["the same rows, routes swapped"] = dataclasses.replace(
            batch, patch_colour_only=colour_only, patch_route_swap=colour_only)
    return found


def main() -> None:
    """Time each case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per case")
    parser.add_argument("--images", type=int, default=128, help="caption rows in the batch")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = preset("tiny", patch_input="mask+colour", mask_background="nearest", centre_patches=True)
    model = Generalist(config).train()
    batch = caption_batch(args.images, config.layout)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(batch.patches)} patches")
    print("| case | ms forward + backward |\n| --- | ---: |")
    for name, case in cases(batch).items():
        def step(case: Batch = case) -> None:
            model.embed.patch_content(case).sum().backward()

        print(f"| {name} | {median_seconds(step, args.repeats, warmup=2) * 1e3:.0f} |", flush=True)


if __name__ == "__main__":
    main()
