"""Motion in an image timestep: k consecutive frames stacked as the channels of each patch, the same way when
training reads a recorded window and when the agent acts."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from generalist.agent import Agent
from generalist.batch import collate
from generalist.config import CollectConfig, full
from generalist.datasets.mixture import ControlSource
from generalist.datasets.recording import collect
from generalist.datasets.scenes import generate_scene
from generalist.datasets.storage import EpisodeDataset
from generalist.diagnose import patch_spread
from generalist.envs import get_task, make
from generalist.model import Generalist, tiny
from generalist.tokenizers import TextTokenizer, TokenLayout, stack_frames
from generalist.tokenizers.images import max_resize
from generalist.tokenizers.stream import tokenize_caption
from generalist.train import build_model, check_same_frames

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py says why


def _frames(n: int, size: int = 4) -> np.ndarray:
    """n RGB frames whose every pixel holds the frame's number (red), 100 + it (green), 200 (blue)."""
    frames = np.zeros((n, size, size, 3), np.uint8)
    frames[..., 0] = np.arange(n)[:, None, None]
    frames[..., 1] = 100 + np.arange(n)[:, None, None]
    frames[..., 2] = 200
    return frames


def test_a_timestep_stacks_its_frames_oldest_first_repeating_the_first_before_the_start():
    stacked = stack_frames(_frames(5), frames=3)
    assert stacked.shape == (5, 4, 4, 9)
    reds = stacked[:, 0, 0, 0::3]  # each stacked frame's red channel: its frame number
    assert reds.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]


def test_history_frames_feed_the_stacks_of_a_window_from_the_middle():
    whole = stack_frames(_frames(6), frames=3)
    window = stack_frames(_frames(6)[2:], frames=3, history=2)  # steps 4, 5 read from step 2
    np.testing.assert_array_equal(window, whole[4:])


def test_gray_frames_are_one_luma_channel_each():
    stacked = stack_frames(_frames(2), frames=2, colour="gray")
    assert stacked.shape == (2, 4, 4, 2)
    assert stacked[1, 0, 0].tolist() == [round(0.587 * 100 + 0.114 * 200), round(0.299 + 0.587 * 101 + 0.114 * 200)]


@pytest.mark.parametrize(("frames", "colour", "error"), [
    (0, "rgb", "at least 1"), (2, "blue", "frame colour"), (2, "rgb", "expected RGB frames"),
])
def test_bad_stacking_is_an_error(frames, colour, error):
    images = _frames(3)[..., :2] if error == "expected RGB frames" else _frames(3)
    with pytest.raises(ValueError, match=error):
        stack_frames(images, frames, colour)


def test_shrinking_a_frame_keeps_a_one_pixel_ball_at_full_brightness():
    frames = np.full((2, 80, 80, 3), 40, np.uint8)
    frames[1, 37, 52] = 236  # the ball, one pixel, in the second frame only
    stacked = stack_frames(frames, frames=2, colour="gray", size=48)
    assert stacked.shape == (2, 48, 48, 2)
    newest = stacked[1, ..., 1]
    assert newest.max() == 236 and np.count_nonzero(newest == 236) == 1
    assert np.argwhere(newest == 236).tolist() == [[37 * 48 // 80, 52 * 48 // 80]]
    assert stacked[1, ..., 0].max() == 40  # the older frame has no ball


def test_shrinking_reads_every_pixel_once():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 80, 64, 1), dtype=np.uint8)
    shrunk = max_resize(images, 48)
    assert shrunk.shape == (3, 48, 48, 1)
    assert shrunk.max(axis=(1, 2)).tolist() == images.max(axis=(1, 2)).tolist()
    np.testing.assert_array_equal(max_resize(images[:, :64], 64), images[:, :64])  # the size itself: unchanged
    np.testing.assert_array_equal(max_resize(images[:, :64], 32), images[:, :64].reshape(3, 32, 2, 32, 2, 1).max(
        axis=(2, 4)))


@pytest.mark.parametrize("size", [-1, 81, 100])
def test_a_frame_size_outside_the_recorded_frame_is_an_error(size):
    with pytest.raises(ValueError, match="size"):
        if size < 0:
            TokenLayout(3072, image_channels=4, frame_stack=4, frame_colour="gray", frame_size=size)
        else:
            stack_frames(_frames(2, size=80), frames=2, size=size)


def test_a_layout_needs_channels_for_its_frames():
    assert TokenLayout(3072, image_channels=4, frame_stack=4, frame_colour="gray").stacks_frames
    with pytest.raises(ValueError, match="at least 12"):
        TokenLayout(3072, image_channels=4, frame_stack=4, frame_colour="rgb")


