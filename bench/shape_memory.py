"""Memory of varying shapes: a training process's resident memory over steps whose row counts change, with the
rows padded to `SHAPE_MULTIPLE` (what the model does) and without (a multiple of 1).

Run from the repository root: `python -m bench.shape_memory` (`--quick` for a smoke run). Each arm runs in a
fresh process: the `tiny` model, AdamW, bf16 autocast where `resolve_precision("auto")` picks it (`--precision`
forces one), on batches of 8 synthetic control windows whose lengths are drawn anew each step (so the number of
gathered action targets, and with `--images` the number of image patches, changes from step to step, as in a
training mixture). It prints a markdown table for docs/BENCHMARKS.md: resident memory after the warm-up steps
and after `--steps` steps, the growth per 100 steps, and the median step time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from generalist import model as model_module
from generalist.batch import collate
from generalist.model import Generalist, preset
from generalist.precision import resolve_precision
from generalist.tokenizers import ActionSpec, TextTokenizer, TokenLayout, tokenize_episode

WARMUP_STEPS = 5


def resident_mb() -> float:
    """This process's resident memory, in MiB (Linux)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def measure(multiple: int, steps: int, images: bool, precision: str, seed: int = 0) -> dict[str, float]:
    """Train `steps` steps on batches of changing shapes with rows padded to `multiple`; memory and time."""
    model_module.SHAPE_MULTIPLE = multiple
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    layout = TokenLayout(TextTokenizer.default().vocab_size)
    model = Generalist(preset("tiny", text_vocab_size=layout.text_vocab_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    resolved = resolve_precision(precision, torch.device("cpu"))
    spec = ActionSpec("discrete", n=4)

    def batch():
        sequences = []
        for _ in range(8):
            n = int(rng.integers(5, 60))  # timesteps: the window's length changes the target count
            observations = {"continuous": rng.normal(size=(n, 8)).astype(np.float32)}
            if images:
                observations["image"] = rng.integers(0, 256, (n, 16 * int(rng.integers(1, 4)), 48, 3), np.uint8)
            sequences.append(tokenize_episode(observations, rng.integers(0, 4, n), spec, layout))
        return collate(sequences, layout)

    times, before = [], 0.0
    for step in range(WARMUP_STEPS + steps):
        if step == WARMUP_STEPS:
            before = resident_mb()
        data = batch()
        start = time.perf_counter()
        with resolved.autocast("cpu"):
            loss = model(data).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    after = resident_mb()
    return {"multiple": multiple, "precision": resolved.name, "before_mb": before, "after_mb": after,
            "per_100_steps_mb": (after - before) / steps * 100, "median_step_s": float(np.median(times))}


def main() -> None:
    """Print the table (each arm in its own process, so one arm's memory never counts in the other's)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps after the warm-up")
    parser.add_argument("--images", action="store_true", help="give each timestep an image of 1-3 rows of patches")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, model_module.SHAPE_MULTIPLE])
    parser.add_argument("--quick", action="store_true", help="20 steps: a smoke run")
    parser.add_argument("--arm", type=int, default=None, help=argparse.SUPPRESS)  # one arm, in a child process
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    steps = 20 if args.quick else args.steps
    if args.arm is not None:
        print(json.dumps(measure(args.arm, steps, args.images, args.precision)))
        return
    rows = []
    for multiple in args.multiples:
        command = [sys.executable, "-m", "bench.shape_memory", "--arm", str(multiple), "--steps", str(steps),
                   "--precision", args.precision, *(["--images"] if args.images else [])]
        rows.append(json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout))
    print(f"{steps} steps after {WARMUP_STEPS} of warm-up; batches of 8 control windows of 5-59 timesteps"
          + (", each with an image of 1-3 rows of patches" if args.images else ""))
    print("| rows padded to a multiple of | precision | resident MiB after warm-up | after | growth per 100 steps "
          "| median step |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['multiple']} | {row['precision']} | {row['before_mb']:,.0f} | {row['after_mb']:,.0f} "
              f"| {row['per_100_steps_mb']:,.0f} MiB | {row['median_step_s'] * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
