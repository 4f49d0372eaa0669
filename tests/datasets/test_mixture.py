"""The training mixture: weights, prompts, windows, lengths, ranks, determinism, resuming, bad data."""

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from generalist.datasets.mixture import (
    CaptionListSource,
    ControlSource,
    Mixture,
    MixtureConfig,
    SceneCaptionSource,
    Shard,
    TextSource,
    action_balance,
    build_sources,
    caption_word_inputs,
    caption_word_targets,
    make_loader,
)
from generalist.datasets.scenes import (
    UNIFORM_BACKGROUNDS,
    caption_of,
    generate_scene,
    parse_caption,
    recolour_objects,
)
from generalist.model import Generalist, preset
from generalist.tokenizers import ActionSpec, TextTokenizer, TokenKind, TokenLayout, tokenize_caption

TOKENIZER = TextTokenizer.default()
LAYOUT = TokenLayout(TOKENIZER.vocab_size)


@dataclass
class FakeEpisodes:
    """Episodes whose discrete observation is (episode, step): every token says where it came from."""

    lengths: list[int]
    action_spec: ActionSpec = field(default_factory=lambda: ActionSpec("discrete", n=3))

    def __len__(self):
        return len(self.lengths)

    def episode_length(self, episode):
        return self.lengths[episode]

    def read(self, episode, start, stop):
        assert 0 <= start < stop <= self.lengths[episode]
        steps = np.arange(start, stop)
        observations = {"discrete": np.stack([np.full_like(steps, episode), steps], axis=1)}
        return observations, steps % 3


STEP_TOKENS = 4  # two discrete values, separator, action


def decode_steps(sequence):
    """(episode, step) of every timestep of a control sequence, checking each starts on a boundary."""
    kinds = sequence.kinds.reshape(-1, STEP_TOKENS)
    expected = [TokenKind.DISCRETE, TokenKind.DISCRETE, TokenKind.SEPARATOR, TokenKind.ACTION]
    assert (kinds == expected).all()
    values = LAYOUT.ids_to_discrete(sequence.ids.reshape(-1, STEP_TOKENS)[:, :2])
    return [tuple(v) for v in values.tolist()]


def make_mixture(weights, lengths=(30,) * 8, **kwargs):
    sources = {
        "control": ControlSource("control", FakeEpisodes(list(lengths)), LAYOUT),
        "scenes": SceneCaptionSource(TOKENIZER, LAYOUT),
        "dialogue": TextSource("dialogue", ["<|user|> hi\n<|assistant|> hello", "x " * 500], TOKENIZER, LAYOUT),
    }
    config_args = {"sequence_length": 64, "batch_size": 4, **kwargs.pop("config", {})}
    return Mixture(sources, MixtureConfig(weights=weights, **config_args), LAYOUT, **kwargs)


