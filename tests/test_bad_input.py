"""Bad input gives one clear error before anything costly happens (issue 16): damaged configs, huge images, data
under the wrong name, a damaged newest checkpoint, results that are not strict JSON."""

import json
import math
import shutil
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from generalist.checkpoint import latest_checkpoint
from generalist.datasets.captions import MAX_IMAGE_PIXELS, read_image
from generalist.datasets.mixture import build_sources
from generalist.evaluate import TaskResult, results_json
from generalist.model import ModelConfig
from generalist.tokenizers import TextTokenizer

FIELDS = [name for name in ModelConfig().to_dict() if name != "tie_embeddings"]
ANYTHING = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                     st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=10_000, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*FIELDS, "tie_embeddings"]), ANYTHING, max_size=4))
def test_a_config_json_of_any_values_is_a_model_config_or_one_value_error(values):
    try:
        config = ModelConfig.from_dict(values)
    except ValueError as error:
        assert str(error) and "\n" not in str(error)
        return
    assert config.parameter_estimate() <= 20_000_000_000  # accepted: small enough to build


def test_a_huge_model_is_refused_before_any_tensor_is_made():
    with pytest.raises(ValueError, match="parameters, more than"):
        ModelConfig.from_dict({"n_layer": 1_000_000})


@pytest.mark.parametrize(("values", "message"), [({"n_layer": 4.0}, "expected int"), ({"n_head": 0}, "at least 1"),
                                                 ({"tie_embeddings": "no"}, "expected bool"),
                                                 ({"rope_base": math.nan}, "finite")])
def test_a_config_value_of_the_wrong_type_or_range_is_named(values, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(values)


def test_an_image_too_large_is_refused_before_it_is_decoded(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (8000, 8000)).save(path)  # 64 M pixels in a small file
    assert 8000 * 8000 > MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match="more than the 40,000,000"):
        read_image(path, 64)
    with pytest.raises(ValueError, match="size must lie in 1..1024"):
        read_image(path, 0)


def test_data_under_another_tasks_name_is_refused(cartpole_data, tmp_path, tiny_model):
    shutil.copytree(cartpole_data / "cartpole", tmp_path / "acrobot")
    with pytest.raises(ValueError, match="holds episodes of 'cartpole' .* not of 'acrobot'"):
        build_sources(["acrobot"], tmp_path, tiny_model.config.layout, TextTokenizer.default())


def test_results_json_is_strict():
    text = results_json([TaskResult("cartpole", error="boom"), TaskResult("acrobot", returns=[1.0], lengths=[1])])
    rows = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))
    assert rows[0]["normalized"] is None and rows[0]["mean_return"] is None and rows[1]["mean_return"] == 1.0


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_gives_way_to_the_previous_one(tmp_path):
    from dataclasses import replace

    from generalist.config import TrainConfig
    from generalist.train import train

    config = TrainConfig(run_dir=tmp_path, weights={"dialogue": 1.0}, steps=2, checkpoint_every=1, batch_size=1,
                         sequence_length=64, warmup_steps=1, num_workers=0, progress=False, precision="fp32")
    newest = train(config)
    (newest / "model.safetensors").write_bytes(b"truncated")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert latest_checkpoint(tmp_path).name == "step-0000001"
    assert "damaged" in str(caught[0].message)
    assert train(replace(config, steps=3), resume=True).name == "step-0000003"  # resumed from step 1


def test_a_config_file_value_of_the_wrong_type_is_refused(tmp_path):
    from generalist.config import TrainConfig
    from generalist.flags import load_json

    path = tmp_path / "train.json"
    path.write_text(json.dumps({"steps": "12"}))
    with pytest.raises(ValueError, match="steps: expected int, got '12'"):
        load_json(TrainConfig, path)
    path.write_text(json.dumps({"eval_tasks": "cartpole", "weights": {"cartpole": 1}}))
    with pytest.raises(ValueError, match="eval_tasks: expected"):
        load_json(TrainConfig, path)


def test_a_resumed_run_logs_no_step_twice(tmp_path):
    from generalist.metrics import METRICS_FILE, MetricLog

    (tmp_path / METRICS_FILE).write_text("step,metric,value\n1,train/loss,3\n2,train/loss,2\n3,train/loss,1\n")
    log = MetricLog(tmp_path, after_step=2)  # the checkpoint was step 2; step 3 is trained again
    log.log(3, {"train/loss": 1.5})
    log.close()
    rows = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert rows == ["step,metric,value", "1,train/loss,3", "2,train/loss,2", "3,train/loss,1.5"]
