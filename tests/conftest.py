"""Fixtures and markers shared by the test files.

Tests marked `slow` (subprocesses of the CLI, training runs, end-to-end checks) are deselected by the fast
subset: `pytest -q -m "not slow"`. The README's `pytest -q` runs everything.
"""

from pathlib import Path

import pytest
import torch
from hypothesis import settings

from generalist.config import CollectConfig
from generalist.datasets.recording import collect
from generalist.model import Generalist, preset
from generalist.tokenizers import TextTokenizer

# Hypothesis's per-example deadline (200 ms) is a timing check: on this shared 2-core machine a training run beside
# the tests made it fail tests whose behaviour was right. Speed belongs in bench/, so no deadline anywhere.
settings.register_profile("project", deadline=None)
settings.load_profile("project")


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two threads wait on each other whenever another process
    holds a core, which made the model tests 7x slower (196 s against 28 s); on an idle machine one is as fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model() -> Generalist:
    """The `tiny` preset with the shipped text vocabulary and a 256-token context, untrained (do not modify)."""
    torch.manual_seed(0)
    return Generalist(preset("tiny", text_vocab_size=TextTokenizer.default().vocab_size, context=256)).eval()


@pytest.fixture(scope="session")
def cartpole_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with 3 recorded CartPole expert episodes, each cut at 60 steps."""
    out = tmp_path_factory.mktemp("data")
    collect(CollectConfig(tasks=("cartpole",), episodes=3, out=out, max_episode_steps=60, progress=False))
    return out