def test_task_frequencies_match_the_weights():
    mixture = make_mixture({"control": 1.0, "scenes": 2.0, "dialogue": 1.0})
    rng = np.random.default_rng(0)
    n = 1000
    counts = Counter(mixture.sequence(rng, mixture.shards[0])[0] for _ in range(n))
    for task, p in {"control": 0.25, "scenes": 0.5, "dialogue": 0.25}.items():
        assert abs(counts[task] / n - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_each_row_is_labelled_with_its_task():
    mixture = make_mixture({"control": 1.0, "scenes": 2.0, "dialogue": 1.0}, config={"batch_size": 16})
    tasks, batch = mixture.batch(0)
    assert batch.tasks.tolist() == [mixture.tasks.index(task) for task in tasks]
    assert len(set(tasks)) > 1  # 16 rows of three tasks: a wrong label would show
    is_control = batch.tasks == mixture.tasks.index("control")
    assert ((batch.kinds == TokenKind.SEPARATOR).any(dim=1) == is_control).all()


def test_control_windows_and_prompts():
    mixture = make_mixture({"control": 1.0}, lengths=(10, 40, 25, 60))
    rng = np.random.default_rng(1)
    prompted = from_end = 0
    for _ in range(400):
        _, sequence = mixture.sequence(rng, mixture.shards[0])
        assert len(sequence) <= 64 and len(sequence) % STEP_TOKENS == 0
        steps = decode_steps(sequence)
        # Runs of consecutive steps of one episode: a window, or a prompt followed by a window.
        breaks = [i for i in range(1, len(steps)) if steps[i] != (steps[i - 1][0], steps[i - 1][1] + 1)]
        assert len(breaks) <= 1
        if breaks:
            prompt, window = steps[: breaks[0]], steps[breaks[0] :]
            assert prompt[0][0] != window[0][0]  # another episode of the same task
            from_end += prompt[-1][1] == mixture.sources["control"].episodes.lengths[prompt[0][0]] - 1
            prompted += 1
    assert 0.18 < prompted / 400 < 0.32
    assert 0.3 < from_end / prompted < 0.8  # half from the end, half uniform (which can also end there)


def test_sequences_never_exceed_the_length():
    mixture = make_mixture({"control": 1.0, "scenes": 1.0, "dialogue": 1.0})
    for index in range(30):
        tasks, batch = mixture.batch(index)
        assert batch.ids.shape[1] <= 64 and int(batch.lengths.max()) <= 64
        assert set(tasks) <= {"control", "scenes", "dialogue"}


def test_short_samples_are_packed():
    mixture = make_mixture({"scenes": 1.0}, config={"sequence_length": 200})
    _, sequence = mixture.sequence(np.random.default_rng(0), mixture.shards[0])
    images = np.flatnonzero(sequence.kinds == TokenKind.IMAGE)
    assert len(images) >= 3 * 16 and len(sequence) <= 200  # several 16-patch captions in one sequence
    unpacked = make_mixture({"scenes": 1.0}, config={"sequence_length": 200, "pack": False})
    assert (unpacked.sequence(np.random.default_rng(0), unpacked.shards[0])[1].kinds == TokenKind.IMAGE).sum() == 16


def _fingerprints(mixture, n_batches):
    """Each drawn sequence as bytes: its ids and its pixels."""
    found = set()
    for index in range(n_batches):
        batch = mixture.batch(index)[1]
        for row in range(batch.ids.shape[0]):
            ids = batch.ids[row, : int(batch.lengths[row])].numpy().tobytes()
            found.add((ids, batch.patches[batch.patch_batch_index == row].numpy().tobytes()))
    return found


def test_two_ranks_never_draw_the_same_sequence():
    weights = {"control": 1.0, "scenes": 1.0}
    rank0 = _fingerprints(make_mixture(weights, shards=[0], n_shards=2), 40)
    rank1 = _fingerprints(make_mixture(weights, shards=[1], n_shards=2), 40)
    assert len(rank0) > 100 and len(rank1) > 100
    assert not rank0 & rank1


def test_rank_shards_are_disjoint_episodes():
    mixture = make_mixture({"control": 1.0}, shards=[1], n_shards=2, config={"sequence_length": 16})
    rng = np.random.default_rng(0)
    windows = [decode_steps(mixture.sequence(rng, mixture.shards[0])[1])[-1][0] for _ in range(100)]
    assert set(windows) == {1, 3, 5, 7}


def test_same_seed_same_batches_and_resume_is_exact():
    a, b = make_mixture({"control": 1.0, "scenes": 1.0}), make_mixture({"control": 1.0, "scenes": 1.0})
    for index in range(5):
        assert a.batch(index)[1].ids.equal(b.batch(index)[1].ids)
    other_seed = make_mixture({"control": 1.0, "scenes": 1.0}, config={"seed": 1})
    assert not other_seed.batch(0)[1].ids.equal(a.batch(0)[1].ids)
    resumed = iter(make_mixture({"control": 1.0, "scenes": 1.0}, start_batch=3))
    assert next(resumed)[0].ids.equal(a.batch(3)[1].ids)


def test_one_process_with_two_shards_reads_what_two_ranks_read():
    both = make_mixture({"control": 1.0, "scenes": 1.0}, shards=[0, 1], n_shards=2)
    rank0 = make_mixture({"control": 1.0, "scenes": 1.0}, shards=[0], n_shards=2)
    rank1 = make_mixture({"control": 1.0, "scenes": 1.0}, shards=[1], n_shards=2)
    for index in range(3):
        first, second = both.step(index)
        assert first.ids.equal(rank0.step(index)[0].ids) and second.ids.equal(rank1.step(index)[0].ids)


def test_worker_processes_give_the_same_stream():
    mixture = make_mixture({"control": 1.0, "scenes": 1.0, "dialogue": 1.0})
    in_process = [step[0].ids for step, _ in zip(make_loader(mixture, num_workers=0), range(6), strict=False)]
    in_workers = [step[0].ids for step, _ in zip(make_loader(mixture, num_workers=2), range(6), strict=False)]
    for one, two in zip(in_process, in_workers, strict=True):
        assert one.equal(two)


def test_bad_data_gets_clear_errors():
    with pytest.raises(ValueError, match=r"no data: \['pong'\]"):
        make_mixture({"control": 1.0, "pong": 1.0})
    with pytest.raises(ValueError, match="not all zero"):
        make_mixture({"control": 0.0})
    mixture = make_mixture({"control": 1.0}, lengths=(5,), shards=[1], n_shards=2)
    with pytest.raises(ValueError, match="control: 1 items cannot be shared among 2 data shards"):
        mixture.batch(0)
    with pytest.raises(ValueError, match="more than the sequence length"):
        make_mixture({"control": 1.0}, config={"sequence_length": 3}).batch(0)
    with pytest.raises(ValueError, match="dialogue: empty corpus"):
        TextSource("dialogue", ["", "  "], TOKENIZER, LAYOUT)
    with pytest.raises(ValueError, match="digits: no image-caption pairs"):
        CaptionListSource("digits", [], [], TOKENIZER, LAYOUT)


def test_batches_feed_the_model():
    torch.manual_seed(0)
    model = Generalist(preset("tiny", text_vocab_size=TOKENIZER.vocab_size, context=64))
    mixture = make_mixture({"control": 1.0, "scenes": 1.0, "dialogue": 1.0})
    for index in range(3):
        tasks, batch = mixture.batch(index)
        output = model(batch)
        assert torch.isfinite(output.loss) and output.n_text + output.n_action == int(batch.loss_mask[:, 1:].sum())
        assert (output.n_action > 0) == ("control" in tasks)


@pytest.mark.parametrize(("scene_size", "patches"), [(64, 16), (48, 9)])
def test_scene_captions_are_drawn_at_the_training_scene_size(scene_size, patches):
    source = build_sources(["varied_scenes"], "unused", LAYOUT, TOKENIZER, scene_size=scene_size)["varied_scenes"]
    sequence = source.sample(np.random.default_rng(0), Shard(0, 1), 256)
    assert sequence.patches.shape[0] == patches == (sequence.kinds == TokenKind.IMAGE).sum()


def test_scene_text_is_a_caption_without_an_image():
    source = build_sources(["scene_text"], "unused", LAYOUT, TOKENIZER)["scene_text"]
    sequence = source.sample(np.random.default_rng(0), Shard(0, 1), 256)
    assert (sequence.kinds == TokenKind.TEXT).all() and sequence.patches.shape[0] == 0
    assert sequence.ids[-1] == TOKENIZER.eos_id and parse_caption(TOKENIZER.decode(sequence.ids[:-1])) is not None


def test_gray_scene_captions_name_shapes_without_colours():
    source = build_sources(["gray_scenes"], "unused", LAYOUT, TOKENIZER, scene_size=48)["gray_scenes"]
    sequence = source.sample(np.random.default_rng(0), Shard(0, 1), 256)
    text_ids = sequence.ids[sequence.kinds == TokenKind.TEXT]
    caption = TOKENIZER.decode(text_ids[:-1])
    assert sequence.patches.shape[0] == 9 and text_ids[-1] == TOKENIZER.eos_id
    assert set(caption.split()) & {"circle", "square", "triangle", "diamond"}
    assert not set(caption.split()) & {"red", "green", "blue", "yellow", "purple", "white"}


def test_scene_captions_follow_the_configured_word_order():
    source = build_sources(["varied_scenes"], "unused", LAYOUT, TOKENIZER, scene_size=48,
                           caption_order="shape-first")["varied_scenes"]
    sequence = source.sample(np.random.default_rng(0), Shard(0, 1), 256)
    caption = TOKENIZER.decode(sequence.ids[sequence.kinds == TokenKind.TEXT][:-1])
    stated = parse_caption(caption)
    assert stated is not None and f"{stated[0].shape} in {stated[0].colour}" in caption


def test_action_balance_weighs_rare_actions_up_and_keeps_the_mean(tmp_path):
    """Shares p give weights p^-b with the recorded actions' mean weight 1; an action never recorded, a caption
    task and a continuous task keep 1; exponent 0 changes nothing."""
    from generalist.config import CollectConfig
    from generalist.datasets.recording import collect
    from generalist.datasets.storage import DatasetError, EpisodeDataset

    collect(CollectConfig(tasks=("acrobot", "pendulum"), episodes=2, out=tmp_path, max_episode_steps=50,
                          progress=False))
    counts = EpisodeDataset(tmp_path / "acrobot").action_counts()
    assert counts.sum() == 100 and len(counts) == 3
    shares = counts / counts.sum()
    table = action_balance(["acrobot", "pendulum", "scenes"], tmp_path, 0.5)
    recorded = shares > 0
    weights = table[0, : len(counts)].numpy()
    assert (shares[recorded] * weights[recorded]).sum() == pytest.approx(1.0)
    ratio = weights[recorded] * np.sqrt(shares[recorded])
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)  # p^-0.5 up to one scale
    assert (weights[~recorded] == 1.0).all() and (table[1:] == 1.0).all()
    assert (action_balance(["acrobot"], tmp_path, 0.0) == 1.0).all()
    with pytest.raises(DatasetError, match="discrete"):
        EpisodeDataset(tmp_path / "pendulum").action_counts()


