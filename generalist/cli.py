"""The `generalist` command line: thin commands over the library.

Each command is a `_add_<name>(subparsers)` function that declares its arguments and a `_run_<name>(args)`
function of a few lines that calls the library. Flags come from the config tree (generalist/config.py), which
imports nothing heavy: every parser is built without torch or gymnasium, so `--help` answers at once. The
library is imported inside the `_run_` functions, when a command runs (a measured cost: torch and gymnasium
take about 2 s to import here).

Nested settings are dotted flags: `generalist run --train.steps 100 --eval.episodes 20`; a setting whose name
occurs once in a command's tree may also be given bare (`--steps 100`).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from generalist.config import (
    CHAT_SEED,
    CHAT_TEMPERATURE,
    CHAT_TOP_K,
    DEVICES,
    DIAGNOSIS_SEED,
    PRECISIONS,
    RUN_PRESETS,
    CollectConfig,
    EvalConfig,
    RunConfig,
    TrainConfig,
    cpu,
    run_preset,
)
from generalist.flags import add_arguments, from_arguments, load_json

CHECKPOINT_HELP = "a checkpoint or run directory (default: the checkpoint shipped in the package)"


def _add_hardware_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where the model runs (default: auto, "
                        "CUDA when available)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32, bf16, or auto (bf16 where this machine runs it faster) (default: fp32)")


def _add_tokenize(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenize",
        help="print the token stream of one CartPole step, one Atari frame and one sentence",
        description="Show how each modality becomes tokens: one table per example.",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the environment resets")
    parser.add_argument(
        "--text", default="A generalist agent plays, captions and chats. 你好 👋", help="the sentence to tokenize"
    )
    parser.add_argument(
        "--max-rows", type=int, default=12, help="rows shown per table before the middle is elided"
    )
    parser.set_defaults(run=_run_tokenize)


def _run_tokenize(args: argparse.Namespace) -> int:
    from generalist.tokens_demo import run_demo

    run_demo(seed=args.seed, text=args.text, max_rows=args.max_rows)
    return 0


def _add_tokenizer(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train the SentencePiece text tokenizer")
    actions = parser.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    train = actions.add_parser(
        "train",
        help="train a SentencePiece model (byte fallback, exact round trips)",
        description="Train on UTF-8 text files, or on the shipped corpus (prose, jokes, train dialogues, caption "
        "grammar) when none are given. The chat markers are always single tokens.",
    )
    train.add_argument("inputs", nargs="*", help="UTF-8 text files, one sentence or paragraph per line")
    train.add_argument("--out", required=True, help="path of the .model file to write")
    train.add_argument("--vocab-size", type=int, default=3072, help="text vocabulary V (ids 0..V-1)")
    train.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram", help="SentencePiece algorithm")
    train.add_argument("--corpus", choices=["shipped", "chitchat"], default="shipped",
                       help="with no files: the shipped corpus, or it plus the chit-chat train conversations")
    train.set_defaults(run=_run_tokenizer_train)


def _run_tokenizer_train(args: argparse.Namespace) -> int:
    from generalist.datasets.text import CHAT_MARKERS, tokenizer_lines
    from generalist.tokenizers.text import TextTokenizerConfig, read_text_files, train_text_tokenizer

    lines = read_text_files(args.inputs) if args.inputs else tokenizer_lines(args.corpus)
    config = TextTokenizerConfig(
        vocab_size=args.vocab_size, model_type=args.model_type, user_defined_symbols=CHAT_MARKERS
    )
    tokenizer = train_text_tokenizer(lines, config, out=args.out)
    print(f"wrote {args.out}: vocabulary {tokenizer.vocab_size}, trained on {len(lines)} lines")
    return 0


def _add_collect(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="record expert episodes (with --policy: a trained agent's, labelled by the expert), a dataset per task",
        description="Run each task's scripted expert and write its episodes to OUT/<task>; with --policy a trained "
        "agent drives while the expert labels every step (DAgger). Writes are atomic: a rerun resumes an "
        "interrupted dataset at the next seed and skips a finished one. --tasks all records every task.",
    )
    add_arguments(parser, CollectConfig, exclude=("tasks",))
    parser.add_argument("--tasks", dest="task_names", default="cartpole", help="comma-separated task names, or all")
    parser.add_argument("--seed", dest="first_seed", type=int, default=None, help="the same as --first-seed")
    parser.set_defaults(run=_run_collect)


def _run_collect(args: argparse.Namespace) -> int:
    from generalist.datasets.recording import collect
    from generalist.envs import task_list

    config = from_arguments(CollectConfig, args, CollectConfig(tasks=task_list(args.task_names)))
    driver = None
    if config.policy is not None:
        from generalist.dagger import learner_driver

        # Every checkpoint-task pair is checked (and its agent built) before any env starts.
        drivers = {task: learner_driver(config.policy, task, config) for task in config.tasks}
        driver = drivers.__getitem__
    for directory in collect(config, driver):
        print(f"wrote {directory}")
    return 0


def _add_baselines(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "baselines",
        help="measure random and expert returns per task (the 0%% and 100%% of normalized scores)",
        description="Play each task with the random policy and with the expert over the same seeds and store "
        "mean, std and n with the seeds and package versions in generalist/envs/baselines.json.",
    )
    parser.add_argument("--tasks", default="all", help="comma-separated task names, or all")
    parser.add_argument("--episodes", type=int, default=50, help="episodes per policy and task")
    parser.add_argument("--seed", type=int, default=1_000_000, help="seed of the first episode")
    parser.add_argument("--out", default=None, help="JSON file to update (default: the package's baselines.json)")
    parser.add_argument("--workers", type=int, default=2, help="processes measuring in parallel")
    parser.add_argument("--max-episode-steps", type=int, default=None,
                        help="cut episodes at this many steps and store the result beside the full baseline: the "
                        "reference of evaluations cut the same way (--eval.max-episode-steps)")
    parser.set_defaults(run=_run_baselines)


def _run_baselines(args: argparse.Namespace) -> int:
    from generalist.envs import task_list
    from generalist.envs.baselines import BASELINES_PATH, BaselineConfig, format_table, run_baselines
    from generalist.envs.external import is_external

    tasks = task_list(args.tasks)
    if args.out is None and any(is_external(task) for task in tasks):
        raise ValueError("gym: and minari: tasks are measured into a file of your own (--out FILE), not into the "
                         "package's baselines; normalize their scores with evaluate's --reference-min/--reference-max")
    out = Path(args.out) if args.out else BASELINES_PATH
    data = run_baselines(BaselineConfig(tasks, args.episodes, args.seed, out, args.workers, args.max_episode_steps))
    print(format_table(data))
    return 0


def _add_inspect(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show how a dataset's or an env's spaces become tokens, before training on it",
        description="DATA is minari:<dataset id> (a local Minari dataset), gym:<env id> (an env registered in this "
        "Python environment; gym:<module>:<env id> imports its module), or a directory recorded by `generalist "
        "collect`. Prints each part of the observation space and what it becomes (continuous, discrete, image, "
        "text), the action space, and the episodes.",
    )
    parser.add_argument("data", help="minari:<dataset id>, gym:<env id>, or a recorded dataset directory")
    parser.set_defaults(run=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from generalist.envs.external import GYM_PREFIX, MINARI_PREFIX

    if args.data.startswith(MINARI_PREFIX):
        from generalist.datasets.minari_source import MinariEpisodes

        print(MinariEpisodes(args.data[len(MINARI_PREFIX):]).describe())
        return 0
    if args.data.startswith(GYM_PREFIX):
        import gymnasium as gym

        from generalist.envs import get_task
        from generalist.envs.spaces import observation_mapping

        task = get_task(args.data)
        env = gym.make(task.env_id)
        try:
            print(f"{args.data}: step cap {task.max_episode_steps}, no recorded episodes\nobservations:")
            print("\n".join(f"  {line}" for line in observation_mapping(env.observation_space).describe().splitlines()))
            kind = f"{task.action_size} {task.action_kind}" + (" actions" if task.action_kind == "discrete" else
                                                                " values, rescaled to [-1, 1]")
            print(f"actions: {env.action_space} -> {kind}")
        finally:
            env.close()
        return 0
    from generalist.datasets.storage import EpisodeDataset

    data = EpisodeDataset(args.data, allow_incomplete=True)
    print(f"{data.task}: {len(data)} episodes, {data.num_steps} steps ({args.data})")
    print("observations:\n" + "\n".join(f"  {key}: {spec.dtype} {spec.shape}" for key, spec in
                                         data.observation_specs.items()))
    print(f"actions: {data.action_spec.size} {data.action_spec.kind}"
          + (f" of {data.action_spec.n} values" if data.action_spec.kind == "discrete" else " in [-1, 1]"))
    return 0


def _add_export_minari(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-minari",
        help="write a dataset recorded by `generalist collect` as a local Minari dataset",
        description="Lossless: observations in the observation contract's Dict space, actions in the agent's space, "
        "rewards, terminations, truncations and every episode's seed. Each episode is replayed from its seed to "
        "recover the observation it ended on (our recordings do not store it); a replay that differs from the "
        "recording stops the export, naming the episode and the step. Written under MINARI_DATASETS_PATH "
        "(default ~/.minari/datasets).",
    )
    parser.add_argument("data", help="a recorded dataset directory, such as data/cartpole")
    parser.add_argument("--id", required=True, dest="dataset_id",
                        help="the new dataset's id, (namespace/)name-v<version>, such as generalist/cartpole-v0")
    parser.set_defaults(run=_run_export_minari)


def _run_export_minari(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from generalist.datasets.minari_source import export_to_minari
    from generalist.datasets.storage import EpisodeDataset

    with tqdm(total=len(EpisodeDataset(args.data)), unit="episode", desc="replaying") as bar:
        dataset = export_to_minari(args.data, args.dataset_id, progress=lambda _: bar.update())
    print(f"wrote Minari dataset {args.dataset_id}: {dataset.total_episodes} episodes, {dataset.total_steps} steps "
          f"({dataset.storage.data_path})")
    return 0


def _add_bf16_alias(parser: argparse.ArgumentParser, dest: str) -> None:
    # The old flag, from before the precision was chosen by the machine.
    parser.add_argument("--bf16", dest=dest, action="store_const", const="bf16",
                        help="the same as --precision bf16 (the default, auto, picks bf16 where it is faster)")


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the generalist offline on the task mixture (one process, or many under torchrun)",
        description="Train on recorded episodes, captions and text. Under `torchrun --nproc_per_node N -m "
        "generalist.cli train ...` it runs DistributedDataParallel. Every field of the training config is a flag; "
        "--eval.* set the evaluations during training (--eval-every).",
    )
    parser.add_argument("--config", default=None, help="JSON file of training settings; flags override it")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint, exactly"
    )
    add_arguments(parser, TrainConfig)
    add_arguments(parser, EvalConfig, prefix="eval.", short_names=False)
    _add_bf16_alias(parser, "precision")
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import os

    from generalist.train import train

    base = load_json(TrainConfig, args.config) if args.config else None
    eval_config = from_arguments(EvalConfig, args, prefix="eval.")
    checkpoint = train(from_arguments(TrainConfig, args, base), resume=args.resume, eval_config=eval_config)
    if os.environ.get("RANK", "0") == "0":
        print(f"checkpoint: {checkpoint}")
    return 0


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="roll out a checkpoint in its tasks' environments and print the score table",
        description="Prompt-conditioned rollouts (a recorded expert demonstration opens each episode's context) "
        "over a vector of environments; raw, expert-normalized and (Atari) human-normalized scores.",
    )
    parser.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)
    parser.add_argument("--tasks", default="all", help="comma-separated task names, or all")
    add_arguments(parser, EvalConfig)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--video", default=None, help="also write one episode per task as DIR/<task>.gif")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from generalist.checkpoint import demonstrations_dir, load_model
    from generalist.envs import task_list
    from generalist.evaluate import evaluate, format_table, record_video, results_json
    from generalist.precision import resolve_device
    from generalist.pretrained import default_checkpoint

    tasks = task_list(args.tasks)
    checkpoint = args.checkpoint or default_checkpoint()
    config, demonstrations = from_arguments(EvalConfig, args), demonstrations_dir(checkpoint)
    if config.episodes < 1 or config.num_envs < 1 or config.seed < 0:
        raise ValueError(f"--episodes and --num-envs must be at least 1 and --seed not negative; got "
                         f"{config.episodes}, {config.num_envs} and {config.seed}")
    config.reference_scores()  # one reference score without the other is refused before any env starts
    for flag, value in (("--json", args.json), ("--video", args.video)):  # checked before the evaluation runs
        if value is not None and Path(value).exists() and (Path(value).is_dir() == (flag == "--json")):
            raise ValueError(f"{flag} {value}: expected {'a file' if flag == '--json' else 'a directory'}")
    model, tokenizer = load_model(checkpoint, resolve_device(config.device))
    results = evaluate(model, tasks, config, demonstrations, tokenizer)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(results_json(results) + "\n")
    if args.video:
        Path(args.video).mkdir(parents=True, exist_ok=True)
        for task in tasks:
            path = Path(args.video) / f"{task}.gif"
            episode_return = record_video(model, task, path, config, demonstrations)
            print(f"wrote {path} (return {episode_return:g})")
    failed = [r.task for r in results if r.error is not None]
    if failed and len(failed) == len(results):
        print(f"generalist evaluate: every task failed ({', '.join(failed)})", file=sys.stderr)
        return 1
    return 0


DIAGNOSIS_DEFAULTS = EvalConfig(episodes=3, seed=DIAGNOSIS_SEED)
"""On-policy episodes of a diagnosis: few, on seeds of their own."""


def _add_diagnose(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diagnose",
        help="does a control policy read its observations or copy its last action? (behaviour-cloning diagnosis)",
        description="Per task: teacher-forced action accuracy on recorded episodes with the true and with a "
        "shuffled action history, the agent's agreement with the expert on the states the agent visits, and how "
        "often agent and expert repeat their previous action (see generalist/diagnose.py). --data-dir holds the "
        "recorded episodes, also the prompts (default: the checkpoint's demonstrations, else data).",
    )
    parser.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)
    parser.add_argument("--tasks", required=True, help="comma-separated control task names, or all")
    add_arguments(parser, EvalConfig, base=DIAGNOSIS_DEFAULTS)
    parser.add_argument("--no-prompt", dest="prompt", action="store_const", const="none",
                        help="the same as --prompt none")
    parser.add_argument("--windows", type=int, default=8,
                        help="recorded episodes whose middle window the teacher-forced figures read (default: 8; "
                        "more windows, more decisive steps: the count is printed under the table)")
    parser.add_argument("--window-steps", type=int, default=None,
                        help="timesteps per teacher-forced window (default: as many as the model's context holds); "
                        "the same value scores models of different contexts on the same steps")
    parser.set_defaults(run=_run_diagnose)


def _run_diagnose(args: argparse.Namespace) -> int:
    from generalist.checkpoint import demonstrations_dir, load_model
    from generalist.diagnose import DIAGNOSIS_HEADER, diagnose, format_diagnosis
    from generalist.envs import task_list
    from generalist.precision import resolve_device
    from generalist.pretrained import default_checkpoint

    tasks = task_list(args.tasks)
    checkpoint = args.checkpoint or default_checkpoint()
    config, demonstrations = from_arguments(EvalConfig, args, DIAGNOSIS_DEFAULTS), demonstrations_dir(checkpoint)
    model, _ = load_model(checkpoint, resolve_device(config.device))
    print(DIAGNOSIS_HEADER, flush=True)
    counts = []
    for task in tasks:  # a row as soon as it is measured: a task's rollouts take a while
        row = diagnose(model, task, config, demonstrations, windows=args.windows, window_steps=args.window_steps)
        print(format_diagnosis(row), flush=True)
        counts.append(f"{task} {row.decisive_steps}")
    print(f"\ndecisive steps in the {args.windows} recorded windows: {', '.join(counts)}", flush=True)
    return 0


def _add_caption(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("caption", help="caption image files with a checkpoint")
    parser.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)
    parser.add_argument("--size", type=int, default=None,
                        help="images are centre-cropped and resized to this (default: the size of the scenes the "
                        "checkpoint was trained on, 64 or 48)")
    _add_hardware_flags(parser)
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.set_defaults(run=_run_caption)


def _run_caption(args: argparse.Namespace) -> int:
    from generalist.checkpoint import load_model, trained_scene_size
    from generalist.datasets.captions import read_image
    from generalist.evaluate import caption_images
    from generalist.precision import resolve_device, resolve_precision
    from generalist.pretrained import default_checkpoint

    checkpoint = args.checkpoint or default_checkpoint()
    size = args.size if args.size is not None else trained_scene_size(checkpoint)
    images = [read_image(path, size) for path in args.images]  # every file checked before the model loads
    device = resolve_device(args.device)
    model, tokenizer = load_model(checkpoint, device)
    with resolve_precision(args.precision, device).autocast(device.type):
        captions = caption_images(model, tokenizer, images)
    for path, caption in zip(args.images, captions, strict=True):
        print(f"{path}: {caption}")
    return 0


def _add_chat(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat", help="talk with a checkpoint (interactive, or lines piped on stdin)",
        description="Each line you type is a user turn; the model answers with the whole conversation as context. "
        "End with Ctrl-D (or the end of piped input).",
    )
    parser.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)
    parser.add_argument("--temperature", type=float, default=CHAT_TEMPERATURE,
                        help="0 answers greedily; above 0 samples")
    parser.add_argument("--top-k", type=int, default=CHAT_TOP_K,
                        help="with --temperature above 0, sample from the K most likely pieces only (0: all)")
    parser.add_argument("--seed", type=int, default=CHAT_SEED,
                        help="seed of the sampled replies (same seed, same replies)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest reply, in tokens")
    _add_hardware_flags(parser)
    parser.add_argument("--perplexity", action="store_true",
                        help="print the perplexity per text token and per word over the held-out conversations of "
                        "both dialogue corpora (chatterbot, chitchat), then exit")
    parser.add_argument("--prompts", action="store_true",
                        help="answer the 20 fixed chat prompts (each a new conversation) and check the replies: the "
                        "share of their words that are words of the training corpora, the longest runs of one word "
                        "and of one phrase")
    parser.set_defaults(run=_run_chat)


def _run_chat(args: argparse.Namespace) -> int:
    import torch

    from generalist.checkpoint import load_model
    from generalist.datasets.text import CHAT_PROMPTS, chitchat_split, corpus_vocabulary, heldout_conversations
    from generalist.evaluate import chat_perplexities, chat_reply, reply_checks
    from generalist.precision import resolve_device, resolve_precision
    from generalist.pretrained import default_checkpoint

    device = resolve_device(args.device)
    model, tokenizer = load_model(args.checkpoint or default_checkpoint(), device)
    precision = resolve_precision(args.precision, device)
    if not 1 <= args.max_new_tokens < model.config.context:
        raise ValueError(f"--max-new-tokens must lie in 1..{model.config.context - 1}: the context of "
                         f"{model.config.context} tokens also holds the conversation")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ValueError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise ValueError(f"--top-k must be at least 0 (0: all pieces), got {args.top_k}")
    generator = torch.Generator(device).manual_seed(args.seed)
    sampling = {"temperature": args.temperature, "top_k": args.top_k or None, "generator": generator}
    if args.perplexity:
        for corpus, heldout in (("chatterbot", heldout_conversations()), ("chitchat", chitchat_split()[1])):
            with precision.autocast(device.type):
                scores = chat_perplexities(model, tokenizer, heldout)
            print(f"held-out {corpus} perplexity: {scores.per_token:.2f} per token, {scores.per_word:.2f} per word "
                  f"({len(heldout)} conversations, {scores.tokens} tokens, {scores.words} words)")
        return 0
    if args.prompts:
        replies = []
        for prompt in CHAT_PROMPTS:
            with precision.autocast(device.type):
                replies.append(chat_reply(model, tokenizer, [prompt], args.max_new_tokens, **sampling))
            print(f"user> {prompt}\nassistant> {replies[-1]}", flush=True)
        checks = reply_checks(replies, corpus_vocabulary())
        print(f"words of the training corpora: {checks.known_words:.1%}; longest run of one word: "
              f"{checks.longest_word_run}; of one phrase: {checks.longest_phrase_run}")
        return 0
    history: list[str] = []
    for line in _typed_lines(sys.stdin.isatty()):
        if isinstance(line, UnicodeDecodeError):
            print(f"generalist chat: that line is not UTF-8 ({line.reason} at byte {line.start}); type it again",
                  file=sys.stderr, flush=True)
            continue
        if not line.strip():
            continue
        history.append(line.strip())
        with precision.autocast(device.type):
            reply = chat_reply(model, tokenizer, history, args.max_new_tokens, **sampling)
        history.append(reply)
        print(f"assistant> {reply}", flush=True)
    return 0


def _typed_lines(interactive: bool) -> Iterator[str | UnicodeDecodeError]:
    """The user's lines: typed at a prompt, or piped; a line that is not UTF-8 comes as its decoding error."""
    if interactive:
        while True:
            try:
                yield input("you> ")
            except EOFError:
                return
            except UnicodeDecodeError as error:
                yield error
    else:
        # Line by line from the bytes: one undecodable line must not take the buffered lines after it along.
        for raw in sys.stdin.buffer:
            try:
                yield raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                yield error


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a checkpoint for shipping: bf16 weights plus demonstrations of its tasks",
        description="Writes the model (bf16 by default), its config and text model, and the ends of a few recorded "
        "expert episodes of each control task as demonstrations/<task>/, so that `generalist evaluate` can "
        "prompt the model without recorded data.",
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a run directory")
    parser.add_argument("--out", required=True, help="a new directory")
    parser.add_argument("--data-dir", default="data", help="where the recorded episodes are")
    parser.add_argument("--tasks", default=None, help="control tasks to keep demonstrations of (default: trained)")
    parser.add_argument("--episodes", type=int, default=4, help="demonstration episodes per task")
    parser.add_argument("--steps", type=int, default=None,
                        help="last timesteps kept of each (default: as many as an evaluation prompt holds)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="weight precision")
    parser.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    import torch

    from generalist.envs import task_list
    from generalist.pretrained import export_checkpoint

    tasks = task_list(args.tasks) if args.tasks else None
    out = export_checkpoint(args.checkpoint, args.out, args.data_dir, tasks, args.episodes, args.steps,
                            getattr(torch, args.dtype))
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB)")
    return 0


