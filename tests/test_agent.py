"""The KV-cached engine and policy: exact against a full forward (also after sliding), batched as alone,
restricted sampling, and text generation."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from generalist.agent import Agent, Engine, generate, sample_tokens, tokenize_observations
from generalist.batch import collate
from generalist.model import Generalist, tiny
from generalist.tokenizers import (
    ActionSpec,
    TextTokenizer,
    TokenizedSequence,
    tokenize_caption,
    tokenize_episode,
    tokenize_text,
    tokenize_timestep,
)

TEXT = TextTokenizer.default()
CONFIG = tiny(n_layer=2, d_model=64, n_head=4, d_ff=128, context=128)
LAYOUT = CONFIG.layout
ATOL = 1e-4
SPECS = {
    "discrete": ActionSpec("discrete", size=2, n=5),
    "continuous": ActionSpec("continuous", size=3),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py says why


def _model(config=CONFIG, seed=0):
    torch.manual_seed(seed)
    return Generalist(config).eval()


def _full_logits(model, sequence):
    with torch.no_grad():
        return model.logits(collate([sequence], LAYOUT))[0]  # (t, v)


def _observation(rng, step):
    """A mixed observation: text of a varying length, a 2-patch image and three values."""
    return {
        "text": "left " * int(rng.integers(0, 4)) + f"step {step}",
        "image": rng.integers(0, 256, (32, 16, 3), dtype=np.uint8),
        "continuous": rng.normal(size=3).astype(np.float32),
    }


def _prompt(rng, spec, n_steps):
    observations = {"continuous": rng.normal(size=(n_steps, 3)).astype(np.float32),
                    "image": rng.integers(0, 256, (n_steps, 16, 16, 3), dtype=np.uint8)}
    actions = rng.integers(0, spec.n, (n_steps, spec.size)) if spec.kind == "discrete" else (
        rng.uniform(-1, 1, (n_steps, spec.size)))
    return tokenize_episode(observations, actions, spec, LAYOUT)


def _mixed_sequence(rng):
    text = tokenize_text(TEXT.encode("User: what is in the picture? Agent:"), LAYOUT)
    caption = tokenize_caption(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), TEXT.encode("a cat"), LAYOUT)
    return TokenizedSequence.concatenate([text, _prompt(rng, SPECS["continuous"], 4), caption,
                                          _prompt(rng, SPECS["discrete"], 3)])


# ------------------------------------------------------------------------------------- the engine


def test_feeding_chunks_of_ragged_rows_gives_the_full_forwards_logits():
    rng = np.random.default_rng(0)
    model = _model()
    sequences = [_mixed_sequence(rng) for _ in range(3)]
    sequences[1] = sequences[1].slice(5, len(sequences[1]))  # rows of different lengths and patch positions
    engine = Engine(model, 3)
    for row in range(3):
        engine.set_context(row, [])
    fed = [0, 0, 0]
    compared = 0
    while all(fed[row] < len(sequences[row]) for row in range(3)):
        ends = [min(fed[row] + int(rng.integers(1, 12)), len(sequences[row])) for row in range(3)]
        for row in range(3):
            engine.append(row, sequences[row].slice(fed[row], ends[row]))
        logits = engine.feed()
        for row in range(3):
            full = _full_logits(model, sequences[row].slice(0, ends[row]))
            torch.testing.assert_close(logits[row], full[-1], atol=ATOL, rtol=0)
            compared += 1
        fed = ends
    assert compared > 20


def test_a_model_that_centres_patches_refuses_half_an_image():
    model = _model(dataclasses.replace(CONFIG, centre_patches=True))
    caption = tokenize_caption(np.zeros((32, 32, 3), np.uint8), TEXT.encode("a cat"), LAYOUT)  # 4 patches first
    engine = Engine(model, 1)
    engine.set_context(0, [caption.slice(0, 2)])
    engine.feed()
    with pytest.raises(ValueError, match="whole images"):
        engine.append(0, caption.slice(2, len(caption)))
    with pytest.raises(ValueError, match="whole images"):
        engine.set_context(0, [caption.slice(0, 2), caption.slice(2, len(caption))])


# ------------------------------------------------------------------------------------- the policy


def _step_matches_full_forward(model, policy, step, spec):
    for row in range(len(step.ids)):
        context = policy.context(row)
        assert context.ids[-spec.size:].tolist() == step.ids[row].tolist()
        full = _full_logits(model, context)
        # The logits that chose each action token sit just before it.
        torch.testing.assert_close(step.logits[row], full[len(context) - spec.size - 1 : len(context) - 1],
                                   atol=ATOL, rtol=0)


@pytest.mark.parametrize("spec_name", ["discrete", "continuous"])
@pytest.mark.parametrize(("keep_prompt", "slide_fraction", "overrides"),
                         [(True, 0.25, {}), (False, 0.0, {}), (True, 0.25, {"centre_patches": True}),
                          (True, 0.25, {"value_frequencies": 6})])
def test_step_logits_equal_a_full_forward_over_the_kept_context_also_after_sliding(
    spec_name, keep_prompt, slide_fraction, overrides
):
    spec = SPECS[spec_name]
    rng = np.random.default_rng(1)
    model = _model(dataclasses.replace(CONFIG, **overrides))
    prompts = [_prompt(rng, spec, 3), _prompt(rng, spec, 1)]
    policy = Agent(model, spec, TEXT, keep_prompt=keep_prompt, slide_fraction=slide_fraction)
    policy.reset(prompts)
    for step_index in range(14):
        step = policy.step([_observation(rng, step_index) for _ in prompts])
        _step_matches_full_forward(model, policy, step, spec)
        for row, prompt in enumerate(prompts):
            context = policy.context(row)
            assert len(context) <= CONFIG.context
            starts_with_prompt = context.ids[: len(prompt)].tolist() == prompt.ids.tolist()
            assert starts_with_prompt or not keep_prompt
    assert policy.n_slides >= 4  # the context slid, more than once per episode
    if not keep_prompt:
        assert policy.context(0).ids[: len(prompts[0])].tolist() != prompts[0].ids.tolist()


def test_a_batch_of_episodes_acts_as_each_would_alone():
    spec = SPECS["discrete"]
    rng = np.random.default_rng(2)
    model = _model()
    prompts = [_prompt(rng, spec, 2), None, _prompt(rng, spec, 4)]
    observations = [[_observation(rng, t) for _ in prompts] for t in range(12)]
    together = Agent(model, spec, TEXT)
    together.reset(prompts)
    alone = [Agent(model, spec, TEXT) for _ in prompts]
    for policy, prompt in zip(alone, prompts, strict=True):
        policy.reset([prompt])
    for step_observations in observations:
        step = together.step(step_observations)
        for row, policy in enumerate(alone):
            own = policy.step([step_observations[row]])
            torch.testing.assert_close(step.logits[row], own.logits[0], atol=ATOL, rtol=0)
            assert step.ids[row].tolist() == own.ids[0].tolist()
    assert together.n_slides == sum(policy.n_slides for policy in alone) > 0


def test_restarting_one_episode_leaves_the_others_alone():
    spec = SPECS["continuous"]
    rng = np.random.default_rng(3)
    model = _model()
    prompts = [_prompt(rng, spec, 2), _prompt(rng, spec, 3)]
    policy = Agent(model, spec, TEXT)
    policy.reset(prompts)
    other = Agent(model, spec, TEXT)
    other.reset(prompts[:1])
    for t in range(3):
        observation = [_observation(rng, t), _observation(rng, t)]
        policy.step(observation)
        other.step(observation[:1])
    new_prompt = _prompt(rng, spec, 5)
    policy.reset([new_prompt], episodes=[1])
    fresh = Agent(model, spec, TEXT)
    fresh.reset([new_prompt])
    for t in range(3):
        observation = [_observation(rng, t), _observation(rng, t)]
        step = policy.step(observation)
        torch.testing.assert_close(step.logits[0], other.step(observation[:1]).logits[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(step.logits[1], fresh.step(observation[1:]).logits[0], atol=ATOL, rtol=0)
    _step_matches_full_forward(model, policy, step, spec)


def test_observations_are_tokenized_together_as_each_would_be_alone():
    rng = np.random.default_rng(6)
    spec = SPECS["discrete"]
    stackable = [_observation(rng, t) for t in range(3)]
    mixed = [*stackable, {"discrete": np.array([3, 4])}]  # keys differ: tokenized one by one
    for observations in (stackable, mixed):
        units = tokenize_observations(observations, spec, LAYOUT, TEXT, 3)
        for unit, observation in zip(units, observations, strict=True):
            alone = tokenize_timestep(observation, None, spec, LAYOUT, TEXT)
            for field in ("ids", "kinds", "local_positions", "loss_mask", "patches", "patch_rows",
                          "patch_token_index"):
                np.testing.assert_array_equal(getattr(unit, field), getattr(alone, field))


def test_policy_errors():
    spec = SPECS["discrete"]
    with pytest.raises(ValueError, match="eval mode"):
        Agent(_model().train(), spec, TEXT).reset([None])
    policy = Agent(_model(), spec, TEXT)
    with pytest.raises(ValueError, match="reset"):
        policy.act([{"continuous": np.zeros(3)}])
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match="does not fit"):
        policy.reset([_prompt(rng, spec, 40)])
    policy.reset([_prompt(rng, spec, 1)])
    with pytest.raises(ValueError, match="observations for 1 episodes"):
        policy.act([{"continuous": np.zeros(3)}] * 2)


# ---------------------------------------------------------------------------- restricted sampling


@pytest.mark.parametrize("spec", [ActionSpec("discrete", size=1, n=3), ActionSpec("continuous", size=2)])
def test_restricted_sampling_never_yields_an_invalid_action(spec):
    allowed = torch.from_numpy(spec.valid_id_mask(LAYOUT))  # (size, v)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    # Logits that favour every invalid id by a wide margin.
    logits = torch.randn(512, LAYOUT.table_size) + 50.0 * (~allowed[0]).float()
    for temperature, top_k in ((0.0, None), (1.0, None), (10.0, None), (3.0, 4)):
        ids = sample_tokens(logits, allowed[0], temperature, top_k, generator)
        assert allowed[0][ids].all()
    assert len(set(sample_tokens(logits, allowed[0], 10.0, None, generator).tolist())) > 1  # it does sample

    rng = np.random.default_rng(5)
    policy = Agent(_model(), spec, TEXT, temperature=5.0, generator=torch.Generator().manual_seed(1))
    policy.reset([None] * 4)
    for t in range(25):
        step = policy.step([_observation(rng, t) for _ in range(4)])
        for slot, (lo, hi) in enumerate(spec.valid_id_ranges(LAYOUT)):
            assert ((step.ids[:, slot] >= lo) & (step.ids[:, slot] < hi)).all()
        if spec.kind == "discrete":
            assert step.actions.shape == (4,) and set(step.actions.tolist()) <= {0, 1, 2}
        else:
            assert step.actions.shape == (4, 2) and (np.abs(step.actions) <= 1).all()


def _penalized(step, previous, penalty):
    """A step's raw logits (B, v) of its one slot, with log(penalty) taken from every id but `previous`."""
    logits = step.logits[:, 0]
    if previous is None:
        return logits
    return logits - math.log(penalty) * (torch.arange(logits.shape[-1]) != previous[:, None])


