#!/usr/bin/env bash
# GPU check 3 of 4: the 7B shape (Llama-2-7B), sequences of 2048. LoRA r=16 at batch 2 against both references
# (an fp32 and a bf16 frozen base). Full FT: fp32 weights, gradients and AdamW's two moments take 16 bytes per
# parameter, 108 GB for 6.7B, more than an H100's 80 GB at any batch; on an H200 (141 GB) it fits with activation
# checkpointing and the chunked loss at batch 2 x 2048 (~105 GiB estimated), against the reference loop with
# gradient checkpointing; on a smaller GPU the row says so and is skipped. One device call (see bench/gpu_lib.sh).
source "$(dirname "$0")/gpu_lib.sh"
header
B=7b; SEQ=2048; BATCH=2; STEPS=5; FULL_STEPS=3; WARM=2; RANK=16; GPU_LIKE=""; NEED_GIB=120
if [ -n "${DRY:-}" ]; then
    B=tiny; SEQ=16; STEPS=1; FULL_STEPS=1; WARM=1; RANK=4; NEED_GIB=0
    GPU_LIKE="--loss chunked --set train.precision=bf16-autocast"
fi
TRAIN="bench/train_throughput.py --shape $B --batch $BATCH --seq $SEQ --warmup $WARM --in-process"
row 180 python $TRAIN --steps $STEPS --no-full --ranks $RANK $GPU_LIKE
HAVE=$(gpu_gib)
if [ "$HAVE" -ge "$NEED_GIB" ]; then
    row 270 python $TRAIN --steps $FULL_STEPS --no-lora --reference fp32 $GPU_LIKE \
        --set train.activation_checkpointing=true
else
    echo "### skipped: 7B full FT needs about ${NEED_GIB} GiB (an H200); this GPU has ${HAVE} GiB" | tee -a "$LOG"
fi
finish
