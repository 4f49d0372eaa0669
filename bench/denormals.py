"""Denormal floats on a CPU: a trained model's training step with and without flushing them to zero.

Run from the repository root: `python -m bench.denormals --checkpoint runs/RUN --task pong` (recordings under
`--data-dir`). Each row runs in a fresh process, because the flush mode is a property of each CPU thread that new
threads inherit: set before the first parallel operation, the whole thread pool has it. A row times
`--repeats` forward and backward passes of one batch (`--batch` sequences of 1,024 tokens of the task, fp32) on
the checkpoint's weights and on fresh weights of the same shape, and counts the denormal share of the values the
gradients reaching the outputs of the model's leaf modules in the backward pass, with the module that gets the
most (the values that slow the step where they are not flushed). Prints a markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from generalist.checkpoint import load_model
from generalist.datasets.mixture import Mixture, MixtureConfig, build_sources
from generalist.model import Generalist

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


def measure(checkpoint: Path, task: str, data_dir: Path, batch_size: int, repeats: int, flush: bool,
            fresh: bool) -> dict[str, float | str]:
    """Median seconds of a forward and backward pass, and the denormal share of the gradients at the modules'
    outputs, in this process."""
    torch.set_flush_denormal(flush)  # before any parallel work, so that every pool thread inherits it
    model, tokenizer = load_model(checkpoint)
    if fresh:
        torch.manual_seed(0)
        model = Generalist(model.config)
    layout = model.config.layout
    sources = build_sources([task], data_dir, layout, tokenizer, 0.25)
    (batch,) = next(iter(Mixture(sources, MixtureConfig({task: 1.0}, 1024, batch_size, 0), layout, [0], 1)))
    model.train()
    times = []
    for _ in range(repeats + 1):  # the first builds the kernels
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        model(batch).loss.backward()
        times.append(time.perf_counter() - start)
    counts: dict[str, tuple[int, int]] = {}

    def count(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, grad_input: object, grad_output: tuple[torch.Tensor | None, ...]) -> None:
            if grad_output and isinstance(grad_output[0], torch.Tensor):
                values = grad_output[0].detach().abs()
                counts[name] = (int(((values > 0) & (values < SMALLEST_NORMAL)).sum()), values.numel())
        return hook

    # The gradients reaching each module's output, where the trained model's denormals turned out to be.
    handles = [module.register_full_backward_hook(count(name)) for name, module in model.named_modules()
               if name and not list(module.children())]
    model.zero_grad(set_to_none=True)
    model(batch).loss.backward()
    for handle in handles:
        handle.remove()
    denormal, total = (sum(c[i] for c in counts.values()) for i in (0, 1))
    worst = max(counts, key=lambda name: counts[name][0])
    return {"seconds": statistics.median(times[1:]), "denormal": denormal / total,
            "worst": f"{worst} ({counts[worst][0] / counts[worst][1]:.1%})" if counts[worst][0] else "none"}


def main() -> None:
    """Print the table, one fresh process per row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a trained checkpoint or run directory")
    parser.add_argument("--task", default="pong", help="the recorded task whose windows make the batch")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where the task is recorded")
    parser.add_argument("--batch", type=int, default=8, help="sequences of 1,024 tokens in the batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per row")
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)  # "flush,fresh": one row, as JSON
    args = parser.parse_args()
    if args.row is not None:
        flush, fresh = (bool(int(x)) for x in args.row.split(","))
        print(json.dumps(measure(args.checkpoint, args.task, args.data_dir, args.batch, args.repeats, flush, fresh)))
        return
    print(f"checkpoint {args.checkpoint}, {args.batch} x 1,024 tokens of {args.task}, {torch.get_num_threads()} "
          f"threads, median of {args.repeats}\n")
    print("| weights | denormals flushed | forward + backward (s) | denormal share of output gradients | most in |")
    print("| --- | --- | ---: | ---: | --- |")
    for fresh in (False, True):
        for flush in (False, True):
            command = [sys.executable, "-m", "bench.denormals", "--checkpoint", str(args.checkpoint), "--task",
                       args.task, "--data-dir", str(args.data_dir), "--batch", str(args.batch), "--repeats",
                       str(args.repeats), "--row", f"{int(flush)},{int(fresh)}"]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            row = json.loads(output.splitlines()[-1])
            print(f"| {'fresh' if fresh else 'trained'} | {'yes' if flush else 'no'} | {row['seconds']:.2f} | "
                  f"{row['denormal']:.3%} | {row['worst']} |", flush=True)


if __name__ == "__main__":
    main()
