"""A teacher-forced probe of a captioner's colour and shape words: read with the true caption before each word, is
the word right, and does the shape still come out right when the colour word before it is another colour?

Run from the repository root: `python -m bench.word_probe CHECKPOINT` (a run directory or a checkpoint of a
model trained on colour-first scene captions). A probe, not a timing. It tells a shape lost to the caption's
language (the colour word decides it: right after the object's own colour word, wrong after "purple", which
training pairs with every shape) from a shape lost in the image's reading (the same after either word).
docs/RESULTS.md, issue 20.

Each of `--scenes` plain held-out 48-pixel scenes (seeds 5,000,000+) is read once with its true caption and once
with every colour word of its caption's input replaced by `--other` ("white" for the objects of that colour);
at each colour and shape word the model's most likely word among that attribute's words is scored, per object,
split by held-out and trained colour-shape pair. Wrong shapes of held-out pairs are counted by the shape said.

`--mask` reads the same checkpoint with its image tokens' attention cut at evaluation (the model was not trained
so): "colour-alone", each patch's colour token sees only itself, so it cannot carry its own patch's shape to the
caption; "patches-alone", every image token sees only itself. If the held-out pairs' shapes rise when the colour
token is cut off, the caption read the shape through it, mixed with the colour. "colour-unread": no token but
itself reads a colour token (the colour words then come from the caption's input alone): if the held-out pairs'
shapes rise, the transformer named them from the colour token and the shape token together.

With two tokens a caption patch, two more readings, the caption as drawn: "colour donor" gives each object's
colour token the pixels of another object of the same colour and size but another shape, from a train-split plain
scene (the first of seeds 0+ that draws one: what `--colour-recombine` trains on); "shape donor" gives its shape
token those of an object of the same shape and size in another colour. If a held-out pair's shape comes out right
from a donor's token and wrong from its own, the transformer reads more from that token's pixels than the
attribute it names.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch

from generalist.batch import collate
from generalist.checkpoint import load_model
from generalist.datasets.mixture import caption_word_pieces
from generalist.datasets.scenes import COLOURS, HELD_OUT_PAIRS, SHAPES, SceneObject, generate_scene
from generalist.tokenizers.images import images_to_patches
from generalist.tokenizers.stream import tokenize_caption

EVAL_SEED = 5_000_000


def word_ids(tokenizer, attribute: str) -> np.ndarray:
    """Each word of a caption attribute (`CAPTION_WORDS` order) as its one piece; a ValueError if one splits."""
    pieces, _ = caption_word_pieces(tokenizer, attribute)
    if any(len(ids) != 1 for ids in pieces.values()):
        raise ValueError(f"each {attribute} word must be one piece of the text model: {pieces}")
    return np.array([ids[0] for ids in pieces.values()])


def image_mask(n_tokens: int, n_image: int, mode: str) -> torch.Tensor:
    """A (t, t) boolean attention mask: causal, with the image tokens (the first `n_image`, two a patch) cut, or
    ('colour-unread') the colour tokens read by no other token."""
    mask = torch.ones(n_tokens, n_tokens, dtype=torch.bool).tril()
    colour_tokens = torch.arange(1, n_image, 2)
    if mode == "colour-unread":
        mask[:, colour_tokens] = False  # no token reads a colour token...
        mask[colour_tokens, colour_tokens] = True  # ...but itself
    elif mode in ("colour-alone", "patches-alone"):
        alone = colour_tokens if mode == "colour-alone" else torch.arange(n_image)
        mask[alone] = False  # they read no token...
        mask[alone, alone] = True  # ...but themselves
    return mask


def donor_patches(n_scenes: int = 400) -> list[tuple[SceneObject, np.ndarray]]:
    """Every object of the first train-split plain 48-pixel scenes with its patch (one object a patch, its cell's)."""
    donors = []
    for seed in range(n_scenes):
        scene = generate_scene(seed, "train", "plain", 48)
        patches, _, _ = images_to_patches(scene.image, channels=3)
        donors += [(obj, patches[obj.cell]) for obj in scene.objects]
    return donors


def donor_patch(donors: list[tuple[SceneObject, np.ndarray]], obj: SceneObject, keep: str) -> np.ndarray:
    """The first donor of `obj`'s size and `keep` attribute (colour or shape) that differs in the other."""
    other = "shape" if keep == "colour" else "colour"
    return next(patch for donor, patch in donors if donor.size == obj.size
                and getattr(donor, keep) == getattr(obj, keep) and getattr(donor, other) != getattr(obj, other))


def main() -> None:
    """Print the colour and shape words' teacher-forced accuracy by pair, with the true and another colour word."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--other", default="purple", choices=list(COLOURS))
    parser.add_argument("--batch", type=int, default=50, help="scenes read in one forward")
    parser.add_argument("--mask", default="causal",
                        choices=("causal", "colour-alone", "patches-alone", "colour-unread"))
    args = parser.parse_args()
    model, tokenizer = load_model(args.checkpoint)
    model.eval()
    if args.mask != "causal" and not model.config.layout.caption_route_tokens:
        raise ValueError("--mask needs a model with two tokens a caption patch (route_tokens)")
    layout = model.config.layout
    colour_ids, shape_ids = word_ids(tokenizer, "colour"), word_ids(tokenizer, "shape")
    stand_in = {c: args.other if c != args.other else "white" for c in COLOURS}
    modes = ("own", "other", "colour donor", "shape donor") if layout.caption_route_tokens else ("own", "other")
    donors = donor_patches() if layout.caption_route_tokens else []
    right = {(mode, pair): np.zeros(3, int) for mode in modes for pair in ("held-out", "trained")}
    said_instead: Counter[str] = Counter()
    for first in range(EVAL_SEED, EVAL_SEED + args.scenes, args.batch):
        scenes = [generate_scene(seed, "heldout", "plain", 48) for seed in range(first, min(first + args.batch,
                                                                                             EVAL_SEED + args.scenes))]
        captions = [np.append(tokenizer.encode(scene.caption), tokenizer.eos_id) for scene in scenes]
        colour_at = [np.flatnonzero(np.isin(ids, colour_ids)) for ids in captions]
        shape_at = [np.flatnonzero(np.isin(ids, shape_ids)) for ids in captions]
        for scene, colours, shapes in zip(scenes, colour_at, shape_at, strict=True):
            if len(colours) != len(scene.objects) or len(shapes) != len(scene.objects):
                raise ValueError(f"caption {scene.caption!r} does not give one colour and one shape word an object")
        for mode in modes:
            sequences = []
            for scene, ids, colours in zip(scenes, captions, colour_at, strict=True):
                read = ids.copy()
                if mode == "other":
                    read[colours] = [colour_ids[list(COLOURS).index(stand_in[o.colour])] for o in scene.objects]
                sequence = tokenize_caption(scene.image, read, layout)
                if mode.endswith("donor"):  # each patch's first token is its shape's, its second its colour's
                    keep = mode.split()[0]
                    for obj in scene.objects:
                        sequence.patches[2 * obj.cell + (keep == "colour")] = donor_patch(donors, obj, keep)
                sequences.append(sequence)
            n_image = len(sequences[0]) - len(captions[0])  # every 48-pixel scene has as many patch tokens
            batch = collate(sequences, layout)
            mask = image_mask(batch.ids.shape[1], n_image, args.mask)
            with torch.no_grad():
                logits = model.logits(batch, attention_mask=mask).float()  # (b, t, v), right-padded rows
            for row, (scene, colours, shapes) in enumerate(zip(scenes, colour_at, shape_at, strict=True)):
                colour_said = logits[row, n_image + colours - 1][:, colour_ids].argmax(1).numpy()
                shape_said = logits[row, n_image + shapes - 1][:, shape_ids].argmax(1).numpy()
                for k, obj in enumerate(scene.objects):
                    pair = "held-out" if (obj.colour, obj.shape) in HELD_OUT_PAIRS else "trained"
                    shape_right = SHAPES[shape_said[k]] == obj.shape
                    right[mode, pair] += (list(COLOURS)[colour_said[k]] == obj.colour, shape_right, 1)
                    if mode == "own" and pair == "held-out" and not shape_right:
                        said_instead[f"{obj.colour} {obj.shape} -> {SHAPES[shape_said[k]]}"] += 1
    print("| reading | pair | objects | colour right | shape right |\n"
          "| --- | --- | ---: | ---: | ---: |")
    for (mode, pair), (colour, shape, n) in right.items():
        words = {"own": "own", "other": f"{args.other} (white for {args.other})",
                 "colour donor": "own; colour tokens from another shape's patch",
                 "shape donor": "own; shape tokens from another colour's patch"}[mode]
        print(f"| {words} | {pair} | {n} | {colour / n:.1%} | {shape / n:.1%} |")
    print("held-out pairs' wrong shapes, own colour word:", dict(said_instead.most_common()))


if __name__ == "__main__":
    main()
