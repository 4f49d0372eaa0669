"""Subprocess smoke runs of the `generalist` commands on tiny settings."""

import subprocess
import sys

import pytest

from generalist.datasets.text import python_reference_lines
from generalist.tokenizers.text import TextTokenizer


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "generalist.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_tokenize_prints_the_three_tables():
    result = run_cli("tokenize", "--text", "hi there", "--max-rows", "6")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "CartPole-v1, one timestep" in out and "ALE/Pong-v5" in out and "5x5 = 25 patches" in out
    assert "pole angular velocity" in out and "| separator" in out
    assert "(21 more tokens)" in out  # 25 patches + separator + action, 6 rows shown
    assert "'hi there'" in out and "decodes back exactly: True" in out
    assert out.count("token  kind") == 3


def test_tokenizer_train_writes_a_loadable_model(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(python_reference_lines()[:2000]))
    out = tmp_path / "small.model"
    result = run_cli("tokenizer", "train", str(corpus), "--out", str(out), "--vocab-size", "500")
    assert result.returncode == 0, result.stderr
    assert "vocabulary 500, trained on 2000 lines" in result.stdout
    tokenizer = TextTokenizer.load(out)
    assert tokenizer.vocab_size == 500
    assert tokenizer.id_to_piece(int(tokenizer.encode("<|user|>")[0])) == "<|user|>"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tokenizer", "train", "missing.txt", "--out", "x.model"), "no text file at missing.txt"),
        (("tokenizer", "train", "--out", "x.model", "--vocab-size", "100"), "Vocabulary size"),
    ],
)
def test_bad_input_is_one_line_not_a_traceback(args, message, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "generalist.cli", *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