def test_a_change_penalty_divides_the_odds_of_changing_action():
    spec = ActionSpec("discrete", size=1, n=3)
    allowed = torch.from_numpy(spec.valid_id_mask(LAYOUT))[0]
    rng = np.random.default_rng(7)
    model = _model()
    # Sampled, so that the untrained model's nearly equal logits give varied actions; `replay` draws the same
    # uniforms as the agent's generator, `unpenalized` the same ones from the raw logits.
    penalized = Agent(model, spec, TEXT, temperature=1.0, generator=torch.Generator().manual_seed(1),
                      change_penalty=2.0)
    replay, unpenalized = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    stuck = Agent(model, spec, TEXT, temperature=1.0, generator=torch.Generator().manual_seed(2), change_penalty=1e12)
    penalized.reset([None] * 8)
    stuck.reset([None] * 8)
    previous, flipped, changes, first = None, 0, 0, None
    for t in range(12):
        observations = [_observation(rng, t) for _ in range(8)]
        step = penalized.step(observations)
        chosen = torch.from_numpy(step.ids[:, 0])
        assert chosen.tolist() == sample_tokens(_penalized(step, previous, 2.0), allowed, 1.0, None, replay).tolist()
        flipped += int((chosen != sample_tokens(step.logits[:, 0], allowed, 1.0, None, unpenalized)).sum())
        changes += 0 if previous is None else int((chosen != previous).sum())
        previous = chosen
        held = stuck.step(observations).ids[:, 0]
        first = held if first is None else first
        assert held.tolist() == first.tolist()  # a prohibitive penalty never changes action
    assert flipped > 0 and changes > 0  # the penalty changed some choices, and some actions still changed
    assert len(set(first.tolist())) > 1  # the stuck episodes hold different actions: each its own previous one
    stuck.reset([None], episodes=[1])
    steps = [stuck.step([_observation(rng, 12 + t) for _ in range(8)]).ids[:, 0] for t in range(3)]
    assert all(ids[0] == first[0] for ids in steps)
    assert steps[1][1] == steps[2][1]  # a restarted episode chooses its first action freely, then holds it
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="change_penalty"):
            Agent(model, spec, TEXT, change_penalty=bad)


