"""Score baselines: the random policy's and the expert's returns per task, and the normalized scores.

The expert-normalized score `(agent - random) / (expert - random)` (Gato's definition) is what every
evaluation reports; Atari tasks also report the human-normalized score against the published human and
random scores. The returns are measured by `generalist baselines` and stored in ``baselines.json`` beside
this module, versioned in git, with the seeds and package versions that produced them.

Design choices:
- Random and expert play the same seeds, ``first_seed .. first_seed + episodes - 1``. The default first seed
  (1,000,000) is far from the recording seeds (0, 1, 2, ...) so that the numbers, and evaluations that reuse
  these seeds, never score an episode the agent was trained on.
- Measuring one task updates that task's entry and leaves the others: Atari tasks take minutes, and each
  entry carries its own seeds and versions. The runs (task x random/expert) are spread over worker
  processes, longest first; each run is seeded, so the numbers do not depend on the number of workers.
- The file is written to a temporary name and moved into place, so an interrupted run never leaves half a file.
- Evaluations cut at fewer steps than a task's own cap (`--eval.max-episode-steps`: a Pong expert's game lasts
  about 25,000 steps, too long to evaluate 50 of) are normalized by baselines cut the same way, measured with
  `generalist baselines --max-episode-steps N` and stored in the task's entry under ``capped[N]``, so that the
  0% and the 100% are what the random policy and the expert score within the same steps.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from generalist.atomic import write_text_atomically
from generalist.envs.policies import RandomPolicy
from generalist.envs.registry import TASKS, get_task, make
from generalist.envs.rollout import Episode, run_episode

BASELINES_PATH = Path(__file__).with_name("baselines.json")
FORMAT = "generalist-baselines"
VERSION = 1
PACKAGES = ("gymnasium", "ale-py", "box2d", "numpy")
POLICIES = ("random", "expert")


@dataclass
class BaselineConfig:
    """What `generalist baselines` measures."""

    tasks: tuple[str, ...] = tuple(TASKS)
    """tasks to measure; the others keep their stored entries"""
    episodes: int = 50
    """episodes per policy and task"""
    first_seed: int = 1_000_000
    """seed of the first episode; episode i plays first_seed + i"""
    out: Path = field(default=BASELINES_PATH)
    """the JSON file to update"""
    workers: int = 2
    """processes measuring in parallel (one task's random or expert runs each)"""
    max_episode_steps: int | None = None
    """cut episodes at this many steps (tasks whose own cap is not longer keep it) and store the result beside the
    task's full baseline, as the reference of evaluations cut the same way; the full baseline must exist"""


def step_cap(task: str, max_episode_steps: int | None) -> int | None:
    """`max_episode_steps` where it cuts `task`'s episodes shorter than the task's own cap does, else None."""
    if max_episode_steps is None:
        return None
    if max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be at least 1, got {max_episode_steps}")
    return max_episode_steps if max_episode_steps < get_task(task).max_episode_steps else None


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that decide the environments' behaviour, plus Python's."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def summarize(episodes: Sequence[Episode]) -> dict[str, Any]:
    """Mean, standard deviation, count, min and max of the returns, the returns themselves, mean length."""
    values = np.asarray([e.episode_return for e in episodes], dtype=np.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "n": int(values.size),
        "min": float(values.min()),
        "max": float(values.max()),
        "mean_length": float(np.mean([e.length for e in episodes])),
        "returns": [float(v) for v in values],
    }


def measure_policy(
    task: str, policy: str, episodes: int, first_seed: int, max_episode_steps: int | None = None
) -> dict[str, Any]:
    """Summary of `policy` ("random" or "expert") over the seeded episodes of `task`, cut at `max_episode_steps`
    (None: the task's own cap)."""
    spec = get_task(task)
    player = RandomPolicy(spec.action_space()) if policy == "random" else spec.expert()
    env = make(task, max_episode_steps=max_episode_steps)
    played = [run_episode(env, player, seed) for seed in range(first_seed, first_seed + episodes)]
    env.close()
    return summarize(played)


def task_entry(
    task: str, episodes: int, first_seed: int, random: dict[str, Any], expert: dict[str, Any] | None,
    max_episode_steps: int | None = None,
) -> dict[str, Any]:
    """The stored entry of one task: how it was measured (cut at `max_episode_steps`, None: the task's own cap),
    and the random and expert summaries."""
    spec = get_task(task)
    entry: dict[str, Any] = {
        "env_id": spec.env_id,
        "env_kwargs": dict(spec.env_kwargs),
        "max_episode_steps": max_episode_steps or spec.max_episode_steps,
        "expert_name": spec.expert_name(),
        "seeds": {"first": first_seed, "count": episodes},
        "packages": package_versions(),
        "random": random,
        "expert": expert,
    }
    if spec.human_scores is not None:
        entry["human"] = {"human": spec.human_scores.human, "random": spec.human_scores.random}
    return entry


def task_policies(task: str) -> tuple[str, ...]:
    """The policies measured on a task: random, and the expert where the task has one (not a gym:/minari: task)."""
    return POLICIES if get_task(task).expert_name() != "none" else ("random",)


def measure_task(task: str, episodes: int, first_seed: int, max_episode_steps: int | None = None) -> dict[str, Any]:
    """The entry of one task, measured in this process (cut at `max_episode_steps`, None: the task's own cap)."""
    cap = step_cap(task, max_episode_steps)
    results = {policy: measure_policy(task, policy, episodes, first_seed, cap) for policy in task_policies(task)}
    return task_entry(task, episodes, first_seed, results["random"], results.get("expert"), cap)


def store_entry(data: dict[str, Any], task: str, entry: dict[str, Any], cap: int | None) -> None:
    """Put a measured entry in `data`: a full one replaces the task's (keeping its cut ones), a cut one goes
    under the task's ``capped``."""
    kept = data["tasks"].get(task, {})
    if cap is None:
        data["tasks"][task] = {**entry, **({"capped": kept["capped"]} if "capped" in kept else {})}
    else:
        kept.setdefault("capped", {})[str(cap)] = entry


def run_baselines(config: BaselineConfig) -> dict[str, Any]:
    """Measure the configured tasks in `config.workers` processes; update the file as each task completes."""
    data = load_baselines(config.out) if config.out.exists() else _empty()
    caps = {task: step_cap(task, config.max_episode_steps) for task in config.tasks}
    missing = [task for task, cap in caps.items() if cap is not None and task not in data["tasks"]]
    if missing:
        raise ValueError(f"{config.out}: no full baseline of {', '.join(missing)} to store the cut ones beside: "
                         f"measure them first without --max-episode-steps")
    # Longest runs first (long episodes, the expert before random) so that the workers finish together.
    jobs = sorted(
        ((task, policy) for task in config.tasks for policy in task_policies(task)),
        key=lambda job: (-get_task(job[0]).max_episode_steps, job[1] != "expert"),
    )
    results: dict[str, dict[str, Any]] = {task: {} for task in config.tasks}
    with ProcessPoolExecutor(config.workers) as pool, tqdm(total=len(jobs), unit="run") as bar:
        futures = {
            pool.submit(measure_policy, task, policy, config.episodes, config.first_seed, caps[task]): (task, policy)
            for task, policy in jobs
        }
        for future in as_completed(futures):
            task, policy = futures[future]
            results[task][policy] = future.result()
            bar.set_postfix_str(f"{task} {policy} {results[task][policy]['mean']:.1f}")
            bar.update()
            if len(results[task]) == len(task_policies(task)):
                entry = task_entry(task, config.episodes, config.first_seed, results[task]["random"],
                                   results[task].get("expert"), caps[task])
                store_entry(data, task, entry, caps[task])
                write_baselines(data, config.out)
    return data


def format_table(data: Mapping[str, Any]) -> str:
    """The stored baselines as a plain-text table: task (and the cut ones), random and expert mean +- std (n)."""
    lines = [f"{'task':<28}{'random':>24}{'expert':>24}"]
    for name, full in data["tasks"].items():
        rows = [(name, full)] + [(f"{name} ({cap} steps)", cut) for cap, cut in full.get("capped", {}).items()]
        for label, entry in rows:
            cells = [f"{entry[p]['mean']:.1f} +- {entry[p]['std']:.1f} ({entry[p]['n']})" if entry.get(p) else "none"
                     for p in ("random", "expert")]
            lines.append(f"{label:<28}{cells[0]:>24}{cells[1]:>24}")
    return "\n".join(lines)


def _empty() -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "tasks": {}}


