"""Fuzzed flags: a command either does what it was asked (exit 0) or says in one line why not (exit 2); never a
traceback, never a hang (each example is bounded by hypothesis's deadline)."""

import contextlib
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generalist.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
NUMBERS = st.one_of(st.integers(-3, 3), st.sampled_from(["nan", "inf", "-1e9", "0.5", "x", ""]))


def _exit_code(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in this process: its exit code and what it wrote to stderr."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    return code, stderr.getvalue()


def _one_clear_line(code: int, stderr: str) -> None:
    assert code in (0, 2), stderr
    assert "Traceback" not in stderr
    if code == 2:
        assert stderr.strip() and "error" in stderr


@settings(max_examples=30, deadline=180_000, suppress_health_check=[HealthCheck.too_slow])
@given(steps=NUMBERS, batch=NUMBERS, length=st.sampled_from(["-1", "0", "1", "8", "64", "nan"]), log=NUMBERS,
       rate=NUMBERS, minutes=st.sampled_from(["none", "0", "-1", "nan", "0.001"]), run_dir_is_file=st.booleans())
def test_train_flags(steps, batch, length, log, rate, minutes, run_dir_is_file):
    with tempfile.TemporaryDirectory() as directory:
        run_dir = Path(directory) / "run"
        if run_dir_is_file:
            run_dir.write_text("a file, not a directory")
        argv = ["train", "--run-dir", str(run_dir), "--weights", "dialogue=1", "--steps", str(steps), "--batch-size",
                str(batch), "--sequence-length", length, "--log-every", str(log), "--learning-rate", str(rate),
                "--max-minutes", minutes, "--num-workers", "0", "--no-progress", "--precision", "fp32"]
        _one_clear_line(*_exit_code(argv))


@settings(max_examples=20, deadline=180_000, suppress_health_check=[HealthCheck.too_slow])
@given(episodes=NUMBERS, steps=NUMBERS, shard=NUMBERS, seed=NUMBERS, noise=NUMBERS, out_is_file=st.booleans())
def test_collect_flags(episodes, steps, shard, seed, noise, out_is_file):
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "data"
        if out_is_file:
            out.write_text("a file, not a directory")
        argv = ["collect", "--tasks", "cartpole", "--out", str(out), "--episodes", str(episodes),
                "--max-episode-steps", str(steps), "--shard-episodes", str(shard), "--seed", str(seed),
                "--noise", str(noise), "--no-progress"]
        _one_clear_line(*_exit_code(argv))


@settings(max_examples=20, deadline=180_000, suppress_health_check=[HealthCheck.too_slow])
@given(episodes=st.sampled_from(["-1", "0", "1", "x"]), envs=NUMBERS, seed=NUMBERS, temperature=NUMBERS,
       prompt_tokens=st.sampled_from(["none", "-5", "0", "4", "100000"]), slide=NUMBERS)
def test_evaluate_flags(episodes, envs, seed, temperature, prompt_tokens, slide):
    argv = ["evaluate", "--tasks", "mountaincar", "--episodes", episodes, "--num-envs", str(envs), "--seed", str(seed),
            "--temperature", str(temperature), "--prompt-tokens", prompt_tokens, "--slide-fraction", str(slide)]
    code, stderr = _exit_code(argv)
    assert code in (0, 1, 2) and "Traceback" not in stderr  # 1: every task failed, with the reason in its row
