#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md in one run of a few minutes (one H100: about 8 min), for the `device` tool:
#   bash bench/gpu_check.sh            # writes $OUT/gpu_check.log (or ./gpu_check.log)
#   DRY=1 bash bench/gpu_check.sh      # the same commands on tiny shapes, to check the script on a CPU
# The GPU machine has torch, transformers and peft preinstalled and no network: ftlab runs from src/.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
LOG="${OUT:-.}/gpu_check.log"
run() {  # each figure under its own time limit, so one slow case does not take the others with it
    local limit=$1; shift
    echo "### $* (limit ${limit}s)" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | grep -v -i "warn" | tee -a "$LOG"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no GPU"
  python -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} 2>&1 | tee -a "$LOG"
T=bench/train_throughput.py
B=1.1b; B7=7b; SEQ=2048; SAMPLE="--problems 4 --n 50 --new-tokens 256 --batch 200"
if [ -n "${DRY:-}" ]; then B=tiny; B7=tiny; SEQ=64; SAMPLE="--problems 2 --n 4 --new-tokens 8 --batch 8"; fi
# 1.1B shape, batch 8 x 2048: ftlab's defaults against the PEFT-defaults reference (issue 6's targets)
run 150 python $T --shape $B --batch 8 --seq $SEQ --steps 10 --ranks 16,256
# each optimization on its own (LoRA r=16): fused LoRA off, chunked loss off, torch.compile on
run 60 python $T --shape $B --batch 8 --seq $SEQ --steps 10 --ranks 16 --no-full --set train.fused_lora=false
run 60 python $T --shape $B --batch 8 --seq $SEQ --steps 10 --ranks 16 --no-full --loss full
run 150 python $T --shape $B --batch 8 --seq $SEQ --steps 10 --ranks 16 --set train.compile=true
# 7B shape, LoRA r=16 at batch 2 (full finetuning needs more than one GPU's memory)
run 120 python $T --shape $B7 --batch 2 --seq $SEQ --steps 5 --ranks 16 --no-full
# sampling: 4 problems x 50 samples x 256 new tokens in one batch of 200, ftlab's sampler against model.generate
run 150 python bench/sample_throughput.py --shape $B $SAMPLE
# FSDP's own cost on one GPU
run 90 python bench/fsdp_overhead.py --shape $B --method lora --batch 8 --seq $SEQ --steps 10
