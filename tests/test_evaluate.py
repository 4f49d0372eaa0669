"""Evaluation: prompt-conditioned rollouts, scores, failures reported in the table, the CLI."""

import copy
import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from generalist.checkpoint import save_model
from generalist.config import EvalConfig
from generalist.datasets.storage import EpisodeDataset
from generalist.envs import expert_normalized
from generalist.evaluate import (
    TaskResult,
    acting_precision,
    caption_images,
    caption_scores,
    chat_perplexity,
    demonstration_prompt,
    evaluate,
    evaluate_task,
    format_table,
)
from generalist.tokenizers import TextTokenizer, TokenKind, tokenize_episode


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def data_dir(cartpole_data):
    return cartpole_data


def test_rollouts_count_exactly_the_episodes_asked(model, data_dir):
    result = evaluate_task(model, "cartpole", EvalConfig(episodes=3, seed=7, data_dir=data_dir, num_envs=2))
    assert result.error is None and len(result.returns) == 3 and len(result.lengths) == 3
    assert result.returns == [float(n) for n in result.lengths]  # CartPole pays 1 per step
    assert result.normalized == pytest.approx(expert_normalized("cartpole", float(np.mean(result.returns))))
    again = evaluate_task(model, "cartpole", EvalConfig(episodes=3, seed=7, data_dir=data_dir, num_envs=2))
    assert again.returns == result.returns  # seeded


def test_sampled_actions_follow_the_evaluation_seed_not_the_global_generator(model, data_dir):
    config = EvalConfig(episodes=4, seed=7, data_dir=data_dir, num_envs=2, temperature=1.0)
    torch.manual_seed(0)
    first = evaluate_task(model, "cartpole", config)
    torch.manual_seed(1)
    again = evaluate_task(model, "cartpole", config)
    assert again.lengths == first.lengths
    greedy = evaluate_task(model, "cartpole", replace(config, temperature=0.0))
    assert greedy.lengths != first.lengths  # the untrained model's two actions are near-even: sampling plays apart


def test_rollouts_play_the_same_seeds_however_many_envs_run_them(model, data_dir):
    # Sub-env i of n plays seeds s+i, s+i+n, ...: 3 episodes on 2 envs are seeds s..s+2, as on 1 env, whichever
    # episodes finish first (with this model seed s+3 ends before s+2: keeping the first three to end would differ).
    alone = evaluate_task(model, "cartpole", EvalConfig(episodes=3, seed=31, prompt="none", num_envs=1))
    batched = evaluate_task(model, "cartpole", EvalConfig(episodes=3, seed=31, prompt="none", num_envs=2))
    assert sorted(batched.lengths) == sorted(alone.lengths)


def test_demonstration_prompt_is_the_end_of_an_expert_episode(model, data_dir):
    layout = model.config.layout
    prompt = demonstration_prompt("cartpole", data_dir, layout, np.random.default_rng(0), 32)
    assert len(prompt) == 30  # 5 whole timesteps of 4 values, separator, action fit in 32 tokens
    assert prompt.kinds[-1] == TokenKind.ACTION
    episodes = EpisodeDataset(data_dir / "cartpole")
    episode = int(np.random.default_rng(0).integers(len(episodes)))
    end = tokenize_episode(*episodes.read(episode, 55, 60), episodes.action_spec, layout)  # a 60-step episode's end
    np.testing.assert_array_equal(prompt.ids, end.ids)


def test_a_failing_task_is_reported_and_the_others_still_run(model, data_dir):
    results = evaluate(model, ["acrobot", "cartpole"], EvalConfig(episodes=1, data_dir=data_dir, num_envs=1))
    assert results[0].error is not None and "collect --tasks acrobot" in results[0].error
    assert results[1].error is None and len(results[1].returns) == 1
    table = format_table(results)
    assert "| acrobot | demo | 0 |" in table and "FileNotFoundError" in table
    assert results[1].stalled == 0  # CartPole has no no-reward limit


def test_the_table_names_the_games_that_stalled():
    result = TaskResult("breakout", returns=[3.0, 0.0, 0.0], lengths=[900, 1000, 1000], stalled=2)
    assert "| breakout | demo | 3 (2 stalled) | 1.0 ± 1.4 |" in format_table([result])


