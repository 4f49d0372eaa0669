#!/usr/bin/env bash
# The GPU checks, prepared for whoever is next lent an NVIDIA GPU (issue 17). From the repository root:
#
#     OUT=/some/dir bash bench/gpu.sh      # OUT defaults to runs/gpu-<time>
#
# Stages, each under its own time limit, each writing $OUT/<stage>.log, with one line per stage in
# $OUT/summary.txt (a failing stage does not stop the later ones; the exit status is 1 if any failed):
#   env    GPU, torch, native bf16, what resolve_precision("auto") picks on cuda and on the host CPU
#   tests  the test suite's CUDA tests (`pytest -k cuda`)
#   bench  `python -m bench.model --device cuda` at the small and gato-364m presets: training tokens/s and MFU
#          (against the peak measured in the row's precision: bf16 rows against the GPU's bf16 peak), the patch
#          block, and ms per action with the KV cache against recomputation
#   data   20 CartPole expert episodes (into a scratch directory, not $OUT)
#   train  TRAIN_MINUTES (whole minutes, default 2) of `generalist train --model tiny --device cuda` on the
#          default mixture; its metrics.csv and trainer.json are copied to $OUT/train/, and train.txt sums up
#          its tokens/s and loss
# Expected to take about 8 minutes on one H200 (the stage limits add up to more, for a slow machine), so it
# fits one 10-minute device call: ask for 600 s, and read summary.txt for what finished.

set -uo pipefail  # no -e: a stage that fails must not lose the others' results
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu-$(date +%Y%m%d-%H%M%S)}"
TRAIN_MINUTES="${TRAIN_MINUTES:-2}"
PYTHON="${PYTHON:-python}"
SCRATCH="$(mktemp -d)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, whatever is installed
mkdir -p "$OUT"
failed=0

# stage NAME SECONDS COMMAND...: run COMMAND under a time limit into $OUT/NAME.log and record how it ended.
stage() {
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "== $name: $*" | tee -a "$OUT/summary.txt"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "   $name: exit $rc after $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/summary.txt"
    [ "$rc" -eq 0 ] || failed=1
    return "$rc"
}

stage env 120 "$PYTHON" -c '
import torch
from generalist.precision import resolve_precision
print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())
assert torch.cuda.is_available(), "no CUDA device: nothing here can run"
print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
print("native bf16", torch.cuda.is_bf16_supported(including_emulation=False))
print("auto on cuda:", resolve_precision("auto", "cuda"))
print("host CPU capability", torch.backends.cpu.get_cpu_capability(), "; auto on cpu:", resolve_precision("auto"))
'
env_rc=$?
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
cat "$OUT/env.log"
if [ "$env_rc" -ne 0 ]; then
    echo "no usable CUDA device; stopping" | tee -a "$OUT/summary.txt"
    exit 1
fi

stage tests 180 "$PYTHON" -m pytest -q -rs -k cuda tests

stage bench 330 "$PYTHON" -m bench.model --device cuda --presets small gato-364m --act-presets small gato-364m
grep -E '^\||skipped|Matmul|Precision|capability' "$OUT/bench.log" | awk '!seen[$0]++' >"$OUT/bench.md"

stage data 120 "$PYTHON" -m generalist.cli collect --tasks cartpole --episodes 20 --out "$SCRATCH/data" --no-progress

# The precision flag of `generalist train`: a --precision option once training resolves it itself (issue 17),
# else the older --bf16 switch, set by what resolve_precision("auto") picks on this GPU.
if "$PYTHON" -m generalist.cli train --help | grep -qE -- '--precision( |$)'; then
    precision=(--precision auto)
elif [ "$("$PYTHON" -c 'import generalist.precision as p; print(p.resolve_precision("auto", "cuda").name)')" = bf16 ]
then
    precision=(--bf16)
else
    precision=(--no-bf16)
fi
run_dir="$SCRATCH/train"  # checkpoints stay out of $OUT; metrics are copied below
stage train $((TRAIN_MINUTES * 60 + 180)) "$PYTHON" -m generalist.cli train --model tiny --device cuda \
    "${precision[@]}" --data-dir "$SCRATCH/data" --run-dir "$run_dir" --schedule time \
    --max-minutes "$TRAIN_MINUTES" --steps 1000000 --log-every 20 --checkpoint-every 1000000 --num-workers 4 \
    --no-progress
mkdir -p "$OUT/train"
cp "$run_dir/metrics.csv" "$OUT/train/" 2>/dev/null
find "$run_dir" -name trainer.json -print -quit | xargs -r -I{} cp {} "$OUT/train/"
"$PYTHON" - "$OUT/train/metrics.csv" "${precision[*]}" >"$OUT/train.txt" 2>&1 <<'EOF' || failed=1
"""Median training tokens/s (past the first two logs: warm-up) and the first and last loss of a metrics.csv."""
import csv
import statistics
import sys

rows = list(csv.DictReader(open(sys.argv[1])))
speed = [float(r["value"]) for r in rows if r["metric"] == "train/tokens_per_s"]
speed = speed[2:] or speed
loss = [(int(r["step"]), float(r["value"])) for r in rows if r["metric"] == "train/loss"]
if not speed:
    sys.exit(f"tiny on cuda ({sys.argv[2]}): no step was logged")
print(f"tiny on cuda ({sys.argv[2]}): median {statistics.median(speed):,.0f} tokens/s over {len(speed)} logs; "
      f"loss {loss[0][1]:.3f} at step {loss[0][0]}, {loss[-1][1]:.3f} at step {loss[-1][0]}")
EOF
tee -a "$OUT/summary.txt" <"$OUT/train.txt"
rm -rf "$SCRATCH"
exit "$failed"
