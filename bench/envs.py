"""Environment and recording speed: env steps/s with the expert acting, and what recording costs on disk.

Run from the repository root: `python -m bench.envs` (`--quick` for a smoke run). Prints markdown tables for
docs/BENCHMARKS.md.

- Single env: `make(task)` stepped by the task's expert for `--steps` steps (episodes restart as they end);
  steps/s counts env steps, the expert's time included, as recording pays it.
- Vector env: `make_vector(task, --num-envs)` (Gymnasium's SyncVectorEnv), one expert per sub-env; steps/s
  counts sub-env steps.
- Atari only: ale-py's `AtariVectorEnv` (C++ threads) set to give the frames the single env gives (RGB, no
  stacking, no max-pooling, no no-op starts, no fire reset, unclipped rewards, sticky actions 0.25) plus our
  crop and resize, with random actions: it exposes no RAM, so the experts cannot act in it. This is the figure
  the choice of vector env in `generalist.envs.registry` rests on.
- Recording: `collect_task` end to end (expert, env, shards, index) into a temporary directory: steps written
  per second and bytes per step on disk; then random 32-step windows read back through the memory map.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from generalist.datasets.recording import CollectConfig, collect_task
from generalist.datasets.storage import EpisodeDataset
from generalist.envs import TASKS, make, make_vector
from generalist.envs.atari import preprocess_frames
from generalist.envs.rollout import sub_env_view


def single_env_steps_per_s(task: str, steps: int) -> float:
    """Env steps/s of one env with the expert acting."""
    env, expert = make(task, seed=0), TASKS[task].expert()
    observation, info = env.reset()
    expert.reset(0)
    start = time.perf_counter()
    for _ in range(steps):
        observation, _, terminated, truncated, info = env.step(expert.act(observation, info))
        if terminated or truncated:
            observation, info = env.reset()
            expert.reset(info["seed"])
    return steps / (time.perf_counter() - start)


def vector_env_steps_per_s(task: str, steps: int, num_envs: int) -> float:
    """Sub-env steps/s of a SyncVectorEnv with one expert per sub-env."""
    envs = make_vector(task, num_envs, seed=0)
    experts = [TASKS[task].expert() for _ in range(num_envs)]
    observations, infos = envs.reset()
    start = time.perf_counter()
    for _ in range(steps // num_envs):
        views = [sub_env_view(observations, infos, i) for i in range(num_envs)]
        actions = np.stack([np.asarray(e.act(o, info)) for e, (o, info) in zip(experts, views, strict=True)])
        observations, _, terminated, truncated, infos = envs.step(actions)
        for i in np.flatnonzero(terminated | truncated):
            experts[i].reset()
    return (steps // num_envs) * num_envs / (time.perf_counter() - start)


def ale_vector_steps_per_s(task: str, steps: int, num_envs: int) -> float:
    """Sub-env steps/s of ale-py's AtariVectorEnv set up like our single env, random actions, our resize."""
    from ale_py.vector_env import AtariVectorEnv

    top = TASKS[task].wrapper.keywords["top"]
    envs = AtariVectorEnv(
        task, num_envs, stack_num=1, grayscale=False, img_height=210, img_width=160, maxpool=False,
        noop_max=0, use_fire_reset=False, reward_clipping=False, repeat_action_probability=0.25,
        frameskip=4, episodic_life=False,
    )
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps // num_envs):
        frames, *_ = envs.step(rng.integers(envs.single_action_space.n, size=num_envs))
        preprocess_frames(frames[:, 0], top)
    elapsed = time.perf_counter() - start
    envs.close()
    return (steps // num_envs) * num_envs / elapsed


def recording(task: str, episodes: int, max_steps: int | None) -> tuple[float, float, int, float]:
    """Steps written/s end to end, bytes per step on disk, steps written, and 32-step windows read/s."""
    with tempfile.TemporaryDirectory() as tmp:
        config = CollectConfig((task,), episodes, Path(tmp), max_episode_steps=max_steps, progress=False)
        start = time.perf_counter()
        directory = collect_task(task, config)
        elapsed = time.perf_counter() - start
        data = EpisodeDataset(directory)
        size = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
        rng = np.random.default_rng(0)
        reads, start = 0, time.perf_counter()
        while time.perf_counter() - start < 1.0:
            episode = int(rng.integers(len(data)))
            begin = int(rng.integers(max(data.episode_length(episode) - 32, 0) + 1))
            data.window(episode, begin, min(begin + 32, data.episode_length(episode)))
            reads += 1
        return data.num_steps / elapsed, size / data.num_steps, data.num_steps, reads / (time.perf_counter() - start)


def main() -> None:
    """Print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="env steps per measurement")
    parser.add_argument("--num-envs", type=int, default=8, help="sub-envs of the vector envs")
    parser.add_argument("--episodes", type=int, default=20, help="episodes recorded per task")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.episodes = 200, 2
    tasks = args.tasks.split(",")
    print(f"load average before: {os.getloadavg()[0]:.1f}\n")
    print(f"| task | single env, expert (steps/s) | SyncVectorEnv x{args.num_envs}, experts (steps/s) |")
    print("| --- | --- | --- |")
    for task in tasks:
        single = single_env_steps_per_s(task, args.steps)
        vector = vector_env_steps_per_s(task, args.steps, args.num_envs)
        print(f"| {task} | {single:,.0f} | {vector:,.0f} |", flush=True)
    print(f"\n| Atari | AtariVectorEnv x{args.num_envs}, random actions + our resize (steps/s) |")
    print("| --- | --- |")
    for task in (t for t in tasks if t in ("pong", "breakout")):
        print(f"| {task} | {ale_vector_steps_per_s(task, args.steps, args.num_envs):,.0f} |", flush=True)
    print("\n| task | steps written | steps written/s | bytes/step on disk | 32-step windows read/s |")
    print("| --- | --- | --- | --- | --- |")
    for task in tasks:
        # Atari episodes are capped so that the measurement records several of them.
        cap = 1000 if task in ("pong", "breakout") else None
        speed, per_step, steps, reads = recording(task, args.episodes if cap is None else 4, cap)
        print(f"| {task} | {steps:,} | {speed:,.0f} | {per_step:,.1f} | {reads:,.0f} |", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
