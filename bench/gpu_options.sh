#!/usr/bin/env bash
# GPU check 2 of 4: each fast-training option on its own at the 1.1B shape, batch 8 x 2048, against one reference
# per row: LoRA r=16 with fused LoRA off, the full loss instead of the chunked one, torch.compile, activation
# checkpointing, and compile with activation checkpointing; full FT with compile and compile with checkpointing.
# Every case takes 3 warm-up steps (its compiles) before the timed ones. One device call (see bench/gpu_lib.sh).
source "$(dirname "$0")/gpu_lib.sh"
header
B=1.1b; SEQ=2048; BATCH=8; STEPS=10; WARM=3; RANK=16; GPU_LIKE=""; NO_COMPILE=""
if [ -n "${DRY:-}" ]; then  # Inductor's CPU compile would take minutes: the compile cases run uncompiled here
    B=tiny; SEQ=16; BATCH=2; STEPS=1; WARM=1; RANK=4
    GPU_LIKE="--loss chunked --set train.precision=bf16-autocast"; NO_COMPILE="env TORCHDYNAMO_DISABLE=1"
fi
TRAIN="bench/train_throughput.py --shape $B --batch $BATCH --seq $SEQ --steps $STEPS --warmup $WARM --in-process"
COMPILE="compile:train.compile=true"
BOTH="compile+ckpt:train.compile=true,train.activation_checkpointing=true"
row 300 $NO_COMPILE python $TRAIN --no-full --ranks $RANK --reference bf16 $GPU_LIKE \
    --variant "fused off:train.fused_lora=false" --variant "full loss:train.loss=full" --variant "$COMPILE" \
    --variant "ckpt:train.activation_checkpointing=true" --variant "$BOTH"
row 150 $NO_COMPILE python $TRAIN --no-lora --reference fp32 $GPU_LIKE --variant "$COMPILE" --variant "$BOTH"
finish
