"""Which device and which float precision to compute in, chosen for the machine at hand.

bf16 autocast is only a gain where the hardware multiplies bf16 natively: on an AVX2-only AMD EPYC a 1024x1024
bf16 matmul ran at 0.8 GFLOP/s against 99 GFLOP/s in fp32, and training was 29x slower. So:

- An explicit "fp32" or "bf16" is honoured; bf16 on a CPU without native support is allowed (a user may want
  to check numerics), but the reason says it will be slow.
- "auto" on CUDA picks bf16 where the GPU multiplies it natively (Ampere and later), not where torch merely
  emulates it: emulated bf16 is the CPU problem again.
- "auto" on a CPU first asks PyTorch which vector kernels it dispatches to. Without AVX-512 there is no native
  bf16 and we answer fp32 without measuring. AVX-512 alone does not prove bf16 support (AVX512_BF16 and AMX are
  later extensions): where the CPU's flags name one of those we take bf16; where no flags can be read we time a
  short square matmul in both dtypes (best of three, interleaved) and take bf16 only if it is clearly (1.2x)
  faster: autocast also pays for casts and fp32 norms, so a tie in matmuls is a loss in training.
- A training run resolves "auto" once and records the choice (train.py); a resumed run keeps it, so that it
  continues bit for bit whatever a timing on a busy machine would say now.
- Nothing is cached: callers resolve once per run and pass the `Precision` along.
- Denormal floats are flushed to zero on the CPU (`denormals_flushed`, around every command and `train`): a trained
  Pong model's gradients hold enough of them that a training step took 1.8 times as long as a fresh model's on
  this machine's Xeon, which handles each one in microcode (docs/BENCHMARKS.md, "Denormal floats"); values below
  1.2e-38 are far below anything a loss or an action depends on.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from generalist.config import DEVICES, PRECISIONS


@contextlib.contextmanager
def denormals_flushed() -> Iterator[bool]:
    """Denormal floats treated as zero on this CPU inside the block (yields False where it cannot), as before it
    after it (a nested block leaves the outer one's on). A per-thread setting: the thread pool, made at the first
    parallel operation, inherits it when that happens inside the block, so enter it first."""
    before = (torch.tensor([1e-39]) * 1.0).item() == 0.0  # already flushing (torch has no getter)
    flushed = torch.set_flush_denormal(True)
    try:
        yield flushed
    finally:
        torch.set_flush_denormal(before)


def resolve_device(requested: str) -> torch.device:
    """The device a command runs the model on: "auto" is CUDA when this torch build sees a GPU, else the CPU."""
    if requested not in DEVICES:
        raise ValueError(f"unknown device {requested!r}; expected one of {', '.join(DEVICES)}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this torch build sees no CUDA GPU (install a CUDA build of torch, or use "
                         "--device cpu)")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
BF16_MIN_SPEEDUP = 1.2  # bf16 matmuls must beat fp32 by this factor for "auto" to choose bf16 on a CPU


@dataclass(frozen=True)
class Precision:
    """The precision a run computes in, and why it was chosen."""

    name: str  # "fp32" or "bf16": what was chosen
    reason: str  # one line: why

    def __post_init__(self) -> None:
        if self.name not in ("fp32", "bf16"):
            raise ValueError(f"precision name must be 'fp32' or 'bf16', got {self.name!r}")

    @property
    def bf16(self) -> bool:
        """Whether to compute under bf16 autocast."""
        return self.name == "bf16"

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        """bf16 autocast on `device_type` ("cpu", "cuda"), or a disabled one that leaves fp32 alone."""
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16)


def matmul_flops(dtype: torch.dtype, size: int = 512, seconds: float = 0.1) -> float:
    """FLOP/s of (size, size) @ (size, size) matmuls on the CPU in `dtype`, timed for about `seconds`."""
    if size < 1 or seconds < 0:
        raise ValueError(f"size must be positive and seconds non-negative, got {size} and {seconds}")
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # the first call picks (and may compile) the kernel
    calls, start = 0, time.perf_counter()
    while True:  # at least one timed call: a very slow dtype overruns `seconds` by one matmul, not zero-divides
        a @ b
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * size**3 * calls / elapsed


def resolve_precision(
    requested: str,
    device: torch.device | str = "cpu",
    *,
    capability: str | None = None,
    measure: Callable[[torch.dtype], float] | None = None,
    flags: set[str] | None = None,
) -> Precision:
    """The precision to run in on `device` for `requested` ("auto", "fp32" or "bf16").

    `capability` stands in for `torch.backends.cpu.get_cpu_capability()`, `measure` (dtype -> FLOP/s) for
    `matmul_flops` and `flags` for the CPU's flags (`cpu_flags()`); tests inject them.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; expected one of {', '.join(PRECISIONS)}")
    device_type = torch.device(device).type
    if requested == "fp32":
        return Precision("fp32", "asked for fp32")
    if device_type == "cpu":
        capability = capability if capability is not None else torch.backends.cpu.get_cpu_capability()
        if requested == "bf16":
            return _asked_for_bf16_on_cpu(capability)
        return _auto_on_cpu(capability, measure or matmul_flops, flags)
    if device_type == "cuda":
        # Without including_emulation=False, pre-Ampere GPUs report bf16 support they only emulate, slowly.
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        if requested == "bf16":
            return Precision("bf16", "asked for bf16" if native else "asked for bf16; this CUDA device has no "
                             "native bf16, so it will be slow")
        return Precision("bf16", "CUDA device with bf16 support") if native else Precision(
            "fp32", "CUDA device without native bf16 support")
    if requested == "bf16":
        return Precision("bf16", "asked for bf16")
    return Precision("fp32", f"device type {device_type}: bf16 speed not checked there")


def _asked_for_bf16_on_cpu(capability: str) -> Precision:
    """bf16 as asked, warning where the CPU cannot have native bf16."""
    if "AVX512" in capability:
        return Precision("bf16", "asked for bf16")
    return Precision("bf16", f"asked for bf16; CPU capability {capability} has no native bf16, so it will be "
                     "much slower than fp32")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where that file does not exist."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


# CPU flags under which bf16 matmuls are surely faster than fp32 (avx512_bf16 is not: it needs the test).
NATIVE_BF16_FLAGS = ("amx_bf16",)


def _auto_on_cpu(
    capability: str, measure: Callable[[torch.dtype], float], flags: set[str] | None = None
) -> Precision:
    """fp32 without AVX-512; with it, bf16 where the CPU has AMX tiles for bf16, else only if a matmul test finds
    bf16 BF16_MIN_SPEEDUP times faster.

    The AMX flag comes first because a timing on a shared machine is noisy (under load the same CPU measured 0.97x
    and 16x). AVX512_BF16 alone decides nothing: an AMD EPYC with it trained 2x faster in bf16, an Intel Xeon
    with it and no AMX 0.67x as fast (docs/BENCHMARKS.md). A resumed run keeps the precision it started with.
    """
    if "AVX512" not in capability:
        return Precision("fp32", f"CPU capability {capability}: no native bf16")
    native = sorted(set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags))
    if native:
        return Precision("bf16", f"CPU capability {capability} with native bf16 ({', '.join(native)})")
    # Interleaved, best of three each: another process taking the core during one timing does not decide it.
    fp32 = bf16 = 0.0
    for _ in range(3):
        fp32, bf16 = max(fp32, measure(torch.float32)), max(bf16, measure(torch.bfloat16))
    speedup = bf16 / fp32 if fp32 > 0 else math.inf
    test = f"CPU capability {capability} and a matmul test: bf16 {speedup:.2f}x the speed of fp32"
    if speedup >= BF16_MIN_SPEEDUP:
        return Precision("bf16", test)
    return Precision("fp32", f"{test} (below {BF16_MIN_SPEEDUP}x)")
