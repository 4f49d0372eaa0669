#!/usr/bin/env bash
# A run's cloning on a lent GPU, its DAgger rounds and evaluation back here (`generalist run --cloning`).
# docs/RESULTS.md, `pong-h100-clone`: the `pong` preset's cloning, 4 minutes at 32 sequences a step on an H100.
#
# Here, once (the GPU machine has torch but none of gymnasium, ale-py and a few pure-Python dependencies):
#
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#         gymnasium==1.4.0 ale-py==0.12.1 farama-notifications==0.0.4 pyjokes==0.8.3 tensorboardX==2.6.5
#
# There (carry .whl; about 9.5 minutes for the defaults, inside one 10-minute call):
#
#     PRESET=pong NAME=pong-h100-clone TASKS=pong MINUTES=4 bash bench/gpu_cloning.sh
#
# It records TASKS' expert games, trains NAME's cloning (no rounds) at BATCH sequences a step, and leaves in $OUT
# the checkpoint's weights in 15 MiB parts (what one returned file may hold) and the rest of it in cloning.tar.gz;
# the run's own evaluation is cut by the call's limit. Back here:
#
#     mkdir -p runs/NAME-gpu && tar xzf OUT/cloning.tar.gz -C runs/NAME-gpu
#     cat OUT/model.safetensors.part-* > runs/NAME-gpu/checkpoint/model.safetensors
#     generalist run --preset PRESET --name NAME --cloning runs/NAME-gpu/checkpoint   # the rounds, evaluation
set -uo pipefail
cd "$(dirname "$0")/.."
PRESET="${PRESET:-pong}" NAME="${NAME:-pong-gpu-clone}" TASKS="${TASKS:-pong}" MINUTES="${MINUTES:-4}"
BATCH="${BATCH:-32}" EPISODES="${EPISODES:-50}" WORKERS="${WORKERS:-10}" OUT="${OUT:-runs/gpu-cloning}"
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1  # this checkout's code, whatever is installed
G=(python3 -m generalist.cli)
nvidia-smi -L
start=$SECONDS
"${G[@]}" collect --tasks "$TASKS" --episodes "$EPISODES" --max-episode-steps 2000 --num-envs 16 --out data \
    --no-progress >"$OUT/collect.log" 2>&1
echo "collect: exit $? after $((SECONDS - start)) s"
# The run stops 30 s short of the call's 10 minutes, whatever of its evaluation is left (LIMIT: other seconds);
# the cloning's checkpoint is written when its minutes are up, and packing it takes seconds.
timeout "${LIMIT:-$((570 - SECONDS))}" "${G[@]}" run --preset "$PRESET" --name "$NAME" --max-minutes "$MINUTES" \
    --record.dagger-rounds 0 --record.atari-episodes "$EPISODES" --batch-size "$BATCH" --accumulation 1 \
    --num-workers "$WORKERS" --no-progress >"$OUT/run.log" 2>&1
echo "run: exit $? after $((SECONDS - start)) s (124: cut by its limit, after the checkpoint)"
checkpoint=$(ls -d "runs/$NAME"/checkpoints/step-* | tail -1) || exit 1
echo "checkpoint: $checkpoint"
split -b 15M "$checkpoint/model.safetensors" "$OUT/model.safetensors.part-"
staging=$(mktemp -d)
mkdir "$staging/checkpoint"
cp "$checkpoint"/{config.json,text.model,trainer.json} "$staging/checkpoint/"  # no optimizer: rounds start fresh
cp "runs/$NAME"/{metrics.csv,config.json,train_config.json,precision.json} "$staging/" 2>/dev/null
tar czf "$OUT/cloning.tar.gz" -C "$staging" .
ls -la "$OUT"