RUN_DERIVED = ("train.run_dir", "train.checkpoint_every", "train.checkpoint_minutes", "train.keep_checkpoints",
               "train.log_every")
"""Training settings a run derives (its directory, checkpoints spaced for the learning curves): not flags of run."""


def _add_run(subparsers: argparse._SubParsersAction) -> None:
    presets = "; ".join(f"{name}: {function.__doc__}" for name, function in RUN_PRESETS.items())
    parser = subparsers.add_parser(
        "run",
        help="the whole pipeline: record missing data, train for a time budget, evaluate every task, write a report",
        description="Records the preset's datasets if they are missing, trains (the learning-rate schedule spans "
        "the time budget), evaluates every control task with demonstration prompts, captions "
        "held-out scenes and real images, measures chat perplexity, and writes <runs-dir>/<name>/report.md with "
        "plots. Run it again to resume an interrupted run. Settings start from the preset (defaults shown are the "
        "cpu preset's) and flags override them; --train.*, --eval.*, --record.*, --report.* name the parts of the "
        "config, and a setting whose name occurs once may be given bare (--steps, --weights). Presets: "
        + presets,
    )
    add_arguments(parser, RunConfig, base=cpu(), exclude=RUN_DERIVED, aliases={"train.data_dir": "data-dir"})
    _add_bf16_alias(parser, "train.precision")
    parser.set_defaults(run=_run_run)


