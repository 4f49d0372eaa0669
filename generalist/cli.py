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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `generalist` command."""
    parser = argparse.ArgumentParser(prog="generalist", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_tokenize(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `generalist` console script."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
