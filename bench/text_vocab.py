"""How large a text vocabulary the shipped corpus supports: piece frequencies and held-out compression per size.

Run from the repository root: `python -m bench.text_vocab`. For each vocabulary size it trains a SentencePiece
model on the tokenizer corpus and reports how often the learned pieces (not bytes or specials) occur in that
corpus, and the characters per token on the held-out dialogues.
"""

from __future__ import annotations

import argparse

import numpy as np

from generalist.datasets.text import (
    CHAT_MARKERS,
    TOKENIZER_CORPORA,
    chatterbot_conversations,
    chitchat_split,
    format_chat,
    split_conversations,
    tokenizer_lines,
)
from generalist.tokenizers.text import TextTokenizerConfig, train_text_tokenizer


def main() -> None:
    """Print one markdown row per vocabulary size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 3072, 4096, 5120, 6144])
    parser.add_argument("--corpus", choices=TOKENIZER_CORPORA, default="shipped",
                        help="shipped: held-out chatterbot dialogues; chitchat: plus the chit-chat train split, "
                        "measured on the held-out chit-chat conversations")
    args = parser.parse_args()
    lines = tokenizer_lines(args.corpus)
    if args.corpus == "chitchat":
        heldout = chitchat_split()[1]
    else:
        _, heldout = split_conversations(chatterbot_conversations())
    heldout_text = [format_chat(c) for c in heldout]
    print(f"corpus: {len(lines):,} lines, {sum(map(len, lines)):,} characters\n")
    print("| V | learned pieces | seen >= 5 times | seen >= 10 times | held-out chars/token |")
    print("| --- | --- | --- | --- | --- |")
    for size in args.sizes:
        config = TextTokenizerConfig(vocab_size=size, user_defined_symbols=CHAT_MARKERS)
        tokenizer = train_text_tokenizer(lines, config)
        counts = np.bincount(np.concatenate(tokenizer.encode_batch(lines)), minlength=size)
        learned = np.array([not tokenizer.id_to_piece(i).startswith("<") for i in range(size)])
        used = counts[learned]
        chars_per_token = sum(map(len, heldout_text)) / sum(len(ids) for ids in tokenizer.encode_batch(heldout_text))
        print(
            f"| {size} | {learned.sum()} | {(used >= 5).mean():.1%} | {(used >= 10).mean():.1%} "
            f"| {chars_per_token:.2f} |"
        )


if __name__ == "__main__":
    main()