@pytest.mark.parametrize("attribute", ["size", "colour", "shape"])
def test_caption_word_targets_mark_each_attribute_word_of_a_caption_once_and_nothing_else(attribute):
    from generalist.datasets.scenes import COLOURS, SHAPES, SIZES, generate_scene

    ids, scene_tasks = caption_word_targets(["chitchat", "textured_scenes", "pong", "scenes"], TOKENIZER, attribute)
    assert scene_tasks.tolist() == [False, True, False, True]
    words = {"size": SIZES, "colour": COLOURS, "shape": SHAPES}[attribute]
    assert len(ids) == len(words)  # the shipped tokenizer starts every caption word with its own piece
    for seed in range(20):
        caption = generate_scene(seed).caption
        pieces = TOKENIZER.encode(caption)
        marked = [TOKENIZER.id_to_piece(int(i)) for i in pieces if i in ids.tolist()]
        named = [getattr(o, attribute) for o in parse_caption(caption)]
        assert len(marked) == len(named)
        assert all(word.startswith(piece.lstrip("\u2581")) for piece, word in zip(marked, named, strict=True))


def test_caption_word_targets_refuse_an_unknown_attribute():
    with pytest.raises(ValueError, match="cell"):
        caption_word_targets(["scenes"], TOKENIZER, "cell")


