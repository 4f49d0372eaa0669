"""Image-caption pairs beyond the procedural scenes: the small real sets that ship offline, and a loader for the
conventional COCO-captions layout for users who bring their own data.

- scikit-image's sample images (mostly CC0 / public domain), captioned by the first line of each loader's
  docstring ("Coffee cup", "Chelsea the cat", ...): a real-image check, far too few to learn from.
- scikit-learn's 1,797 handwritten 8x8 digits, upscaled to 32x32, with templated captions.
- COCO layout: an annotations JSON (`images` with `id` and `file_name`, `annotations` with `image_id` and
  `caption`) and a folder of images.

Every image is returned as uint8 (size, size, 3): centre-cropped to a square and resized, so its sides are a
multiple of 16 as the tokenizer expects.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, UnidentifiedImageError
from skimage.transform import resize

SKIMAGE_SAMPLES = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "checkerboard",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = (
    "a handwritten digit {name}",
    "the number {digit} written by hand",
    "a blurry handwritten {name}",
)


@dataclass(frozen=True)
class CaptionExample:
    """An image (size, size, 3) uint8, its caption, and where it came from."""

    image: np.ndarray
    caption: str
    source: str


def to_rgb_square(image: np.ndarray, size: int, name: str = "image") -> np.ndarray:
    """Any 2-D or 3-D image (gray, RGB, RGBA; bool, uint8 or float in [0, 1]) to uint8 (size, size, 3)."""
    if size % 16:
        raise ValueError(f"{name}: the output size must be a multiple of 16, got {size}")
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape:
        raise ValueError(f"{name}: expected a gray, RGB or RGBA image, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.float64)
    elif array.dtype == np.uint8:
        array = array / 255.0
    elif np.issubdtype(array.dtype, np.floating):
        array = np.clip(array, 0.0, 1.0)
    else:
        raise ValueError(f"{name}: expected bool, uint8 or float pixels, got dtype {array.dtype}")
    array = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[..., :3]
    height, width = array.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = array[top : top + side, left : left + side]
    resized = resize(square, (size, size), anti_aliasing=side > size, preserve_range=True)
    return np.round(resized * 255).astype(np.uint8)


def skimage_samples(size: int = 64) -> list[CaptionExample]:
    """scikit-image's bundled sample images, captioned by their one-line descriptions."""
    examples = []
    for name in SKIMAGE_SAMPLES:
        loader = getattr(skimage.data, name)
        caption = (loader.__doc__ or name).strip().splitlines()[0].strip().rstrip(".")
        examples.append(CaptionExample(to_rgb_square(loader(), size, name), caption, f"skimage.data.{name}"))
    return examples


def digit_captions(size: int = 32) -> list[CaptionExample]:
    """scikit-learn's handwritten digits, upscaled, with a caption template chosen by index."""
    # Imported here: scikit-learn takes 0.8 s to import, and only the digits source needs it.
    from sklearn.datasets import load_digits

    if size % 16:
        raise ValueError(f"digit images: size must be a multiple of 16, got {size}")
    digits = load_digits()
    images = (digits.images / 16.0).clip(0, 1)  # (n, 8, 8), 0..16 ink
    scale = size // 8
    upscaled = np.kron(images, np.ones((1, scale, scale)))  # nearest-neighbour: keeps the strokes sharp
    rgb = np.repeat(np.round((1.0 - upscaled) * 255).astype(np.uint8)[..., None], 3, axis=3)  # dark ink on white
    return [
        CaptionExample(
            rgb[i],
            DIGIT_TEMPLATES[i % len(DIGIT_TEMPLATES)].format(name=DIGIT_NAMES[label], digit=label),
            f"sklearn.digits[{i}]",
        )
        for i, label in enumerate(digits.target)
    ]


MAX_IMAGE_PIXELS = 40_000_000
"""Largest image decoded (a 120 KB PNG can hold 10,000 x 10,000 pixels: 300 MB decoded, minutes to resize)."""
MAX_IMAGE_SIDE = 1024
"""Largest side an image is resized to for the model."""


def read_image(path: str | Path, size: int) -> np.ndarray:
    """One image file to uint8 (size, size, 3); an unreadable file is a `ValueError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    if not 1 <= size <= MAX_IMAGE_SIDE:
        raise ValueError(f"the image size must lie in 1..{MAX_IMAGE_SIDE}, got {size}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own bound follows, in one line
            with Image.open(path) as opened:  # the header only: no pixel is decoded yet
                width, height = opened.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"{path}: {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} an image "
                                     "may have here; shrink it first")
                pixels = np.asarray(opened.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: cannot decode the image ({error})") from error
    return to_rgb_square(pixels, size, str(path))


def load_coco_captions(annotations: str | Path, image_dir: str | Path, size: int = 64) -> list[CaptionExample]:
    """Caption pairs from a COCO-captions annotations JSON and its image folder (every image read and checked)."""
    annotations, image_dir = Path(annotations), Path(image_dir)
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"annotations file {annotations} does not exist") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{annotations}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or not {"images", "annotations"} <= set(data):
        raise ValueError(f"{annotations}: expected a COCO captions file with 'images' and 'annotations' lists")
    try:
        files = {image["id"]: image["file_name"] for image in data["images"]}
        root = image_dir.resolve()
        outside = [name for name in files.values() if not (image_dir / name).resolve().is_relative_to(root)]
        if outside:
            raise ValueError(f"{annotations}: file names outside {image_dir}: {outside[:3]}")
        pairs = [(item["image_id"], str(item["caption"]).strip()) for item in data["annotations"]]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{annotations}: malformed entry, missing {error}") from error
    missing = sorted({image_id for image_id, _ in pairs} - set(files), key=str)
    if missing:
        raise ValueError(f"{annotations}: captions refer to image ids {missing[:5]} that 'images' does not list")
    if not pairs:
        raise ValueError(f"{annotations}: no captions")
    images = {image_id: read_image(image_dir / files[image_id], size) for image_id in {i for i, _ in pairs}}
    return [
        CaptionExample(images[image_id], caption, str(image_dir / files[image_id])) for image_id, caption in pairs
    ]
