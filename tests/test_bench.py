"""The benchmarks run end to end on the CPU (tiny shapes, a step or two), so a broken script shows up in CI.

They assert what the scripts print (both sides measured, ratios given, greedy samples equal), never the speed.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_train_throughput_measures_ftlab_and_the_reference_side_by_side():
    out = run("train_throughput.py", "--batch", "2", "--seq", "32", "--steps", "1", "--warmup", "0",
              "--ranks", "4", "--set", "train.fused_lora=true")
    rows = {line.split()[0] + (line.split()[1] if line.startswith("lora") else ""): line.split()
            for line in out.splitlines() if re.match(r"^(full|lora r=)", line)}
    assert set(rows) == {"full", "lorar=4"}, out
    for cells in rows.values():
        numbers = [c.replace(",", "") for c in cells if re.fullmatch(r"[\d,.]+", c)]
        assert len(numbers) == 6 and all(float(x) > 0 for x in numbers), cells  # tok/s x2, ratio, GiB x2, ratio


def test_sample_throughput_compares_greedy_samples():
    out = run("sample_throughput.py", "--problems", "2", "--n", "2", "--new-tokens", "4", "--batch", "4",
              "--prompt-len", "16", "--check-problems", "2")
    assert "speedup (ref time / ftlab time)" in out
    assert "greedy samples identical: yes" in out, out


def test_train_throughput_measures_the_reference_on_a_bf16_base_too():
    """Where ftlab's LoRA holds its frozen base in bf16 (bf16 precision), a second row compares it with the
    reference loop on a bf16 frozen base, not only with PEFT's fp32 default."""
    out = run("train_throughput.py", "--batch", "2", "--seq", "16", "--steps", "1", "--warmup", "0", "--ranks", "4",
              "--no-full", "--in-process", "--set", "train.precision=bf16-autocast")
    assert "LoRA's frozen base: ftlab bfloat16, reference float32" in out, out
    rows = [line.split() for line in out.splitlines() if re.match(r"^(lora r=4|ref bf16 base r=4) ", line)]
    assert [r[0] for r in rows] == ["lora", "ref"], out
    for cells in rows:
        numbers = [c.replace(",", "") for c in cells if re.fullmatch(r"[\d,.]+", c)]
        assert len(numbers) == 6 and all(float(x) > 0 for x in numbers), cells


GPU_CHECKS = {  # script -> what its DRY run must print, besides a row for each command
    "gpu_train": [r"^full +[\d,]+ +[\d,]+ +\d+\.\d\d", r"^lora r=4 +[\d,]+ +[\d,]+ +\d+\.\d\d",
                  r"^ref bf16 base r=4 ", r"LoRA's frozen base: ftlab float32", r"FSDP / plain \d+\.\d\d"],
    "gpu_options": [rf"^lora r=4 {v} +[\d,]+ +[\d,]+ +\d+\.\d\d" for v in
                    ("fused off", "full loss", "compile", "ckpt", r"compile\+ckpt")]
                   + [rf"^full {v} +[\d,]+ +[\d,]+" for v in ("compile", r"compile\+ckpt")],
    "gpu_7b": [r"^lora r=4 +[\d,]+ +[\d,]+ +\d+\.\d\d", r"^ref bf16 base r=4 ", r"^full +[\d,]+ +[\d,]+"],
    "gpu_eval": [r"compiles in the timed part: 0", r"greedy samples identical: yes",
                 r"compiles in the greedy check: 0", r"greedy identical to model.generate: 2/2 adapters",
                 r"identical for all 7 matrices", r"next ckpt +\d+\.\d",
                 r"vLLM is not installed here: nothing measured|greedy identical to ftlab's sampler: yes"],
}