@pytest.fixture(scope="module")
def pong(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    collect(CollectConfig(tasks=("pong",), episodes=1, out=out, max_episode_steps=12, progress=False))
    return EpisodeDataset(out / "pong")


@pytest.mark.parametrize(("frame_size", "patches"), [(0, 25), (48, 9)])
def test_a_recorded_episode_and_its_replay_through_the_env_give_the_agent_the_same_patches(pong, frame_size, patches):
    config = tiny(n_layer=1, d_model=32, n_head=2, d_ff=64, context=1024, image_channels=4, frame_stack=4,
                  frame_colour="gray", frame_size=frame_size, text_vocab_size=TextTokenizer.default().vocab_size)
    model = Generalist(config).eval()
    recorded = ControlSource("pong", pong, config.layout).tokenize_window(0, 3, 12)  # stacks read steps 0..2
    info = pong.episodes[0]
    actions = pong.window(0)["actions"]
    agent = Agent(model, get_task("pong").action_spec())
    agent.reset([None])
    env = make("pong", max_episode_steps=12)
    try:
        observation, _ = env.reset(seed=info.seed)
        for step in range(12):
            agent.act([observation])  # the agent reads the frame; the env replays the recorded action
            observation, *_ = env.step(int(actions[step]))
    finally:
        env.close()
    acted = agent.context(0)
    per_step = len(recorded) // 9
    replayed = acted.slice(3 * per_step, 12 * per_step)  # the same steps 3..11 of the agent's context
    assert recorded.patches.shape[1] == 4 and len(recorded.patches) == 9 * patches
    np.testing.assert_array_equal(replayed.patches, recorded.patches)


def test_an_agent_that_stacks_frames_refuses_stacked_observations(pong):
    config = tiny(n_layer=1, d_model=32, n_head=2, d_ff=64, context=256, image_channels=4, frame_stack=4,
                  frame_colour="gray", text_vocab_size=TextTokenizer.default().vocab_size)
    agent = Agent(Generalist(config).eval(), get_task("pong").action_spec())
    agent.reset([None])
    with pytest.raises(ValueError, match="stacks 4 gray frames itself from one RGB frame"):
        agent.act([{"image": np.zeros((80, 80, 4), np.uint8)}])


def test_shuffling_a_windows_images_in_time_moves_whole_stacked_images_and_nothing_else(pong):
    layout = tiny(image_channels=4, frame_stack=4, frame_colour="gray").layout
    source = ControlSource("pong", pong, layout)
    plain = source.tokenize_window(0, 2, 12)
    shuffled = source.tokenize_window(0, 2, 12, shuffle_images=np.random.default_rng(3))
    np.testing.assert_array_equal(shuffled.ids, plain.ids)
    per_image = plain.patches.reshape(10, -1)
    moved = shuffled.patches.reshape(10, -1)
    assert not np.array_equal(moved, per_image)
    assert sorted(map(bytes, moved)) == sorted(map(bytes, per_image))


def test_patch_spread_tells_a_model_whose_patches_all_look_alike(pong):
    config = tiny(n_layer=1, d_model=32, n_head=2, d_ff=64, context=1024, image_channels=4, frame_stack=4,
                  frame_colour="gray", text_vocab_size=TextTokenizer.default().vocab_size)
    data_dir = pong.directory.parent
    torch.manual_seed(0)
    model = Generalist(config).eval()
    fresh = patch_spread(model, "pong", data_dir)
    assert 0.0 < fresh < 0.5  # Pong's flat field: a large part of every patch's embedding is shared
    with torch.no_grad():
        model.embed.patches.proj.weight.zero_()
        model.embed.patches.proj.bias.fill_(1.0)  # every patch the same vector: nothing tells them apart
    assert patch_spread(model, "pong", data_dir) < 1e-6
    centred = Generalist(dataclasses.replace(config, centre_patches=True)).eval()
    assert patch_spread(centred, "pong", data_dir) == pytest.approx(1.0)


def test_the_full_presets_images_read_caption_scenes_and_stacked_pong_frames_in_one_batch(pong):
    tokenizer = TextTokenizer.default()
    model = build_model(full().train, tokenizer)
    layout = model.config.layout
    assert (layout.frame_stack, layout.frame_colour, model.config.patch_input) == (4, "gray", "pixels+mask")
    scene = generate_scene(0)
    caption = tokenize_caption(scene.image, tokenizer.encode(scene.caption), layout)  # RGB, zero-padded to 4
    window = ControlSource("pong", pong, layout).tokenize_window(0, 3, 12)
    assert caption.patches.shape[1] == window.patches.shape[1] == 4
    output = model(collate([caption, window], layout))
    output.loss.backward()
    assert torch.isfinite(output.loss) and model.embed.patches.stem.in_channels == 5  # four frames and the mask
    assert model.embed.patches.stem.weight.grad.abs().sum() > 0


def test_continuing_a_checkpoint_on_frames_stacked_otherwise_is_refused():
    four_gray = tiny(image_channels=4, frame_stack=4, frame_colour="gray", frame_size=48)
    check_same_frames(full().train, four_gray, Path("ckpt"))  # the full preset's frames: accepted
    with pytest.raises(ValueError, match=r"ckpt: the checkpoint reads 4 gray frame\(s\) at 48 pixels a timestep, "
                                         r"the config asks for 2 gray frame\(s\) at 48 pixels \(--frame-stack"):
        check_same_frames(dataclasses.replace(full().train, frame_stack=2), four_gray, Path("ckpt"))
    with pytest.raises(ValueError, match=r"asks for 4 gray frame\(s\) as recorded"):
        check_same_frames(dataclasses.replace(full().train, frame_size=0), four_gray, Path("ckpt"))
    with pytest.raises(ValueError, match="reads 1 rgb frame"):  # the shipped model, continued by the pong preset
        check_same_frames(full().train, tiny(), Path("ckpt"))
