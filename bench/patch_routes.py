"""The caption patches' embedding by route: forward + backward time of `TokenEmbedding.patch_content`.

Run from the repository root: `python -m bench.patch_routes` (`--repeats`, `--images`). Prints a markdown table
for docs/BENCHMARKS.md.

The caption patch settings of the `language` preset (`config.LANGUAGE_PATCHES`: "mask+colour" read with the mask
from the border's nearest colours, centred per image) on 48-pixel textured train scenes (9 patches each), as one
batch of `--images` caption rows. One token a patch, in three cases: no row dropped; a quarter of the rows read by
the colour route alone (`shape_dropout=0.25`); the same rows with `route_swap`. Two tokens a patch
(`route_tokens`, the preset's reading since commit 405fc67), in two: as they are; a quarter of the rows' colour
tokens carrying other objects' colours (`colour_swap=0.25`). A case the checked-out code lacks (its batch has no
such flag, or its model config no `route_tokens`) is skipped, so the script also times older commits. fp32, the
`tiny` preset's width, median of `--repeats` after two warm-ups.
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
    """One token a patch: the batch with no route dropped, with a quarter of its rows by the colour route, and
    those rows swapped."""
    colour_only = quarter_of_rows(batch)
    found = {"no row dropped": batch,
             "a quarter of the rows by the colour route": dataclasses.replace(batch, patch_colour_only=colour_only)}
    if "patch_route_swap" in _field_names(batch):
        found["the same rows, routes swapped"] = dataclasses.replace(
            batch, patch_colour_only=colour_only, patch_route_swap=colour_only)
    return found


def route_token_cases(batch: Batch) -> dict[str, Batch]:
    """Two tokens a patch: the batch as it is, and with a quarter of its rows' colour tokens swapped."""
    found = {"two tokens a patch": batch}
    if "patch_colour_swap" in _field_names(batch):
        found["two tokens, a quarter of the rows' colour tokens swapped"] = dataclasses.replace(
            batch, patch_colour_swap=quarter_of_rows(batch))
    return found


def quarter_of_rows(batch: Batch) -> torch.Tensor:
    """(N,) bool: the patches of every fourth row."""
    return (torch.arange(batch.ids.shape[0]) % 4 == 0)[batch.patch_batch_index]


def _field_names(instance: object) -> set[str]:
    return {f.name for f in dataclasses.fields(instance)}


def main() -> None:
    """Time each case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per case")
    parser.add_argument("--images", type=int, default=128, help="caption rows in the batch")
    args = parser.parse_args()
    torch.manual_seed(0)
    settings = {"patch_input": "mask+colour", "mask_background": "nearest", "centre_patches": True}
    config = preset("tiny", **settings)
    readings = [(Generalist(config).train(), caption_batch(args.images, config.layout), cases)]
    if "route_tokens" in _field_names(config):
        two = preset("tiny", **settings, route_tokens=True)
        readings.append((Generalist(two).train(), caption_batch(args.images, two.layout), route_token_cases))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(readings[0][1].patches)} patches")
    print("| case | ms forward + backward |\n| --- | ---: |")
    for model, batch, cases_of in readings:
        for name, case in cases_of(batch).items():
            def step(case: Batch = case, model: Generalist = model) -> None:
                model.embed.patch_content(case).sum().backward()

            print(f"| {name} | {median_seconds(step, args.repeats, warmup=2) * 1e3:.0f} |", flush=True)


if __name__ == "__main__":
    main()
