#!/usr/bin/env bash
# One prepared run for a lent GPU (H100 / H200, under 10 minutes: each part is time-limited,
# 560 s in all, so one `run` call with timeout_s=600 holds it): bf16 flava_full training
# step, ours vs transformers, eager and torch.compile; embedding throughput; the plan's memory
# estimate next to the measured peak. Installs nothing and needs no network.
#
#   bash benchmarks/gpu.sh                 # results under $OUT (or benchmarks/gpu-results/)
#   BATCH=96 STEPS=10 bash benchmarks/gpu.sh
#
# Python: $PYTHON, else the repository's .venv when it has a CUDA torch, else python3; the
# package is taken from src/ (PYTHONPATH), `pip install -e . --no-deps` only when that fails.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/gpu-results}"
mkdir -p "$OUT"
BATCH="${BATCH:-128}"  # pairs per step: ~36 GiB for ours by flava.plan (max ~290 on 80 GiB);
# transformers' eager attention keeps B x heads x N^2 scores per layer, so it needs more
STEPS="${STEPS:-10}"
PRESET="${PRESET:-flava_full}"
DEVICE="${DEVICE:-cuda}"  # DEVICE=cpu PRESET=tiny BATCH=4 STEPS=2: a smoke run without a GPU
LOG="$OUT/gpu.log"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

pick_python() {
    local candidate
    for candidate in "${PYTHON:-}" .venv/bin/python python3 python; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
        if "$candidate" -c "import torch, sys; sys.exit(0 if '$DEVICE' == 'cpu' or \
torch.cuda.is_available() else 1)" 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

PY="$(pick_python)" || { echo "no Python with a CUDA-enabled torch found" | tee "$LOG"; exit 1; }
if ! "$PY" -c "import flava.plan" 2>/dev/null; then
    "$PY" -m pip install -q -e . --no-deps 2>&1 | tail -2
fi
SIDES="ours,transformers"
"$PY" -c "import transformers" 2>/dev/null || SIDES="ours"

run() {  # run NAME LIMIT_S COMMAND...: log, time-limit, keep going on failure
    local name="$1" limit="$2"
    shift 2
    echo "=== $name: $*" | tee -a "$LOG"
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "=== $name: exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}

{
    date -Is
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv || true
    "$PY" -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda)"
    echo "python $PY, preset $PRESET, device $DEVICE, sides $SIDES, batch $BATCH, steps $STEPS"
} 2>&1 | tee "$LOG"

COMMON=(--device "$DEVICE" --preset "$PRESET" --steps "$STEPS")
run plan 20 "$PY" -m flava.plan --preset "$PRESET" --gpus 1 --gpu-memory "${GPU_MEMORY:-80}" \
    --batch-size "$BATCH" --text-length 40 --json "$OUT/plan.json"
run train_bf16 170 "$PY" benchmarks/train_step.py "${COMMON[@]}" --precision bf16-mixed \
    --batch-size "$BATCH" --sides "$SIDES" --json "$OUT/train_bf16.json"
run train_bf16_compile 200 "$PY" benchmarks/train_step.py "${COMMON[@]}" --precision bf16-mixed \
    --batch-size "$BATCH" --compile --no-flops --sides "$SIDES" \
    --json "$OUT/train_bf16_compile.json"
# Candidate changes, ours only, against ours in train_bf16: no host sync on the padding mask,
# channels-last codebook.
run train_bf16_experiments 90 "$PY" benchmarks/train_step.py "${COMMON[@]}" \
    --precision bf16-mixed --batch-size "$BATCH" --no-flops --sides ours \
    --experiment always-mask,codebook-channels-last --json "$OUT/train_bf16_experiments.json"
run inference_bf16 80 "$PY" benchmarks/inference.py "${COMMON[@]}" --precision bf16 \
    --batch-size 256 --json "$OUT/inference_bf16.json"
echo "results in $OUT" | tee -a "$LOG"
