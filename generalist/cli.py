"""The `generalist` command line: thin commands over the library.

Each command is a `_add_<name>(subparsers)` function that declares its arguments and a `_run_<name>(args)`
function of a few lines that calls the library. Heavy imports happen inside the `_run_` functions so that
`generalist --help` stays fast.
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `generalist` command."""
    parser = argparse.ArgumentParser(prog="generalist", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_tokenize(subparsers)
    _add_tokenizer(subparsers)
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


if __name__ == "__main__":
    sys.exit(main())
