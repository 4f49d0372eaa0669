"""Linear probes of a checkpoint's caption patch routes: does the shape route tell the shapes apart, the colour
route the colours, on held-out colour-shape pairs as on trained ones?

Run from the repository root: `python -m bench.route_probe CHECKPOINT` (a run directory or a checkpoint; the
model must read captions as `patch_input="mask+colour"`). A probe, not a timing: it says whether a caption
failure lies in the patch block (the route does not separate the classes) or after it (the route does, the
transformer does not read it). docs/RESULTS.md, "The swap on seed 1".

Each object of a 48-pixel scene fills one patch (its cell). A logistic regression on the standardized route output
of the objects of `--fit-scenes` textured train-split scenes (seeds 0+), Adam at 0.05 for 300 steps, L2 1e-3,
torch seed 0; scored on the objects of `--scenes` held-out scenes per style (seeds 5,000,000+), split by pair.
Beside them, the mean norm of each route's output on those objects: a route far smaller than the other is in the
token but may be too faint for the transformer to read (`ModelConfig.route_norm`). `--fresh` probes the block
freshly initialized instead: what a route held before training, against what training left in it. `--cross`
probes each route for the other's attribute. A route that holds only its own attribute can guess the other only
from the pairs training drew: about 1/5 of the trained pairs' colours from the shape (five colours a shape), 1/4
to 1/3 of their shapes from the colour, and none of the held-out pairs' (the probe never saw them); above that,
the token carries the other's attribute into the transformer.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch

from generalist.checkpoint import load_model
from generalist.datasets.scenes import COLOURS, HELD_OUT_PAIRS, SHAPES, generate_scene
from generalist.model import PatchEncoder
from generalist.tokenizers.images import images_to_patches

EVAL_SEED = 5_000_000
STYLES = ("plain", "varied", "unseen")


def route_features(
    block: PatchEncoder, seeds: range, split: str, style: str, centred: bool = False,
    colour_gate: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per object of the scenes: both routes' outputs (n, 2, d), less each route's mean over its scene's patches
    with `centred` (what the transformer reads with `centre_patches`; the colour route's mean scaled by
    `colour_gate` (d,) where the model learned one), its colour and shape indices, held-out pair."""
    patches, objects = [], []  # every scene's patches, then its objects' patch indices among them
    colours, shapes, held = [], [], []
    n_patches = 0
    for seed in seeds:
        scene = generate_scene(seed, split, style, 48)
        scene_patches, _, _ = images_to_patches(scene.image, channels=3)
        objects += [n_patches + o.cell for o in scene.objects]
        patches.append(scene_patches)
        n_patches += len(scene_patches)
        colours += [list(COLOURS).index(o.colour) for o in scene.objects]
        shapes += [SHAPES.index(o.shape) for o in scene.objects]
        held += [(o.colour, o.shape) in HELD_OUT_PAIRS for o in scene.objects]
    with torch.no_grad():  # one block call (GroupNorm normalizes each patch alone): the same outputs but rounding
        output, _ = block.routes(torch.from_numpy(np.concatenate(patches)))
    if centred:  # every scene has the same number of patches
        scenes = output.view(len(patches), -1, *output.shape[1:])  # (scenes, patches, 2, d)
        means = scenes.mean(dim=1, keepdim=True)
        if colour_gate is not None:
            means = torch.stack([means[:, :, 0], means[:, :, 1] * colour_gate], dim=2)
        output = (scenes - means).flatten(0, 1)
    return output[objects].float().numpy(), np.array(colours), np.array(shapes), np.array(held)


def fit_probe(x: np.ndarray, y: np.ndarray, classes: int) -> Callable[[np.ndarray], np.ndarray]:
    """A logistic regression of `y` on standardized `x`; the function giving its predicted classes."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    inputs = torch.tensor((x - mean) / std, dtype=torch.float32)
    probe = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(inputs), torch.tensor(y)) + 1e-3 * probe.weight.square().sum()
        loss.backward()
        optimizer.step()
    return lambda z: probe(torch.tensor((z - mean) / std, dtype=torch.float32)).argmax(1).numpy()


def main() -> None:
    """Fit both probes and print, per style, each route's accuracy on held-out and on trained pairs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--fit-scenes", type=int, default=400)
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--cross", action="store_true",
                        help="probe each route for the other's attribute instead (shape route -> colour, colour route "
                             "-> shape): what one token leaks of the other's")
    parser.add_argument("--fresh", action="store_true",
                        help="probe the checkpoint's block freshly initialized (torch seed 0): what it held untrained")
    parser.add_argument("--centred", action="store_true",
                        help="probe each route less its mean over the scene's patches, as `centre_patches` feeds it "
                             "(the colour route's scaled by the model's `colour_centre_gate` where it has one)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, _ = load_model(args.checkpoint)
    block = model.embed.caption_patches or model.embed.patches
    if args.fresh:
        for module in block.modules():
            if module is not block and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    gate = model.embed.colour_centre_gate
    gate = None if gate is None else gate.detach()
    x, colours, shapes, _ = route_features(block, range(args.fit_scenes), "train", "textured", args.centred, gate)
    # What the shape route, then the colour route, is probed for: its own attribute, or with --cross the other's.
    names = ("colour", "shape") if args.cross else ("shape", "colour")
    classes = {"shape": len(SHAPES), "colour": len(COLOURS)}
    labels = {"shape": shapes, "colour": colours}
    probes = [fit_probe(x[:, route], labels[name], classes[name]) for route, name in enumerate(names)]
    print(f"| held-out scenes | shape route -> {names[0]}: held-out / trained pairs | colour route -> {names[1]}: "
          "held-out / trained pairs | mean norm of the objects' shape / colour route |\n| --- | ---: | ---: | ---: |")
    for style in STYLES:
        x, colours, shapes, held = route_features(block, range(EVAL_SEED, EVAL_SEED + args.scenes), "heldout", style,
                                               args.centred, gate)
        labels = {"shape": shapes, "colour": colours}
        right = [probes[route](x[:, route]) == labels[name] for route, name in enumerate(names)]
        cells = " | ".join(f"{r[held].mean():.1%} / {r[~held].mean():.1%}" for r in right)
        norms = np.linalg.norm(x, axis=2).mean(0)
        print(f"| {style} | {cells} | {norms[0]:.2f} / {norms[1]:.2f} |")


if __name__ == "__main__":
    main()
