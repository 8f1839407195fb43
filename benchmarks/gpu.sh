#!/usr/bin/env bash
# One prepared run for a lent GPU (H100 / H200, under 10 minutes: each part is time-limited,
# 560 s in all, so one `run` call with timeout_s=600 holds it): bf16 flava_full training
# step, ours vs transformers, eager (with a profile of one step: the top operators by GPU self
# time) and torch.compile (layer by layer as training does, and ours' whole loss function in one
# torch.compile with its graph-break count); the real `flava.train` under FSDP2 +
# compile + bf16; embedding throughput; the plan's memory estimate next to the measured peak.
# Installs nothing and needs no network.
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
run plan 15 "$PY" -m flava.plan --preset "$PRESET" --gpus 1 --gpu-memory "${GPU_MEMORY:-80}" \
    --batch-size "$BATCH" --text-length 40 --json "$OUT/plan.json"
run train_bf16 140 "$PY" benchmarks/train_step.py "${COMMON[@]}" --precision bf16-mixed \
    --batch-size "$BATCH" --sides "$SIDES" --profile --json "$OUT/train_bf16.json"
run train_bf16_compile 160 "$PY" benchmarks/train_step.py "${COMMON[@]}" --precision bf16-mixed \
    --batch-size "$BATCH" --compile --no-flops --sides "$SIDES" \
    --json "$OUT/train_bf16_compile.json"
# Whole step: does compiling more than the layers pay on a GPU? (on 2 Zen 4 cores it did not)
# (one warm-up step and 3 timed: its compile takes most of the part; untried on a GPU)
run train_bf16_compile_step 110 "$PY" benchmarks/train_step.py --device "$DEVICE" \
    --preset "$PRESET" --steps 3 --warmup-steps 1 --precision bf16-mixed --batch-size "$BATCH" \
    --no-flops --sides ours,ours-compiled-step --json "$OUT/train_bf16_compile_step.json"
# The real command under sharding: FSDP2 (one process, so nothing is split, but every unit is
# gathered and reduce-scattered as on many) + torch.compile + bf16-mixed, pair batches of the
# embedded scenes; samples/s per logged step in the log, the step count and seconds in metrics.json.
FSDP_STEPS=$((STEPS + 10))
run train_fsdp_compile_bf16 100 "$PY" -m torch.distributed.run --nproc_per_node 1 \
    --master_port 29555 -m flava.train config=pretraining/demo.yaml \
    "training.run_dir=$OUT/fsdp_run" "model.preset=$PRESET" "training.batch_size=$BATCH" \
    training.num_workers=8 "training.lightning.accelerator=$([ "$DEVICE" = cpu ] && echo cpu || echo gpu)" \
    training.lightning.devices=1 training.lightning.strategy=fsdp \
    training.lightning.precision=bf16-mixed training.lightning.force_precision=true \
    training.compile=true "training.lightning.max_steps=$FSDP_STEPS" training.warmup_steps=5 \
    training.lightning.log_every_n_steps=1 training.lightning.limit_val_batches=1 \
    training.lightning_checkpoint.every_n_train_steps=null training.evaluation.enabled=false \
    "datasets.selected=[vl]"
run inference_bf16 35 "$PY" benchmarks/inference.py "${COMMON[@]}" --precision bf16 \
    --batch-size 256 --json "$OUT/inference_bf16.json"
echo "results in $OUT" | tee -a "$LOG"