# ---------------------------------------------------------------------------------------- text


def _biased_model(favourite: int, runner_up: int):
    """A model whose logits are the same at every position: `favourite` first, `runner_up` second."""
    model = _model(tiny(n_layer=1, d_model=64, n_head=4, d_ff=128, context=64, tie_embeddings=False))
    with torch.no_grad():
        model.norm.weight.zero_()
        model.norm.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[favourite] = 1.0
        model.lm_head.weight[runner_up] = 0.5
    return model


def test_generate_writes_text_ids_only():
    model = _biased_model(favourite=LAYOUT.separator_id, runner_up=42)
    out = generate(model, [np.array([2, 10, 11])], max_new_tokens=5, eos_id=3)
    assert out[0].tolist() == [42] * 5  # the separator is never written, though the model prefers it
    sampled = generate(model, [np.array([2])], 30, temperature=3.0, top_k=10, generator=torch.Generator())
    assert LAYOUT.is_text(sampled[0]).all() and len(sampled[0]) <= 30


def test_generate_stops_at_eos_and_when_the_context_is_full():
    assert generate(_biased_model(favourite=3, runner_up=42), [np.array([2])], 10, eos_id=3)[0].tolist() == []
    full = generate(_biased_model(favourite=7, runner_up=42), [np.array([2] * 60)], 10, eos_id=3)
    assert len(full[0]) == 4  # a context of 64 tokens holds the 60-token prompt and 4 more
    model = _model()
    free = generate(model, [np.array([2, 50, 51])], 8, eos_id=-1)[0]
    cut = generate(model, [np.array([2, 50, 51])], 8, eos_id=int(free[3]))[0]
    assert cut.tolist() == free[: free.tolist().index(free[3])].tolist()


def test_generating_a_batch_is_generating_each_alone():
    model = _model()
    prompts = [np.array([2, 100, 200, 300]), np.array([2]), np.array([2, 7, 8, 9, 10, 11, 12])]
    together = generate(model, prompts, 12, eos_id=-1)
    for prompt, mine in zip(prompts, together, strict=True):
        assert generate(model, [prompt], 12, eos_id=-1)[0].tolist() == mine.tolist()
        assert len(mine) == 12
