"""Text to ids 0..V-1 and back, by a SentencePiece model.

The model is trained so that any Unicode string survives `decode(encode(s)) == s` exactly:
- byte fallback: a character outside the vocabulary becomes its UTF-8 bytes (256 byte pieces);
- identity normalization, no extra-whitespace removal and no dummy prefix, so no character is rewritten;
- SentencePiece writes spaces as U+2581 ("▁") and would decode a literal U+2581 of the input as a space, so
  `encode` writes each literal U+2581 as its three UTF-8 byte pieces, which decode back to U+2581.

Special ids: pad 0, unk 1, bos 2, eos 3 (all inside 0..V-1, as the token layout expects).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt
import sentencepiece as spm

from generalist.atomic import write_atomically

_META_SPACE = "\u2581"
DEFAULT_MODEL = "text.model"


def _check_encodable(text: str) -> None:
    """Refuse a string that is not Unicode text (lone surrogates: bytes that were not UTF-8, as Python keeps them
    from a command line), which SentencePiece would reject with a C++ error."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"text: not valid UTF-8 at character {error.start} (bytes that were not UTF-8?)") from error


@dataclass(frozen=True)
class TextTokenizerConfig:
    """How a SentencePiece model is trained."""

    vocab_size: int = 3072
    """Text vocabulary V: ids 0..V-1; every other token range of the layout starts after it. 3072 is the largest
    size at which 90% of the learned pieces occur at least 5 times in the shipped corpus (measured in
    docs/BENCHMARKS.md, "Text tokenizer"); larger ones learn pieces seen once or twice."""
    model_type: str = "unigram"
    """SentencePiece algorithm: "unigram" or "bpe"."""
    character_coverage: float = 0.9995
    """Share of characters given their own piece; the rarest rest fall back to bytes."""
    max_sentence_length: int = 16384
    """Longest input line, in bytes, used for training."""
    seed_sentencepiece_size: int = 200_000
    """Unigram: number of seed pieces before pruning."""
    user_defined_symbols: tuple[str, ...] = ()
    """Strings that are always one token (chat markers), never split."""


class TextTokenizer:
    """A loaded SentencePiece model: encode strings to id arrays, decode id arrays to strings."""

    def __init__(self, model_proto: bytes) -> None:
        self._processor = spm.SentencePieceProcessor(model_proto=model_proto)
        self._model_proto = model_proto
        self._meta_space_bytes = np.array(
            [self._processor.piece_to_id(f"<0x{b:02X}>") for b in _META_SPACE.encode()], dtype=np.int64
        )
        if (self._meta_space_bytes == self._processor.unk_id()).any():
            raise ValueError("the SentencePiece model has no byte pieces: train it with byte_fallback=True")

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        """Load a `.model` file written by `train_text_tokenizer` or `save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no SentencePiece model at {path}")
        try:
            return cls(path.read_bytes())
        except RuntimeError as error:
            raise ValueError(f"{path}: not a valid SentencePiece model ({error})") from error

    @classmethod
    def default(cls) -> TextTokenizer:
        """The model shipped inside the package."""
        return cls(resources.files("generalist.tokenizers").joinpath("assets", DEFAULT_MODEL).read_bytes())

    def save(self, path: str | Path) -> None:
        """Write the serialized model to `path`, whole or not at all (through a partial file and a rename)."""
        write_atomically(path, lambda partial: partial.write_bytes(self._model_proto))

    @property
    def vocab_size(self) -> int:
        """V: the number of text ids."""
        return self._processor.get_piece_size()

    @property
    def pad_id(self) -> int:
        """Padding id."""
        return self._processor.pad_id()

    @property
    def bos_id(self) -> int:
        """Beginning-of-sequence id."""
        return self._processor.bos_id()

    @property
    def eos_id(self) -> int:
        """End-of-sequence id."""
        return self._processor.eos_id()

    def encode(self, text: str) -> np.ndarray:
        """One string to its ids (int64), exactly reversible by `decode`."""
        if not isinstance(text, str):
            raise ValueError(f"text: expected a str, got {type(text).__name__}")
        _check_encodable(text)
        parts = text.split(_META_SPACE)
        if len(parts) == 1:
            return np.asarray(self._processor.encode(text), dtype=np.int64)
        encoded = self._processor.encode(parts)
        pieces: list[np.ndarray] = []
        for i, part_ids in enumerate(encoded):
            if i:
                pieces.append(self._meta_space_bytes)
            pieces.append(np.asarray(part_ids, dtype=np.int64))
        return np.concatenate(pieces)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Many strings at once (SentencePiece's batched call), each as `encode` would."""
        for text in texts:
            _check_encodable(text)
        if any(_META_SPACE in text for text in texts):
            return [self.encode(text) for text in texts]
        return [np.asarray(ids, dtype=np.int64) for ids in self._processor.encode(list(texts))]

    def decode(self, ids: npt.ArrayLike) -> str:
        """Ids 0..V-1 back to the string."""
        array = np.asarray(ids)
        if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"text ids: expected a 1-D integer array, got shape {array.shape} {array.dtype}")
        if array.size and (array.min() < 0 or array.max() >= self.vocab_size):
            raise ValueError(f"text ids must lie in 0..{self.vocab_size - 1}, got {array.min()}..{array.max()}")
        return self._processor.decode(array.tolist())

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary piece of one id (for display)."""
        return self._processor.id_to_piece(int(token_id))


def train_text_tokenizer(
    lines: Iterable[str], config: TextTokenizerConfig | None = None, out: str | Path | None = None
) -> TextTokenizer:
    """Train a SentencePiece model on lines of text; write it to `out` if given."""
    config = config or TextTokenizerConfig()
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise ValueError("cannot train a text tokenizer on an empty corpus")
    model = io.BytesIO()
    options = asdict(config)
    options["user_defined_symbols"] = list(config.user_defined_symbols)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            split_digits=True,
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            num_threads=2,
            minloglevel=2,
            **options,
        )
    except RuntimeError as error:
        # SentencePiece's own message says how large a vocabulary the corpus supports.
        raise ValueError(f"SentencePiece training failed: {error}") from error
    tokenizer = TextTokenizer(model.getvalue())
    if out is not None:
        tokenizer.save(out)
    return tokenizer


def read_text_files(paths: Iterable[str | Path]) -> list[str]:
    """The lines of UTF-8 text files, for `train_text_tokenizer`."""
    lines: list[str] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no text file at {path}")
        lines.extend(path.read_text(encoding="utf-8").splitlines())
    return lines