def _run_run(args: argparse.Namespace) -> int:
    from generalist.pipeline import run_pipeline

    run_pipeline(from_arguments(RunConfig, args, run_preset(args.preset or "cpu")))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `generalist` command."""
    parser = argparse.ArgumentParser(prog="generalist", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_tokenize(subparsers)
    _add_tokenizer(subparsers)
    _add_collect(subparsers)
    _add_baselines(subparsers)
    _add_inspect(subparsers)
    _add_export_minari(subparsers)
    _add_train(subparsers)
    _add_evaluate(subparsers)
    _add_diagnose(subparsers)
    _add_caption(subparsers)
    _add_chat(subparsers)
    _add_run(subparsers)
    _add_export(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `generalist` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from generalist.precision import denormals_flushed  # here: `--help` and bad flags need no torch

    try:
        with denormals_flushed():
            return args.run(args)
    except (ValueError, OSError) as error:
        # Bad input (a value, a path that is a file or a loop) or a machine that refused (a full disk): one line,
        # not a traceback.
        message = " ".join(str(error).split()) or type(error).__name__
        parser.exit(2, f"generalist {args.command}: error: {message}\n")
    except KeyboardInterrupt as stopped:
        # Training says where it saved its last step (TrainingInterrupted); anything else was just interrupted.
        parser.exit(130, f"generalist {args.command}: {stopped or 'interrupted'}\n")


if __name__ == "__main__":
    sys.exit(main())
