"""What evaluating Atari costs: the agent's steps per second in `evaluate_task`, and 50 games projected from them.

Run from the repository root: `python -m bench.atari_eval --checkpoint runs/RUN --tasks pong,breakout` (`--quick`
for a smoke run). For each task it plays `--episodes` games on `--num-envs` environments at once (greedy, fp32,
prompted from `--data-dir`, cut at `--max-episode-steps` where given), and prints the games' steps, the wall time
and the agent steps per second, then what 50 games would take at that rate if every game lasted as long as the
expert's (its mean game length in the stored baselines), whole and cut at `--max-episode-steps`: the cost of
evaluating an agent that plays, which a model that loses in a few hundred steps does not show. An acting step
costs the same whatever the weights once the context is full, so any checkpoint of the same shape measures it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from generalist.checkpoint import load_model
from generalist.config import EvalConfig
from generalist.envs import baseline_entry
from generalist.evaluate import evaluate_task
from generalist.precision import denormals_flushed

PROJECTED_GAMES = 50


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint or run directory that plays")
    parser.add_argument("--tasks", default="pong,breakout", help="comma-separated Atari tasks")
    parser.add_argument("--episodes", type=int, default=50, help="games played per task")
    parser.add_argument("--num-envs", type=int, default=50, help="games played at once")
    parser.add_argument("--max-episode-steps", type=int, default=None, help="cut games at this many steps")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="expert recordings for the prompts")
    parser.add_argument("--quick", action="store_true", help="2 games of pong on 2 envs, cut at 2,000 steps")
    args = parser.parse_args()
    tasks, episodes, num_envs, cap = args.tasks.split(","), args.episodes, args.num_envs, args.max_episode_steps
    if args.quick:
        tasks, episodes, num_envs, cap = ["pong"], 2, 2, 2000
    model, tokenizer = load_model(args.checkpoint)
    config = EvalConfig(episodes=episodes, num_envs=num_envs, data_dir=args.data_dir, max_episode_steps=cap,
                        reference_min=0.0, reference_max=1.0)  # the scores are not this bench's business
    print(f"checkpoint {args.checkpoint}, {episodes} games on {num_envs} envs, cut at {cap or 'the task cap'}\n")
    cut = f"cut at {cap:,}" if cap else "cut (no cap given)"
    print(f"| task | games | agent steps | wall time (s) | agent steps/s | expert's game, whole / {cut} (steps) | "
          f"{PROJECTED_GAMES} expert-length games, whole / {cut} (min) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for task in tasks:
        start = time.perf_counter()
        result = evaluate_task(model, task, config, text_tokenizer=tokenizer)
        seconds = time.perf_counter() - start
        if result.error is not None:
            raise SystemExit(f"{task}: {result.error}")
        steps = sum(result.lengths)
        rate = steps / seconds
        lengths = [baseline_entry(task, max_episode_steps=steps)["expert"]["mean_length"] for steps in (None, cap)]
        minutes = [PROJECTED_GAMES * length / rate / 60 for length in lengths]
        print(f"| {task} | {len(result.lengths)} | {steps:,} | {seconds:.1f} | {rate:.0f} | "
              f"{lengths[0]:,.0f} / {lengths[1]:,.0f} | {minutes[0]:.1f} / {minutes[1]:.1f} |", flush=True)


if __name__ == "__main__":
    with denormals_flushed():  # as every `generalist` command is
        main()
