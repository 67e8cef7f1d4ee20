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