def test_a_step_cap_cuts_the_episodes_and_normalizes_by_baselines_cut_the_same_way(model, data_dir):
    config = EvalConfig(episodes=3, seed=7, data_dir=data_dir, num_envs=2, max_episode_steps=5)
    unmeasured = evaluate_task(model, "cartpole", config)
    assert "--max-episode-steps 5" in unmeasured.error and not unmeasured.returns  # refused before playing
    cut = evaluate_task(model, "cartpole", replace(config, reference_min=0.0, reference_max=10.0))
    assert cut.error is None and cut.lengths == [5, 5, 5] and cut.returns == [5.0, 5.0, 5.0]  # none falls in 5
    assert cut.capped_at == 5 and cut.normalized == pytest.approx(0.5)
    assert "| cartpole | demo | 3, cut at 5 steps | 5.0 ± 0.0 | 50.0% |" in format_table([cut])
    whole = evaluate_task(model, "cartpole", replace(config, max_episode_steps=500))  # CartPole's own cap
    assert whole.error is None and whole.capped_at is None and max(whole.lengths) > 5


@pytest.mark.slow
def test_evaluate_command(tmp_path, model, data_dir):
    checkpoint = save_model(model, tmp_path / "ckpt", TextTokenizer.default())
    out = tmp_path / "results.json"
    command = [sys.executable, "-m", "generalist.cli", "evaluate", "--checkpoint", str(checkpoint), "--tasks",
               "cartpole", "--episodes", "2", "--num-envs", "2", "--data-dir", str(data_dir), "--json", str(out),
               "--video", str(tmp_path / "videos")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| cartpole | demo | 2 |" in result.stdout
    from PIL import Image

    with Image.open(tmp_path / "videos" / "cartpole.gif") as gif:
        # CartPole's rendered frames, one per step (Pillow merges identical neighbours, so at most that many).
        episode_return = float(result.stdout.split("(return ")[1].split(")")[0])
        assert gif.size == (600, 400) and 1 < gif.n_frames <= episode_return + 1
    rows = json.loads(out.read_text())
    assert rows[0]["task"] == "cartpole" and len(rows[0]["returns"]) == 2
    bad = subprocess.run([*command[:6], "--tasks", "chess"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown tasks" in bad.stderr and "cartpole" in bad.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "generalist.cli", "evaluate", "--checkpoint", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=300,
    )
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr


def test_caption_scores_count_every_attribute():
    from generalist.datasets.scenes import generate_scene

    scenes = [generate_scene(seed, "heldout") for seed in range(20)]
    perfect = caption_scores([s.caption for s in scenes], scenes)
    assert (perfect.exact, perfect.attribute_accuracy, perfect.n) == (1.0, 1.0, 20)
    assert perfect.bleu4 == pytest.approx(100.0)
    first = scenes[0].objects[0]
    wrong_colour = "green" if first.colour != "green" else "red"
    changed = [scenes[0].caption.replace(f" {first.colour} ", f" {wrong_colour} ", 1)] + [s.caption for s in scenes[1:]]
    slots = 4 * sum(len(s.objects) for s in scenes)
    one_off = caption_scores(changed, scenes)
    assert one_off.exact == pytest.approx(19 / 20) and one_off.attribute_accuracy == pytest.approx(1 - 1 / slots)
    garbage = caption_scores(["nothing"] * 20, scenes)
    assert garbage.exact == 0.0 and garbage.attribute_accuracy == 0.0


def test_chat_perplexity_is_the_exponential_of_the_text_loss(model):
    from generalist.batch import collate
    from generalist.datasets.text import format_chat
    from generalist.tokenizers import tokenize_text

    tokenizer = TextTokenizer.default()
    conversation = ("Hello there", "Hi, how are you?")
    ids = np.append(tokenizer.encode(format_chat(conversation)), tokenizer.eos_id)
    with torch.no_grad():
        loss = model(collate([tokenize_text(ids, model.config.layout)], model.config.layout)).loss
    assert chat_perplexity(model, tokenizer, [conversation]) == pytest.approx(float(torch.exp(loss)), rel=1e-5)
    # An untrained model is about as unsure as a uniform guess over the text vocabulary.
    assert 100 < chat_perplexity(model, tokenizer, [conversation, ("a", "b")]) < 50_000


@pytest.mark.slow
def test_caption_and_chat_commands(tmp_path, model):
    from PIL import Image

    checkpoint = save_model(model, tmp_path / "ckpt", TextTokenizer.default())
    image = tmp_path / "scene.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    base = [sys.executable, "-m", "generalist.cli"]
    captioned = subprocess.run([*base, "caption", "--checkpoint", str(checkpoint), str(image)],
                               capture_output=True, text=True, timeout=300)
    assert captioned.returncode == 0, captioned.stderr
    assert captioned.stdout.startswith(f"{image}: ") and len(captioned.stdout.splitlines()) == 1
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    bad = subprocess.run([*base, "caption", "--checkpoint", str(checkpoint), str(broken)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "broken.png: cannot decode" in bad.stderr
    chat = subprocess.run([*base, "chat", "--checkpoint", str(checkpoint), "--max-new-tokens", "8"],
                          input="hello\n\nhow are you?\n", capture_output=True, text=True, timeout=300)
    assert chat.returncode == 0, chat.stderr
    assert [line.startswith("assistant> ") for line in chat.stdout.splitlines()] == [True, True]


def test_chat_handles_talk_longer_than_the_context(model):
    from generalist.evaluate import chat_reply

    tokenizer = TextTokenizer.default()
    long_turn = " ".join(f"word{i}" for i in range(600))
    assert len(tokenizer.encode(long_turn)) > 2 * model.config.context
    reply = chat_reply(model, tokenizer, [long_turn, "a reply", long_turn], max_new_tokens=8)
    assert isinstance(reply, str)
    assert math.isfinite(chat_perplexity(model, tokenizer, [(long_turn, long_turn)]))


def test_sampled_chat_replies_follow_their_seed_and_top_k(model):
    from generalist.evaluate import chat_reply

    tokenizer = TextTokenizer.default()

    def sampled(seed: int, top_k: int | None) -> str:
        generator = torch.Generator().manual_seed(seed)
        return chat_reply(model, tokenizer, ["hello"], 12, temperature=1.0, top_k=top_k, generator=generator)

    assert sampled(3, None) == sampled(3, None)
    assert sampled(3, 1) == sampled(4, 1) == chat_reply(model, tokenizer, ["hello"], 12)  # one piece left: greedy


@pytest.mark.parametrize("reply", ["Hi there!", "I'm fine, thanks.", "... well", "42 of them"])
def test_a_chat_prompt_opens_the_training_text_of_its_conversation(reply):
    # The reply continues the prompt exactly as in the training text; a prompt ending in the marker's space
    # would end in a lone space piece that training text never has before "▁Hi".
    from generalist.datasets.text import format_chat
    from generalist.evaluate import chat_prompt

    tokenizer = TextTokenizer.default()
    history = ["hello, how are you?", "Good, and you?", "what is your name?"]
    prompt = chat_prompt(tokenizer, history)
    whole = tokenizer.encode(format_chat([*history, reply]))
    np.testing.assert_array_equal(whole[: len(prompt)], prompt)
    assert tokenizer.decode(whole[len(prompt) :]).strip() == reply


@pytest.mark.parametrize("marker", ["<|user|>", "<|assistant|>"])
def test_a_chat_reply_ends_at_the_next_turn_marker(model, monkeypatch, marker):
    import generalist.evaluate
    from generalist.evaluate import chat_reply

    tokenizer = TextTokenizer.default()
    written = tokenizer.encode(f"fine, thanks\n{marker} and you?")
    monkeypatch.setattr(generalist.evaluate, "generate", lambda *args, **kwargs: [written])
    reply = chat_reply(model, tokenizer, ["how are you?"])
    assert reply == "fine, thanks"
    chat_reply(model, tokenizer, ["how are you?", reply, "good"])  # a valid turn of the next history


def test_evaluation_acts_in_the_precision_it_is_given(model, data_dir):
    with acting_precision(model, EvalConfig(precision="bf16")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with acting_precision(model, EvalConfig(precision="fp32")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    result = evaluate_task(model, "cartpole", EvalConfig(episodes=2, seed=7, data_dir=data_dir, precision="bf16"))
    assert result.error is None and len(result.returns) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_evaluation_captions_and_chat_run_on_cuda(model, data_dir):
    on_gpu = copy.deepcopy(model).to("cuda")
    config = EvalConfig(episodes=2, seed=7, data_dir=data_dir, precision="auto")
    on_cpu = evaluate_task(model, "cartpole", replace(config, precision="fp32"))
    result = evaluate_task(on_gpu, "cartpole", config)
    assert result.error is None and len(result.returns) == len(on_cpu.returns) == 2
    tokenizer = TextTokenizer.default()
    assert math.isfinite(chat_perplexity(on_gpu, tokenizer, [("hello", "hi there")]))
    assert len(caption_images(on_gpu, tokenizer, [np.zeros((64, 64, 3), np.uint8)], max_new_tokens=4)) == 1
