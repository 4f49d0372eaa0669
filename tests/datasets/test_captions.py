"""Real caption sets and the COCO-layout loader, with the bad data it must reject."""

import json

import numpy as np
import pytest
from PIL import Image

from generalist.datasets.captions import digit_captions, load_coco_captions, read_image, to_rgb_square


def _write_fixture(tmp_path, captions=None):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((40, 60, 3), (200, 10, 10), np.uint8)).save(images / "red.png")
    Image.fromarray(np.full((30, 30), 128, np.uint8)).save(images / "grey.jpg")
    data = {
        "images": [{"id": 1, "file_name": "red.png"}, {"id": 2, "file_name": "grey.jpg"}],
        "annotations": captions
        or [
            {"image_id": 1, "caption": "a red rectangle"},
            {"image_id": 1, "caption": "something red"},
            {"image_id": 2, "caption": "a grey square "},
        ],
    }
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))
    return path, images


def test_coco_layout_loads_every_caption_with_its_image(tmp_path):
    path, images = _write_fixture(tmp_path)
    examples = load_coco_captions(path, images, size=32)
    assert [e.caption for e in examples] == ["a red rectangle", "something red", "a grey square"]
    assert all(e.image.shape == (32, 32, 3) and e.image.dtype == np.uint8 for e in examples)
    np.testing.assert_array_equal(examples[0].image[16, 16], [200, 10, 10])
    assert abs(int(examples[2].image[5, 5, 0]) - 128) <= 1
    assert examples[0].source.endswith("red.png")


def test_caption_with_a_missing_image_is_an_error(tmp_path):
    path, images = _write_fixture(tmp_path, [{"image_id": 9, "caption": "ghost"}])
    with pytest.raises(ValueError, match=r"image ids \[9\]"):
        load_coco_captions(path, images)
    path, images = _write_fixture(tmp_path / "b" if (tmp_path / "b").mkdir() is None else None)
    (images / "red.png").unlink()
    with pytest.raises(FileNotFoundError, match="red.png"):
        load_coco_captions(path, images)


def test_image_that_does_not_decode_is_an_error(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png: cannot decode"):
        read_image(broken, 32)


def test_bad_annotation_files(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_coco_captions(bad_json, tmp_path)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"something": []}))
    with pytest.raises(ValueError, match="'images' and 'annotations'"):
        load_coco_captions(foreign, tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_coco_captions(tmp_path / "missing.json", tmp_path)


def test_to_rgb_square_handles_gray_rgba_bool_and_float():
    assert to_rgb_square(np.zeros((20, 50), bool), 16).shape == (16, 16, 3)
    rgba = to_rgb_square(np.full((32, 32, 4), 255, np.uint8), 16)
    assert rgba.shape == (16, 16, 3) and (rgba == 255).all()
    assert (to_rgb_square(np.full((8, 8, 3), 0.5), 16) == 128).all()
    with pytest.raises(ValueError, match="multiple of 16"):
        to_rgb_square(np.zeros((8, 8, 3)), 20)
    with pytest.raises(ValueError, match="RGBA"):
        to_rgb_square(np.zeros((8, 8, 2)), 16)


def test_digits_have_templated_captions_naming_the_label():
    examples = digit_captions()
    assert len(examples) == 1797
    assert examples[0].image.shape == (32, 32, 3)
    assert examples[0].caption == "a handwritten digit zero"
    assert examples[1].caption == "the number 1 written by hand"
