"""Learner-driven recording speed: episodes a trained agent drives (the expert labelling), one at a time or many.

Run from the repository root: `python -m bench.dagger_record --checkpoint runs/RUN --tasks lunarlander` (the
shipped checkpoint without `--checkpoint`; `--quick` for a smoke run). For each task and each `--num-envs`
value, `collect` records `--episodes` episodes into a temporary directory with the agent driving (greedy, fp32,
prompted from `--data-dir`), and prints the wall time, episodes per minute and driven steps per second as a
markdown table for docs/BENCHMARKS.md. The same seeds are played at every row count, so the rows compare the
same episodes (up to the batch's numerics, which can flip a greedy action).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

from generalist.config import CollectConfig
from generalist.dagger import learner_driver
from generalist.datasets.recording import collect
from generalist.datasets.storage import EpisodeDataset
from generalist.pretrained import default_checkpoint


def record_seconds(checkpoint: Path, task: str, episodes: int, num_envs: int, data_dir: Path) -> tuple[float, int]:
    """Wall seconds to record `episodes` learner-driven episodes of `task`, and the steps they hold."""
    with tempfile.TemporaryDirectory() as out:
        config = CollectConfig(tasks=(task,), episodes=episodes, out=Path(out), first_seed=2_900_000,
                               prompt_data=data_dir, num_envs=num_envs, progress=False)
        start = time.perf_counter()
        (directory,) = collect(config, partial(learner_driver, checkpoint, config=config))
        seconds = time.perf_counter() - start
        return seconds, sum(e.length for e in EpisodeDataset(directory))


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="driving checkpoint (default: shipped)")
    parser.add_argument("--tasks", default="lunarlander", help="comma-separated control tasks")
    parser.add_argument("--episodes", type=int, default=16, help="episodes recorded per measurement")
    parser.add_argument("--num-envs", default="1,16", help="comma-separated row counts to compare")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="expert recordings for the prompts")
    parser.add_argument("--quick", action="store_true", help="2 episodes of cartpole, 1 and 2 rows")
    args = parser.parse_args()
    checkpoint = args.checkpoint or default_checkpoint()
    tasks, episodes, rows = args.tasks.split(","), args.episodes, [int(n) for n in args.num_envs.split(",")]
    if args.quick:
        tasks, episodes, rows = ["cartpole"], 2, [1, 2]
    print(f"checkpoint {checkpoint}, {episodes} episodes per measurement\n")
    print("| task | rows at once | wall time (s) | episodes/min | driven steps/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for task in tasks:
        for n in rows:
            seconds, steps = record_seconds(checkpoint, task, episodes, n, args.data_dir)
            print(f"| {task} | {n} | {seconds:.1f} | {episodes / seconds * 60:.1f} | {steps / seconds:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
