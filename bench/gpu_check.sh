#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md in one run of a few minutes (one H100: about 8 min before the fp32 row), for
# the `device` tool:
#   bash bench/gpu_check.sh            # writes $OUT/gpu_check.log (or ./gpu_check.log)
#   DRY=1 bash bench/gpu_check.sh      # the same commands on tiny shapes, to check the script on a CPU (CI: < 1 min)
# The GPU machine has torch, transformers and peft preinstalled and no network: ftlab runs from src/.
# DRY runs the CPU through the paths a GPU takes (bf16 autocast, a bf16 frozen base, the chunked loss, the static
# cache), except torch.compile's Inductor, whose CPU compile would take minutes: the compile row runs uncompiled.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
LOG="${OUT:-.}/gpu_check.log"
FAILED=0
run() {  # each figure under its own time limit, so one slow case does not take the others with it
    local limit=$1; shift
    echo "### $* (limit ${limit}s)" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | grep -v -i "warn" | tee -a "$LOG"
    local status=${PIPESTATUS[0]}
    if [ "$status" -ne 0 ]; then echo "!!! exit status $status" | tee -a "$LOG"; FAILED=1; fi
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  python -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} 2>&1 | tee -a "$LOG"
T=bench/train_throughput.py
B=1.1b; B7=7b; SEQ=2048; BATCH=8; BATCH7=2; STEPS=10; STEPS7=5; RANKS=16,256; RANK=16; GPU_LIKE=""; NO_COMPILE=""
SAMPLE="--problems 4 --n 50 --new-tokens 256 --batch 200 --adapters 2"
if [ -n "${DRY:-}" ]; then
    B=tiny; B7=tiny; SEQ=16; BATCH=2; BATCH7=2; STEPS=1; STEPS7=1; RANKS=4; RANK=4
    GPU_LIKE="--in-process --warmup 1 --loss chunked --set train.precision=bf16-autocast"  # auto's CUDA choices
    NO_COMPILE="env TORCHDYNAMO_DISABLE=1"
    SAMPLE="--problems 3 --n 3 --new-tokens 4 --prompt-len 16 --batch 4 --cache static --check-problems 1"
    SAMPLE="$SAMPLE --adapters 2"
fi
TRAIN="$T --shape $B --batch $BATCH --seq $SEQ --steps $STEPS"
# 1.1B shape, batch 8 x 2048: ftlab's defaults against the PEFT-defaults reference (issue 6's targets); LoRA also
# against the reference on a bf16 frozen base (ftlab's own layout)
run 150 python $TRAIN --ranks $RANKS $GPU_LIKE
# each optimization on its own (LoRA r=16): fused LoRA off, chunked loss off, torch.compile on
run 60 python $TRAIN --ranks $RANK --no-full $GPU_LIKE --set train.fused_lora=false
run 60 python $TRAIN --ranks $RANK --no-full $GPU_LIKE --loss full
run 150 $NO_COMPILE python $TRAIN --ranks $RANK $GPU_LIKE --set train.compile=true
# train.precision fp32: an fp32 frozen base for LoRA too, the same dtype as the reference's
run 60 python $TRAIN --ranks $RANK --no-full $GPU_LIKE --set train.precision=fp32
# 7B shape, LoRA r=16 at batch 2 (full finetuning needs more than one GPU's memory)
run 120 python $T --shape $B7 --batch $BATCH7 --seq $SEQ --steps $STEPS7 --ranks $RANK --no-full $GPU_LIKE
# sampling: 4 problems x 50 samples x 256 new tokens in one batch of 200, ftlab's sampler against model.generate;
# then 2 LoRA checkpoints swapped in, each decoded by the compiled step (no recompile, CUDA graphs see the weights)
run 200 python bench/sample_throughput.py --shape $B $SAMPLE
# FSDP's own cost on one GPU
run 90 python bench/fsdp_overhead.py --shape $B --method lora --batch $BATCH --seq $SEQ --steps $STEPS
RESULT="every section ran"; [ "$FAILED" -eq 0 ] || RESULT="some section failed (!!! above)"
echo "### done: $RESULT" | tee -a "$LOG"
exit "$FAILED"
