"""The checkpoint shipped in the package works out of the box: evaluate, caption and chat with no data."""

import json
import re
import subprocess
import sys

import pytest
from PIL import Image

from generalist.datasets.scenes import generate_scene
from generalist.pretrained import PRETRAINED_DIR

pytestmark = pytest.mark.skipif(not (PRETRAINED_DIR / "config.json").is_file(), reason="no checkpoint shipped")


def _generalist(*args, cwd, stdin=None):
    result = subprocess.run([sys.executable, "-m", "generalist.cli", *args], cwd=cwd, input=stdin,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_shipped_task_has_its_demonstrations():
    tasks = sorted(path.name for path in (PRETRAINED_DIR / "demonstrations").iterdir())
    assert len(tasks) == 9 and "pong" in tasks and "cartpole" in tasks


@pytest.mark.slow
def test_evaluate_with_the_shipped_checkpoint_and_no_recorded_data(tmp_path):
    # Run from an empty directory: the demonstrations must come from the package, not from ./data.
    _generalist("evaluate", "--tasks", "mountaincar_continuous", "--episodes", "2", "--num-envs", "2",
                "--json", "scores.json", cwd=tmp_path)
    (result,) = json.loads((tmp_path / "scores.json").read_text())
    assert result["error"] is None and result["prompted"] and len(result["returns"]) == 2
    assert result["normalized"] > 0.5  # the shipped model reaches the expert here; an untrained one does not


@pytest.mark.slow
def test_caption_and_chat_with_the_shipped_checkpoint(tmp_path):
    image = tmp_path / "scene.png"
    Image.fromarray(generate_scene(3, "heldout").image).save(image)
    caption = _generalist("caption", str(image), cwd=tmp_path)
    assert caption.startswith(f"{image}: ") and len(caption.split(": ", 1)[1].split()) >= 2
    reply = _generalist("chat", "--max-new-tokens", "16", cwd=tmp_path, stdin="hello\n")
    assert reply.startswith("assistant> ")
    scored = _generalist("chat", "--perplexity", cwd=tmp_path)
    lines = {line.split()[1]: line for line in scored.splitlines()}  # "held-out <corpus> perplexity: ..."
    per_token, per_word = (float(x) for x in re.findall(r"([\d.]+) per (?:token|word)", lines["chatterbot"]))
    assert 1 < per_token < 200  # 62.3 in RESULTS.md; an untrained model scores about 4,700
    assert per_word > per_token  # a word is a token or more (11,285.7 in RESULTS.md)
    assert "chitchat" in lines and "204 conversations" in lines["chitchat"]


@pytest.mark.slow
def test_diagnose_with_the_shipped_checkpoint_reads_its_demonstrations(tmp_path):
    out = _generalist("diagnose", "--tasks", "mountaincar_continuous", "--episodes", "1", cwd=tmp_path)
    (row,) = [line for line in out.splitlines() if line.startswith("| mountaincar_continuous")]
    teacher_forced = float(row.split("|")[2].strip().rstrip("%"))
    assert teacher_forced > 50  # the shipped model predicts its expert's actions here (100% in RESULTS.md)