@pytest.mark.parametrize("script", sorted(GPU_CHECKS))
def test_each_gpu_check_dry_runs_within_one_device_call(tmp_path, script):
    """`DRY=1 bash bench/<script>.sh`: every command of that GPU check, on tiny shapes, ends without an error and
    prints its figures (CI runs this; the GPU run is the same script), and the time limits its rows get on a GPU
    add up to at most 8 minutes: one device call (10 minutes at most) each, with margin."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DRY": "1", "OUT": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", str(BENCH / f"{script}.sh")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sections = proc.stdout.split("### ")[1:]
    limits = [int(re.search(r"\(limit (\d+)s\)", s).group(1)) for s in sections[:-1]]
    assert len(limits) == len(sections) - 1 >= 2, proc.stdout
    assert sections[-1].startswith(f"done: every row ran; rows allowed {sum(limits)}s of 480s"), sections[-1]
    assert sum(limits) <= 480
    assert "!!!" not in proc.stdout and " failed:" not in proc.stdout
    for pattern in GPU_CHECKS[script]:
        assert re.search(pattern, proc.stdout, re.M), (pattern, proc.stdout)
    assert (tmp_path / f"{script}.log").read_text().count("### ") == len(sections)


def test_mfu_counts_the_standard_flops_with_attention():
    """ftlab.plan.cost (the planner's device-hours and the benchmarks' MFU): 6N + 12·L·h·s per token for full FT (N:
    every weight a token is multiplied by: the blocks and the head, not the input embedding), less the head's weight
    gradients when it is frozen, 4N + 6·N_adapter + 12·L·h·s for LoRA, where N_adapter is exactly what LoRA trains."""
    from transformers import LlamaConfig

    from ftlab.config import MethodConfig, RunConfig
    from ftlab.methods import apply_method, count_params
    from ftlab.model import build_tiny
    from ftlab.plan.cost import train_flops_per_token

    h, layers, heads, kv, inter, vocab, seq = 64, 3, 4, 2, 176, 259, 128
    config = LlamaConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                         intermediate_size=inter, vocab_size=vocab)
    kv_dim = h // heads * kv
    norms = layers * 2 * h + h
    n = layers * (2 * h * h + 2 * h * kv_dim + 3 * h * inter) + norms + vocab * h
    attention = 12 * layers * h * seq
    assert train_flops_per_token(config, MethodConfig(name="full"), seq) == 6 * n + attention
    assert train_flops_per_token(config, MethodConfig(name="full", freeze_embeddings=True), seq) == \
        6 * n - 2 * vocab * h + attention
    cfg = RunConfig()
    cfg.model.tiny.hidden_size, cfg.model.tiny.layers, cfg.model.tiny.heads = h, layers, heads
    cfg.model.tiny.kv_heads, cfg.model.tiny.intermediate_size = kv, inter
    for targets in ("all", "attn", ["q_proj", "down_proj"]):
        cfg.method = MethodConfig(name="lora", rank=4, targets=targets)
        adapter = count_params(apply_method(build_tiny(cfg.model.tiny)[0], cfg)).trainable
        assert train_flops_per_token(config, cfg.method, seq) == 4 * n + 6 * adapter + attention, targets


def test_sample_throughput_warms_up_every_shape_the_timed_part_meets():
    """The timed part runs every row batch_size at a time: a smaller last batch and another static cache size are
    shapes of their own (a compile and a CUDA graph capture each), so the warm-up holds one batch of each."""
    sys.path.insert(0, str(BENCH))
    try:
        from sample_throughput import prompts, warmup_batches
    finally:
        sys.path.remove(str(BENCH))
    from ftlab.evaluate.sampler import static_slots

    rows = [p for p in prompts("tiny", 7, 40) for _ in range(3)]  # 21 rows, prompts of 20 to 60 tokens
    timed = [rows[i:i + 4] for i in range(0, len(rows), 4)]

    def shape(batch):
        return len(batch), static_slots(max(map(len, batch)), 70)

    warm = warmup_batches(rows, 4, 70)
    assert sorted(map(shape, warm)) == sorted(set(map(shape, timed)))
    assert len(warm) >= 3  # rows 4 and 1; 128 and 256 slots
