"""What a run costs in compute: FLOPs per token, the GPUs ftlab plans for, the MFU assumed (or measured), and
device-hours.

    flops_per_token(arch, seq_len)                    # full finetuning: 6N + 12·L·h·T
    flops_per_token(arch, seq_len, trainable=adapters)  # LoRA: 4N + 6·N_adapters + 12·L·h·T
    mfu, source = mfu_for("H100", "lora")            # BENCHMARKS.md's measured figure, else ASSUMED_MFU

The one home of the FLOPs count: the plan's device-hours and the benchmarks' MFU both ask flops_per_token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ftlab.architectures import target_modules
from ftlab.config import MethodConfig
from ftlab.errors import ConfigError
from ftlab.plan.memory import GIB, Architecture, architecture

ASSUMED_MFU = 0.35  # model FLOPs utilisation where BENCHMARKS.md has no measured figure for the GPU and method:
# between the plain Transformers + PEFT loop's 29-33% (full FT, 1.1B, one H100) and llm-foundry's published 46%
BENCHMARKS = Path(__file__).resolve().parents[3] / "BENCHMARKS.md"  # in a source checkout; absent when installed
MFU_SECTION = "## MFU for planning"  # BENCHMARKS.md's table: | GPU | method | MFU | command |


@dataclass(frozen=True)
class GPU:
    name: str  # as its CUDA device name contains it (H100), or "<x> GiB"
    memory_gib: float  # the total memory CUDA reports
    peak_tflops: float | None  # dense bf16 (None: unknown, so no device-hours)

    @property
    def memory(self) -> float:
        return self.memory_gib * GIB


GPUS = {
    "h100": GPU("H100", 79.1, 989.4),  # 80 GB SXM
    "h200": GPU("H200", 139.7, 989.4),
    "a100": GPU("A100", 79.1, 312.0),  # 80 GB
    "l40s": GPU("L40S", 44.4, 362.0),
}


def gpu(spec: str) -> GPU:
    """--gpu: a known name (h100, h200, a100, l40s) or a memory size in GiB."""
    key = spec.strip().lower()
    if key in GPUS:
        return GPUS[key]
    try:
        size = float(key.removesuffix("gib"))
    except ValueError:
        size = 0.0
    if size <= 0:
        raise ConfigError(f"--gpu: expected {', '.join(GPUS)} or a memory size in GiB (e.g. 48), got {spec!r}")
    return GPU(f"{size:g} GiB", size, None)


def local_gpu(index: int = 0) -> GPU:
    """The CUDA device this process trains on: its memory, and its peak if its name is in GPUS."""
    import torch

    props = torch.cuda.get_device_properties(index)
    known = next((g for g in GPUS.values() if g.name.lower() in props.name.lower()), None)
    return GPU(props.name, props.total_memory / GIB, known.peak_tflops if known else None)


def flops_per_token(arch: Architecture, seq_len: int, trainable: int | None = None) -> float:
    """Model FLOPs of one trained token (the standard count; recomputation is not in it):
    full finetuning 6N + 12·L·h·T: forward 2N, backward 4N (gradients of activations and of weights);
    LoRA (trainable = the adapters' parameters) 4N + 6·N_trainable + 12·L·h·T: frozen weights get no weight
    gradient.
    N: parameters that multiply activations (all but the input embedding tables; a tied head counts once);
    12·L·h·T: attention's score and value matmuls, forward and backward, at sequence length T (h = heads x
    head_dim, the hidden width for most models; the causal mask's skipped half is counted, as is usual)."""
    n = arch.params - arch.input_embedding_params + (arch.vocab * arch.hidden if not arch.head_params else 0)
    attention = 12 * arch.layers * arch.q_width * seq_len
    if trainable is None:
        return 6 * n + attention
    return 4 * n + 6 * trainable + attention


def train_flops_per_token(config, method: MethodConfig, seq_len: int) -> float:
    """flops_per_token for a Hugging Face config (AutoConfig) and a run's method (full, full with frozen
    embeddings and head, LoRA of its rank and targets): the benchmarks' MFU numerator. Builds the model's
    structure on the meta device only (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM


    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    arch = architecture(model)
    if method.name == "full":
        frozen_head = arch.head_params or arch.vocab * arch.hidden  # a tied head is frozen with the embeddings
        return flops_per_token(arch, seq_len) - (2 * frozen_head if method.freeze_embeddings else 0)
    return flops_per_token(arch, seq_len, arch.lora_params(target_modules(model, method.targets), method.rank))


def recompute_flops_per_token(arch: Architecture, seq_len: int) -> float:
    """What activation checkpointing adds: the blocks' forward pass once more."""
    blocks = arch.layers * arch.block_params
    return 2 * blocks + 4 * arch.layers * arch.q_width * seq_len


def mfu_for(gpu_name: str, method: str, benchmarks: Path = BENCHMARKS) -> tuple[float, str]:
    """(MFU, where it comes from): the figure BENCHMARKS.md's MFU_SECTION table gives for this GPU and method
    (full or lora), measured by a benchmark; else ASSUMED_MFU, an assumption."""
    for row in _mfu_rows(benchmarks):
        if row[0].lower() in gpu_name.lower() and row[1].lower() == method:
            return float(row[2].rstrip("%")) / 100, f"measured ({benchmarks.name}: {row[0]} {row[1]})"
    return ASSUMED_MFU, "assumed"


def _mfu_rows(path: Path) -> list[list[str]]:
    """The rows of the MFU table in BENCHMARKS.md: [GPU, method, MFU, ...]; none when the file or table is absent."""
    if not path.is_file():
        return []
    rows, inside = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line.strip() == MFU_SECTION
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if inside and line.startswith("|") and len(cells) >= 3 and re.fullmatch(r"[\d.]+%?", cells[2]):
            rows.append(cells)
    return rows


def device_hours(tokens: float, per_token: float, gpu: GPU, mfu: float) -> float | None:
    """GPU-hours to push `tokens` through at `per_token` FLOPs each, at mfu of the GPU's peak (None: peak unknown)."""
    if gpu.peak_tflops is None:
        return None
    return tokens * per_token / (mfu * gpu.peak_tflops * 1e12) / 3600
