"""The benchmarks run end to end on the CPU (tiny shapes, a step or two), so a broken script shows up in CI.

They assert what the scripts print (both sides measured, ratios given, greedy samples equal), never the speed.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

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


def test_fsdp_overhead_runs_both_sides():
    out = run("fsdp_overhead.py", "--batch", "2", "--seq", "32", "--steps", "1", "--warmup", "0", "--method", "lora")
    assert re.search(r"FSDP / plain \d+\.\d\d", out), out


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


def test_gpu_check_dry_runs_every_section(tmp_path):
    """`DRY=1 bash bench/gpu_check.sh`: every command of the GPU check, on tiny shapes, ends without an error and
    prints its figures (CI runs this; the GPU run is the same script)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DRY": "1", "OUT": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sections = proc.stdout.split("### ")[1:]
    assert [s.split()[0] for s in sections] == ["python"] * 3 + ["env"] + ["python"] * 4 + ["done:"], proc.stdout
    assert sections[-1].startswith("done: every section ran")
    assert "!!!" not in proc.stdout and " failed:" not in proc.stdout
    train, sample, fsdp = sections[:6], sections[6], sections[7]
    for section in train:
        assert re.search(r"^lora r=4 +[\d,]+ +[\d,]+ +\d+\.\d\d", section, re.M), section
    assert all("ref bf16 base r=4" in s for i, s in enumerate(train) if i != 4)  # bf16 precision, as on CUDA
    assert "LoRA's frozen base: ftlab float32" in train[4]  # the train.precision=fp32 row
    assert "compiles in the timed part: 0" in sample and "greedy samples identical: yes" in sample, sample
    assert "greedy identical to model.generate: 2/2 adapters" in sample, sample
    assert re.search(r"FSDP / plain \d+\.\d\d", fsdp), fsdp
    assert (tmp_path / "gpu_check.log").read_text().count("### ") == len(sections)


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
