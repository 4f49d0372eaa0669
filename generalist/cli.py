"""The `generalist` command line: thin commands over the library.

Each command is a `_add_<name>(subparsers)` function that declares its arguments and a `_run_<name>(args)`
function of a few lines that calls the library. Imports happen inside these functions, so that a command
loads only what it uses (`train` builds its flags from the training config, which imports torch).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


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
    from generalist.tokenizers.demo import run_demo

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
    train.set_defaults(run=_run_tokenizer_train)


def _run_tokenizer_train(args: argparse.Namespace) -> int:
    from generalist.datasets.text import CHAT_MARKERS, tokenizer_corpus
    from generalist.tokenizers.text import TextTokenizerConfig, read_text_files, train_text_tokenizer

    lines = read_text_files(args.inputs) if args.inputs else tokenizer_corpus()
    config = TextTokenizerConfig(
        vocab_size=args.vocab_size, model_type=args.model_type, user_defined_symbols=CHAT_MARKERS
    )
    tokenizer = train_text_tokenizer(lines, config, out=args.out)
    print(f"wrote {args.out}: vocabulary {tokenizer.vocab_size}, trained on {len(lines)} lines")
    return 0


def _add_collect(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="record expert episodes, one memory-mapped dataset per task",
        description="Run each task's scripted expert and write its episodes to OUT/<task>. Writes are atomic: "
        "a rerun resumes an interrupted dataset at the next seed and skips a finished one.",
    )
    parser.add_argument("--tasks", default="cartpole", help="comma-separated task names, e.g. cartpole,pong")
    parser.add_argument("--episodes", type=int, default=200, help="episodes to keep per task")
    parser.add_argument("--out", default="data", help="parent directory of the per-task datasets")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode; episode i plays seed+i")
    parser.add_argument(
        "--min-return-fraction",
        type=float,
        default=None,
        help="keep episodes whose expert-normalized score is at least this (Gato: 0.8; needs baselines.json)",
    )
    parser.add_argument(
        "--max-episode-steps",
        type=int,
        default=None,
        help="cut episodes at this many steps instead of the task's cap (Pong experts play ~25,000 steps a game)",
    )
    parser.add_argument(
        "--noise", type=float, default=0.0,
        help="probability that a step executes a random action while the expert's is recorded (DART; "
        "shows the expert recovering from mistakes; record into its own --out)",
    )
    parser.add_argument(
        "--shard-episodes", type=int, default=50, help="episodes per shard at most: what an interrupted run can lose"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_collect)


def _run_collect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from generalist.datasets.recording import CollectConfig, collect
    from generalist.envs import task_list

    config = CollectConfig(
        task_list(args.tasks), args.episodes, Path(args.out), args.seed, args.min_return_fraction,
        max_episode_steps=args.max_episode_steps, noise=args.noise, shard_episodes=args.shard_episodes,
        progress=not args.no_progress,
    )
    for directory in collect(config):
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
    parser.set_defaults(run=_run_baselines)


def _run_baselines(args: argparse.Namespace) -> int:
    from pathlib import Path

    from generalist.envs import task_list
    from generalist.envs.baselines import BASELINES_PATH, BaselineConfig, format_table, run_baselines

    out = Path(args.out) if args.out else BASELINES_PATH
    data = run_baselines(BaselineConfig(task_list(args.tasks), args.episodes, args.seed, out, args.workers))
    print(format_table(data))
    return 0


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    from generalist.config import add_arguments
    from generalist.train import TrainConfig

    parser = subparsers.add_parser(
        "train",
        help="train the generalist offline on the task mixture (one process, or many under torchrun)",
        description="Train on recorded episodes, captions and text. Under `torchrun --nproc_per_node N -m "
        "generalist.cli train ...` it runs DistributedDataParallel. Every field of the training config is a flag.",
    )
    parser.add_argument("--config", default=None, help="JSON file of training settings; flags override it")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint, exactly"
    )
    add_arguments(parser, TrainConfig)
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import os

    from generalist.config import from_arguments, load_json
    from generalist.train import TrainConfig, train

    base = load_json(TrainConfig, args.config) if args.config else None
    checkpoint = train(from_arguments(TrainConfig, args, base), resume=args.resume)
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
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint or run directory (default: the checkpoint shipped in the package)")
    parser.add_argument("--tasks", default="all", help="comma-separated task names, or all")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task")
    parser.add_argument("--seed", type=int, default=None, help="first evaluation seed (default: 5,000,000)")
    parser.add_argument("--prompt", choices=["demonstration", "none"], default="demonstration",
                        help="open each episode with a recorded demonstration, or with nothing")
    parser.add_argument("--data-dir", default=None,
                        help="where the recorded demonstrations are (default: the checkpoint's own, else data)")
    parser.add_argument("--num-envs", type=int, default=8, help="environments stepped together per task")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 acts greedily; above 0 samples")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--video", default=None, help="also write one episode per task as DIR/<task>.gif")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from generalist.envs import task_list
    from generalist.evaluate import DEFAULT_SEED, evaluate, format_table, load_model, record_video, results_json
    from generalist.pretrained import default_checkpoint, demonstrations_dir

    tasks = task_list(args.tasks)
    checkpoint = args.checkpoint or default_checkpoint()
    model, _ = load_model(checkpoint)
    seed = DEFAULT_SEED if args.seed is None else args.seed
    data_dirs = {task: demonstrations_dir(checkpoint, args.data_dir, task) for task in tasks}
    results = [
        result
        for task in tasks
        for result in evaluate(model, [task], args.episodes, seed, args.prompt, data_dirs[task], args.num_envs,
                               args.temperature)
    ]
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(results_json(results) + "\n")
    if args.video:
        Path(args.video).mkdir(parents=True, exist_ok=True)
        for task in tasks:
            path = Path(args.video) / f"{task}.gif"
            episode_return = record_video(model, task, path, seed, args.prompt, data_dirs[task])
            print(f"wrote {path} (return {episode_return:g})")
    return 0


def _add_diagnose(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diagnose",
        help="does a control policy read its observations or copy its last action? (behaviour-cloning diagnosis)",
        description="Per task: teacher-forced action accuracy on recorded episodes with the true and with a "
        "shuffled action history, the agent's agreement with the expert on the states the agent visits, and how "
        "often agent and expert repeat their previous action (see generalist/diagnose.py).",
    )
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint or run directory (default: the checkpoint shipped in the package)")
    parser.add_argument("--tasks", required=True, help="comma-separated control task names, or all")
    parser.add_argument("--episodes", type=int, default=3, help="on-policy episodes per task")
    parser.add_argument("--data-dir", default=None,
                        help="recorded episodes of the tasks, also the prompts (default: the checkpoint's "
                        "demonstrations, else data)")
    parser.add_argument("--no-prompt", action="store_true", help="act without a demonstration prompt")
    parser.set_defaults(run=_run_diagnose)


def _run_diagnose(args: argparse.Namespace) -> int:
    from generalist.diagnose import DIAGNOSIS_HEADER, diagnose, format_diagnosis
    from generalist.envs import task_list
    from generalist.evaluate import load_model
    from generalist.pretrained import default_checkpoint, demonstrations_dir

    tasks = task_list(args.tasks)
    checkpoint = args.checkpoint or default_checkpoint()
    model, _ = load_model(checkpoint)
    print(DIAGNOSIS_HEADER, flush=True)
    for task in tasks:  # a row as soon as it is measured: a task's rollouts take a while
        data_dir = demonstrations_dir(checkpoint, args.data_dir, task)
        print(format_diagnosis(diagnose(model, task, data_dir, args.episodes, prompt=not args.no_prompt)),
              flush=True)
    return 0


def _add_caption(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("caption", help="caption image files with a checkpoint")
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint or run directory (default: the checkpoint shipped in the package)")
    parser.add_argument("--size", type=int, default=64, help="images are centre-cropped and resized to this")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.set_defaults(run=_run_caption)


def _run_caption(args: argparse.Namespace) -> int:
    from generalist.datasets.captions import read_image
    from generalist.evaluate import caption_images, load_model
    from generalist.pretrained import default_checkpoint

    images = [read_image(path, args.size) for path in args.images]  # every file checked before the model loads
    model, tokenizer = load_model(args.checkpoint or default_checkpoint())
    for path, caption in zip(args.images, caption_images(model, tokenizer, images), strict=True):
        print(f"{path}: {caption}")
    return 0


def _add_chat(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat", help="talk with a checkpoint (interactive, or lines piped on stdin)",
        description="Each line you type is a user turn; the model answers with the whole conversation as context. "
        "End with Ctrl-D (or the end of piped input).",
    )
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint or run directory (default: the checkpoint shipped in the package)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 answers greedily; above 0 samples")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest reply, in tokens")
    parser.add_argument("--perplexity", action="store_true",
                        help="print the perplexity per text token over the held-out conversations, then exit")
    parser.set_defaults(run=_run_chat)


def _run_chat(args: argparse.Namespace) -> int:
    import sys

    from generalist.datasets.text import heldout_conversations
    from generalist.evaluate import chat_perplexity, chat_reply, load_model
    from generalist.pretrained import default_checkpoint

    model, tokenizer = load_model(args.checkpoint or default_checkpoint())
    if args.perplexity:
        heldout = heldout_conversations()
        print(f"held-out perplexity: {chat_perplexity(model, tokenizer, heldout):.2f} ({len(heldout)} conversations)")
        return 0
    interactive = sys.stdin.isatty()
    history: list[str] = []
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            return 0
        if not line.strip():
            continue
        history.append(line.strip())
        reply = chat_reply(model, tokenizer, history, args.max_new_tokens, args.temperature)
        history.append(reply)
        print(f"assistant> {reply}", flush=True)


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


def _add_run(subparsers: argparse._SubParsersAction) -> None:
    from generalist.config import add_arguments
    from generalist.pipeline import PRESETS, RunConfig

    presets = "; ".join(
        f"{name}: {p.model}, {len(p.weights)} tasks, {p.minutes:g} min" for name, p in PRESETS.items()
    )
    parser = subparsers.add_parser(
        "run",
        help="the whole pipeline: record missing data, train for a time budget, evaluate every task, write a report",
        description="Records the preset's datasets if they are missing, trains (the learning-rate schedule spans "
        "the time budget), evaluates every control task with demonstration prompts, captions "
        "held-out scenes and real images, measures chat perplexity, and writes <runs-dir>/<name>/report.md with "
        "plots. Run it again to resume an interrupted run. Presets: " + presets + ".",
    )
    add_arguments(parser, RunConfig)
    parser.set_defaults(run=_run_run)


def _run_run(args: argparse.Namespace) -> int:
    from generalist.config import from_arguments
    from generalist.pipeline import RunConfig, run_pipeline

    run_pipeline(from_arguments(RunConfig, args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `generalist` command."""
    parser = argparse.ArgumentParser(prog="generalist", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_tokenize(subparsers)
    _add_tokenizer(subparsers)
    _add_collect(subparsers)
    _add_baselines(subparsers)
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
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        # Bad input from the user: a one-line message, not a traceback.
        parser.exit(2, f"generalist {args.command}: error: {error}\n")
    except KeyboardInterrupt as stopped:
        # Training says where it saved its last step (TrainingInterrupted); anything else was just interrupted.
        parser.exit(130, f"generalist {args.command}: {stopped or 'interrupted'}\n")


if __name__ == "__main__":
    sys.exit(main())