def test_caption_word_inputs_are_the_colour_words_when_each_is_one_piece_and_refused_when_split():
    from generalist.datasets.scenes import COLOURS, generate_scene
    from generalist.tokenizers.text import TextTokenizerConfig, train_text_tokenizer

    symbols = tuple(f"\u2581{colour}" for colour in COLOURS)  # each colour one piece of its own
    captions = [generate_scene(seed).caption for seed in range(300)]
    whole = train_text_tokenizer(captions, TextTokenizerConfig(vocab_size=300, user_defined_symbols=symbols))
    ids, scene_tasks = caption_word_inputs(["chitchat", "scenes"], whole, "colour")
    assert scene_tasks.tolist() == [False, True]
    assert sorted(ids.tolist()) == sorted(int(whole.encode(f"a {colour}")[1]) for colour in COLOURS)
    with pytest.raises(ValueError, match="yellow"):  # the shipped tokenizer splits "yellow" and "purple"
        caption_word_inputs(["scenes"], TOKENIZER, "colour")


def test_recombined_scenes_caption_the_colours_their_colour_tokens_read():
    layout = TokenLayout(TOKENIZER.vocab_size, caption_route_tokens=True)
    plain = SceneCaptionSource(TOKENIZER, layout, style="textured", size=48)
    moved = SceneCaptionSource(TOKENIZER, layout, style="textured", size=48, colour_recombine=1.0)
    shard = Shard(0, 1)
    recoloured = 0
    for seed in range(40):
        before = plain.sample(np.random.default_rng(seed), shard, 512)
        after = moved.sample(np.random.default_rng(seed), shard, 512)  # the same scene: its seed is drawn first
        np.testing.assert_array_equal(after.patches[0::2], before.patches[0::2])  # the shape tokens' pixels
        said_before = parse_caption(TOKENIZER.decode(before.ids[before.kinds == TokenKind.TEXT][:-1]))
        said_after = parse_caption(TOKENIZER.decode(after.ids[after.kinds == TokenKind.TEXT][:-1]))
        assert [(o.size, o.shape, o.cell) for o in said_after] == [(o.size, o.shape, o.cell) for o in said_before]
        if said_after == said_before:
            assert len({o.colour for o in said_before}) == 1  # one colour: nothing to move
            np.testing.assert_array_equal(after.patches, before.patches)
            continue
        recoloured += 1
        colour_patches = before.patches[0::2]
        for obj in said_after:  # its colour token reads the patch of the object whose colour its caption names
            donor = [o.cell for o in said_before if o.colour == obj.colour]
            assert any(np.array_equal(after.patches[2 * obj.cell + 1], colour_patches[cell]) for cell in donor)
    assert recoloured > 10
    assert plain.sample(np.random.default_rng(0), shard, 512).ids.tolist() == SceneCaptionSource(
        TOKENIZER, layout, style="textured", size=48, colour_recombine=0.0).sample(
        np.random.default_rng(0), shard, 512).ids.tolist()