def write_baselines(data: Mapping[str, Any], path: Path = BASELINES_PATH) -> None:
    """Write the baselines JSON whole or not at all."""
    ordered = {**data, "tasks": {name: data["tasks"][name] for name in sorted(data["tasks"])}}
    write_text_atomically(path, json.dumps(ordered, indent=1) + "\n")


def load_baselines(path: Path = BASELINES_PATH) -> dict[str, Any]:
    """The stored baselines; a damaged or foreign file is an error that names it."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (no 'format': '{FORMAT}')")
    if data.get("version") != VERSION:
        raise ValueError(f"{path}: version {data.get('version')!r}, this code reads version {VERSION}")
    return data


def baseline_entry(
    task: str, baselines: Mapping[str, Any] | None = None, max_episode_steps: int | None = None
) -> Mapping[str, Any]:
    """The stored random and expert summaries of `task` (the package's file without `baselines`), of episodes cut
    at `max_episode_steps` where that cuts them (the whole ones otherwise); a missing one names its command."""
    data = load_baselines() if baselines is None else baselines
    cap = step_cap(task, max_episode_steps)
    try:
        entry = data["tasks"][task]
    except KeyError:
        raise KeyError(f"no baseline for task {task!r}; run `generalist baselines --tasks {task}`") from None
    if cap is None:
        return entry
    try:
        return entry["capped"][str(cap)]
    except KeyError:
        raise KeyError(f"no baseline for task {task!r} cut at {cap} steps; run `generalist baselines --tasks {task} "
                       f"--max-episode-steps {cap}`") from None


def expert_mean(task: str, baselines: Mapping[str, Any] | None = None) -> float:
    """The expert's mean return on `task`, from the stored baselines."""
    return float(baseline_entry(task, baselines)["expert"]["mean"])


def expert_normalized(
    task: str, score: float, baselines: Mapping[str, Any] | None = None, max_episode_steps: int | None = None
) -> float:
    """(score - random) / (expert - random) with the measured means: 0 is random, 1 is the expert; for episodes cut
    at `max_episode_steps`, the means of episodes cut the same way (the full ones where it cuts nothing)."""
    entry = baseline_entry(task, baselines, max_episode_steps)
    random, expert = entry["random"]["mean"], entry["expert"]["mean"]
    return (score - random) / (expert - random)


def human_normalized(task: str, score: float) -> float:
    """(score - random) / (human - random) with the published Atari scores (Atari tasks only)."""
    scores = get_task(task).human_scores
    if scores is None:
        raise ValueError(f"task {task!r} has no published human score")
    return (score - scores.random) / (scores.human - scores.random)
