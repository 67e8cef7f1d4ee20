#!/usr/bin/env bash
# GPU check 1 of 4: the training step at the 1.1B shape (TinyLlama-1.1B), batch 8 x 2048, against the plain
# Transformers + PEFT loop: full FT, LoRA r=16 and r=256 (ftlab's defaults; LoRA also against the reference on a
# bf16 frozen base), train.precision fp32, and FSDP's own cost on one GPU. One device call (see bench/gpu_lib.sh).
source "$(dirname "$0")/gpu_lib.sh"
header
B=1.1b; SEQ=2048; BATCH=8; STEPS=10; WARM=2; RANKS=16,256; RANK=16; GPU_LIKE=""
if [ -n "${DRY:-}" ]; then  # the CPU through the paths a GPU takes: bf16 autocast, a bf16 frozen base, chunked loss
    B=tiny; SEQ=16; BATCH=2; STEPS=1; WARM=1; RANKS=4; RANK=4
    GPU_LIKE="--loss chunked --set train.precision=bf16-autocast"
fi
TRAIN="bench/train_throughput.py --shape $B --batch $BATCH --seq $SEQ --steps $STEPS --warmup $WARM --in-process"
row 240 python $TRAIN --ranks $RANKS $GPU_LIKE
row 90 python $TRAIN --ranks $RANK --no-full --reference fp32 $GPU_LIKE --set train.precision=fp32
row 120 python bench/fsdp_overhead.py --shape $B --method lora --batch $BATCH --seq $SEQ --steps $STEPS --warmup $WARM
finish