def test_recombination_on_uniform_backgrounds_moves_colours_there_only():
    layout = TokenLayout(TOKENIZER.vocab_size, caption_route_tokens=True)
    source = SceneCaptionSource(TOKENIZER, layout, style="textured", size=48, colour_recombine=1.0,
                                colour_recombine_uniform=True)
    shard = Shard(0, 1)
    moved_on, kept_on = set(), set()
    for seed in range(60):
        scene = generate_scene(int(np.random.default_rng(seed).integers(2**40)), "train", "textured", 48)
        if len({obj.colour for obj in scene.objects}) < 2:
            continue  # one colour: nothing to move anywhere
        sequence = source.sample(np.random.default_rng(seed), shard, 512)
        moved = not np.array_equal(sequence.patches[0::2], sequence.patches[1::2])
        (moved_on if moved else kept_on).add(scene.background)
    assert moved_on and moved_on <= set(UNIFORM_BACKGROUNDS)
    assert kept_on and not kept_on & set(UNIFORM_BACKGROUNDS)  # every uniform one moved at a share of 1


def test_painted_recombination_reads_each_colour_token_in_place_on_every_background():
    layout = TokenLayout(TOKENIZER.vocab_size, caption_route_tokens=True)
    plain = SceneCaptionSource(TOKENIZER, layout, style="textured", size=48)
    painted = SceneCaptionSource(TOKENIZER, layout, style="textured", size=48, colour_recombine=1.0,
                                 colour_recombine_painted=True)
    shard = Shard(0, 1)
    recoloured_on = set()
    for seed in range(60):
        before = plain.sample(np.random.default_rng(seed), shard, 512)
        after = painted.sample(np.random.default_rng(seed), shard, 512)
        np.testing.assert_array_equal(after.patches[0::2], before.patches[0::2])  # the shape tokens' pixels
        # The source's draws, in its order: the scene's seed, the share's draw, the permutation.
        rng = np.random.default_rng(seed)
        scene = generate_scene(int(rng.integers(2**40)), "train", "textured", 48)
        rng.random()
        moved = recolour_objects(scene.objects, rng)
        if moved is None:  # one colour: nothing to move
            np.testing.assert_array_equal(after.patches, before.patches)
            continue
        objects, source = moved
        recoloured_on.add(scene.background)
        said = parse_caption(TOKENIZER.decode(after.ids[after.kinds == TokenKind.TEXT][:-1]))
        assert said == parse_caption(caption_of(objects))  # captioned with the colours painted
        image = generate_scene(int(np.random.default_rng(seed).integers(2**40)), "train", "textured", 48,
                               colour_source=source).image
        expected = tokenize_caption(image, np.zeros(1, np.int64), layout).patches[0::2]
        np.testing.assert_array_equal(after.patches[1::2], expected)  # the painted scene, each patch in place
        empty = np.setdiff1d(np.arange(9), [obj.cell for obj in objects])
        np.testing.assert_array_equal(after.patches[1::2][empty], before.patches[0::2][empty])  # its own background
    assert recoloured_on - set(UNIFORM_BACKGROUNDS)  # textured and gradient scenes are recombined too


@pytest.mark.parametrize(("route_tokens", "kwargs", "match"), [
    (True, {"colour_recombine": 1.5, "size": 48}, "share of scenes"),
    (True, {"colour_recombine_uniform": True, "size": 48}, "give it a share"),
    (True, {"colour_recombine_painted": True, "size": 48}, "give it a share"),
    (True, {"colour_recombine": 0.5, "size": 64}, "48-pixel scenes"),
    (False, {"colour_recombine": 0.5, "size": 48}, "two tokens"),
    (True, {"colour_recombine": 0.5, "size": 48, "style": "gray"}, "name no colour"),
])
def test_bad_colour_recombination_is_refused(route_tokens, kwargs, match):
    layout = TokenLayout(TOKENIZER.vocab_size, caption_route_tokens=route_tokens)
    with pytest.raises(ValueError, match=match):
        SceneCaptionSource(TOKENIZER, layout, **kwargs)
