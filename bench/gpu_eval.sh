#!/usr/bin/env bash
# GPU check 4 of 4: evaluation and analysis. Sampling at the 1.1B shape (4 problems x 50 samples x 256 new tokens
# in one batch of 200; ftlab's static cache and CUDA graphs against model.generate, greedy samples compared, then
# 2 LoRA checkpoints swapped in), and the spectrum at the 7B shape (one block's 7 matrices; svdvals against the
# Gram path on one matrix of each shape; ftlab against a per-matrix svdvals loop; with intruder dimensions, a first
# checkpoint and a next one whose base SVDs are reused); vLLM's sampling at the same 1.1B shape against ftlab's
# sampler (engine start, s / 1k samples, greedy compared; says so and measures nothing where vLLM is not installed).
# One device call (see bench/gpu_lib.sh).
source "$(dirname "$0")/gpu_lib.sh"
header
B=1.1b; SPECTRUM="--shape 7b --layers 1 --single 4096x4096,4096x11008,11008x4096 --intruders"
SAMPLE="--problems 4 --n 50 --new-tokens 256 --batch 200 --adapters 2"
VLLM="--problems 4 --n 50 --new-tokens 256 --batch 200"
if [ -n "${DRY:-}" ]; then
    B=tiny; SPECTRUM="--shape small --layers 1 --single 64x64 --intruders"
    SAMPLE="--problems 3 --n 3 --new-tokens 4 --prompt-len 16 --batch 4 --cache static --check-problems 1 --adapters 2"
    VLLM="--problems 2 --n 2 --new-tokens 4 --prompt-len 16 --batch 4 --check-problems 1"
fi
row 200 python bench/sample_throughput.py --shape $B $SAMPLE
row 150 python bench/spectrum.py $SPECTRUM
row 120 python bench/vllm_throughput.py --shape $B $VLLM
finish
