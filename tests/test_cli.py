"""Subprocess smoke runs of the `generalist` commands on tiny settings."""

import json
import re
import subprocess
import sys

import pytest

from generalist.datasets.text import python_reference_lines
from generalist.pretrained import PRETRAINED_DIR
from generalist.tokenizers.text import TextTokenizer

pytestmark = pytest.mark.slow  # every test here runs the CLI in a subprocess

# A guard against a hung command, not a speed check: a one-step text run passes well within 300 s alone, and ran
# past 300 s beside a training run on 2 cores.
CLI_TIMEOUT = 900


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "generalist.cli", *args], capture_output=True, text=True, timeout=CLI_TIMEOUT
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
        (("collect", "--episodes", "0", "--out", "d"), "--episodes must be at least 1, got 0"),
        (("collect", "--episodes", "-5", "--out", "d"), "--episodes must be at least 1, got -5"),
        (("collect", "--max-episode-steps", "0", "--out", "d"), "--max-episode-steps must be at least 1"),
        (("collect", "--num-envs", "0", "--out", "d"), "--num-envs must be at least 1, got 0"),
        (("chat", "--max-new-tokens", "1024"), "--max-new-tokens must lie in 1..1023"),
        (("chat", "--temperature", "nan"), "--temperature must be a finite number"),
        (("chat", "--prompts", "--temperature", "-1"), "--temperature must be a finite number"),
        (("chat", "--prompts", "--temperature", "1", "--top-k", "-1"), "--top-k must be at least 0"),
        (("train", "--run-dir", "r", "--log-every", "0"), "log_every must be at least 1, got 0"),
        (("train", "--run-dir", "r", "--checkpoint-every", "0"), "checkpoint_every must be at least 1"),
        (("evaluate", "--tasks", "cartpole", "--device", "tpu"), "unknown device 'tpu'"),
        (("evaluate", "--tasks", "cartpole", "--json", "."), "--json .: expected a file"),
        (("evaluate", "--tasks", "cartpole", "--change-penalty", "0"), "--change-penalty must be a positive number"),
        (("evaluate", "--tasks", "cartpole", "--reference-min", "0"), "give both --reference-min and --reference-max"),
        (("train", "--run-dir", "a-file", "--weights", "dialogue=1"), "--run-dir a-file is not a directory"),
    ],
)
def test_bad_input_is_one_line_not_a_traceback(args, message, tmp_path):
    (tmp_path / "a-file").write_text("a file where a directory is expected")
    result = subprocess.run(
        [sys.executable, "-m", "generalist.cli", *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_baselines_command_writes_its_json(tmp_path):
    out = tmp_path / "baselines.json"
    result = run_cli("baselines", "--tasks", "cartpole", "--episodes", "2", "--out", str(out), "--workers", "1")
    assert result.returncode == 0, result.stderr
    entry = json.loads(out.read_text())["tasks"]["cartpole"]
    assert entry["random"]["n"] == 2 and entry["expert"]["mean"] == 500.0
    assert "cartpole" in result.stdout


def test_run_records_trains_evaluates_and_reports(tmp_path):
    args = ("run", "--preset", "smoke", "--name", "smoke", "--runs-dir", str(tmp_path / "runs"), "--prompt-ablation",
            "--report.diagnose-episodes", "1", "--data-dir", str(tmp_path / "data"), "--no-progress")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "smoke"
    assert "recording 2 expert episodes of cartpole" in result.stdout
    assert "| cartpole | demo | 2 |" in result.stdout
    assert "captions (4 held-out scenes)" in result.stdout
    assert re.search(r"chat: held-out perplexity per word: chatterbot [\d,.]+, chitchat [\d,.]+\n", result.stdout)
    assert f"report: {run_dir / 'report.md'}" in result.stdout
    for name in ("report.md", "results.json", "learning_curves.png", "task_losses.png", "scores.png",
                 "score_curves.png", "captions.png"):
        assert (run_dir / name).stat().st_size > 0, name
    report = (run_dir / "report.md").read_text()
    assert "| task | loss |" in report and "| cartpole | " in report.split("| task | loss |")[1]
    assert "--preset smoke --name smoke" in report and "--report.prompt-ablation" in report
    assert "| cartpole | demo | 2 |" in report and "- Precision: fp32 (asked for fp32)" in report
    assert "| cartpole | none | 2 |" in result.stdout and "| task | with prompt | without | difference |" in report
    assert "step 2, " in report and "| cartpole/normalized |" in report and "skimage.data.astronaut" in report
    results = json.loads((run_dir / "results.json").read_text())
    assert results["step"] == 2 and len(results["control"][0]["returns"]) == 2
    # The diagnosis of the final checkpoint (no rounds: the first training's), a row per control task.
    assert "## Diagnosis" in report and "| cloning, step 2 | cartpole | " in report
    [diagnosis] = results["diagnoses"]["cloning, step 2"]
    assert diagnosis["task"] == "cartpole" and diagnosis["steps"] > 0 and 0 <= diagnosis["teacher_forced"] <= 1
    assert 0 < diagnosis["expert_probability"] < 1
    assert set(results["curves"]["cartpole/normalized"]) == {"1", "2"}
    # The mixture holds dialogue: every kept checkpoint's held-out chat perplexity, written as a number, not a %.
    perplexity = results["curves"]["chat/perplexity"]
    assert set(perplexity) == {"1", "2"} and all(p > 1 for p in perplexity.values())
    assert f"| chat/perplexity | {perplexity['1']:.1f} | {perplexity['2']:.1f} |" in report

    # Again: the data is there, the training finished and the control tasks' results are kept with the checkpoint.
    assert "cartpole|episodes=2|" in (run_dir / "checkpoints" / "step-0000002" / "evaluations.json").read_text()
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "recording" not in again.stdout and "training finished" in again.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("| cartpole |"))
    assert row in again.stdout.splitlines()


def test_a_run_without_control_tasks_prints_no_empty_score_table(tmp_path):
    result = run_cli("run", "--preset", "smoke", "--name", "text", "--weights", "dialogue=1", "--steps", "1",
                     "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "chat: held-out perplexity" in result.stdout
    assert "control tasks" not in result.stdout and "| task |" not in result.stdout


def test_run_rejects_an_unknown_preset(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "generalist.cli", "run", "--preset", "huge"], capture_output=True, text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "unknown preset 'huge'; known: cpu, control, pong, language, full, smoke, gpu" in result.stderr
    assert "Traceback" not in result.stderr


def test_chat_reports_a_line_that_is_not_utf8_and_goes_on():
    result = subprocess.run([sys.executable, "-m", "generalist.cli", "chat", "--max-new-tokens", "4"],
                            input=b"hi \xff\xfe\nhello\n", capture_output=True, timeout=CLI_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert b"not UTF-8" in result.stderr and b"Traceback" not in result.stderr
    assert result.stdout.count(b"assistant> ") == 1  # the second line was answered


def test_export_without_demonstrations_is_refused(tmp_path):
    result = run_cli("export", "--checkpoint", str(PRETRAINED_DIR), "--out", str(tmp_path / "x"), "--episodes", "0")
    assert result.returncode == 2 and "--episodes and --steps must be at least 1" in result.stderr
    assert not (tmp_path / "x").exists()
