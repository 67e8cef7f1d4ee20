"""A run made to fit its device before it starts: activation checkpointing when it would not fit without, then a
smaller micro-batch (the global batch kept by accumulation); a run that still does not fit is refused (exit 3).

    cfg = fit_run(cfg, device)            # ftlab train: the choices printed, the fitted config returned
    result = fit(cfg, model, arch, device="cuda", memory=gpu.memory, processes=8)   # ftlab plan, ftlab run

A run fits when its predicted peak (ftlab.plan.memory) is at most HEADROOM of the device's memory: the rest is the
CUDA context, the allocator's fragmentation and the communication buffers. On the CPU nothing is checked and
`auto` means off.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ftlab import loss
from ftlab.architectures import decoder_blocks, structure, target_modules
from ftlab.config import RunConfig
from ftlab.errors import FtlabError
from ftlab.methods import qlora_base_bytes
from ftlab.model import resolve_dtype, resolve_precision
from ftlab.plan.cost import local_gpu
from ftlab.plan.memory import GIB, Architecture, Memory, Setup, architecture, predict

HEADROOM = 0.9  # the share of a device's memory a run's predicted peak may take


class DoesNotFit(FtlabError):
    """A run whose predicted peak memory exceeds its device's, with every choice that could help tried. Exit 3."""

    exit_code = 3


@dataclass
class Fit:
    """A run's settings for its device, and what they cost."""

    cfg: RunConfig  # train.activation_checkpointing resolved to true or false; train.micro_batch as chosen
    memory: Memory
    setup: Setup
    limit: float | None  # the bytes the run may take (HEADROOM of the device's memory); None: not checked
    choices: list[str] = field(default_factory=list)  # each setting the plan chose, and why

    @property
    def fits(self) -> bool:
        return self.limit is None or self.memory.peak <= self.limit


def setup(cfg: RunConfig, model: nn.Module, arch: Architecture, device: str, processes: int = 1,
          sharded: bool = False, checkpointing: bool = False, micro_batch: int | None = None) -> Setup:
    """What the memory model reads off a run config, for a run on `device` ("cuda" or "cpu") over `processes`
    processes (sharded: FSDP). `model`: the run's base model, on the meta device.

    Under FSDP gradients are reduce-scattered after every micro-batch (each process keeps 1/N of them, never the
    whole model's) and the chunked loss is available: the memory model counts them so."""
    dev = torch.device(device)
    precision = resolve_precision(cfg.train.precision, dev)
    full = cfg.method.name == "full"
    weights = resolve_dtype(cfg.model, dev, full, cfg.train.precision)
    weight_bytes = weights.itemsize
    compute = 2 if precision == "bf16-autocast" else weight_bytes
    m = cfg.method
    if full:
        frozen = arch.input_embedding_params + arch.head_params if m.freeze_embeddings else 0
        trainable, adapted = arch.params - frozen, frozenset()
    else:
        names = target_modules(model, m.targets)
        trainable = arch.lora_params(names, m.rank, m.dora)
        adapted = frozenset(lin.name for lin in arch.targeted(names))
    chunked = cfg.train.loss == "chunked" or (cfg.train.loss == "auto" and dev.type == "cuda" and loss.supports(model))
    return Setup(
        method=m.name, trainable=trainable, weight_bytes=weight_bytes, master_bytes=weight_bytes if full else 4,
        compute_bytes=compute, optimizer=cfg.train.optimizer, micro_batch=micro_batch or cfg.train.micro_batch,
        seq_len=cfg.data.seq_len, checkpointing=checkpointing, chunked=chunked, processes=processes,
        sharded=sharded, lora_targets=adapted, rank=m.rank if not full else 0, dropout=m.dropout if not full else 0.0,
        fused_lora=cfg.train.fused_lora and not m.dora and m.name != "qlora",  # QLoRA: PEFT's own 4-bit forward
        embeddings_train=full and not m.freeze_embeddings,
        head_trains=full and not m.freeze_embeddings, mask_bytes=1 if dev.type == "cuda" else compute,
        attention_mask=cfg.data.regime == "ift", base_bytes=qlora_base_bytes(model, weights) if m.name == "qlora"
        else None)


def fit(cfg: RunConfig, model: nn.Module, arch: Architecture, device: str, memory: float | None,
        processes: int = 1, sharded: bool = False) -> Fit:
    """cfg's settings for a device of `memory` bytes (None: not checked): train.activation_checkpointing auto is on
    when the run would not fit without it, and then train.micro_batch is lowered to the largest divisor of
    train.global_batch that fits. Explicit settings are kept; whether the result fits is Fit.fits."""
    t = cfg.train
    auto = t.activation_checkpointing == "auto"
    limit = HEADROOM * memory if memory else None

    def attempt(checkpointing: bool, micro_batch: int) -> Fit:
        s = setup(cfg, model, arch, device, processes, sharded, checkpointing, micro_batch)
        fitted = replace(cfg, train=replace(t, activation_checkpointing=checkpointing, micro_batch=micro_batch))
        return Fit(fitted, predict(arch, s), s, limit)

    result = attempt(False if auto else t.activation_checkpointing, t.micro_batch)
    if not auto:
        return result
    if result.fits:
        why = "no memory limit checked on the CPU" if limit is None else f"fits without it: {_gib(result)}"
        result.choices.append(f"train.activation_checkpointing: auto -> false ({why})")
        return result
    without = result
    result = attempt(True, t.micro_batch)
    result.choices.append(f"train.activation_checkpointing: auto -> true (without it: {_gib(without)})")
    if result.fits:
        return result
    smaller = result
    for micro_batch in sorted((k for k in range(1, t.micro_batch) if t.global_batch % k == 0), reverse=True):
        smaller = attempt(True, micro_batch)
        smaller.choices = result.choices + [
            f"train.micro_batch: {t.micro_batch} -> {micro_batch} (global_batch {t.global_batch} kept: "
            f"{t.global_batch // micro_batch} micro-batches per step; at {t.micro_batch}: {_gib(result)})"]
        if smaller.fits:
            break
    return smaller  # the largest micro-batch that fits; else one sequence, which does not


def _gib(result: Fit) -> str:
    limit = f" > {result.limit / GIB:.1f}" if not result.fits else f" <= {result.limit / GIB:.1f}"
    return f"peak {result.memory.peak / GIB:.1f} GiB{limit} GiB usable"


def refusal(name: str, result: Fit, device: str, processes: int) -> DoesNotFit:
    """The error for a run that does not fit: its name, its predicted peak, the device's memory, what to try."""
    m, t = result.memory, result.cfg.train
    held = (m.weights + m.gradients + m.optimizer) / GIB
    if held > result.limit / GIB:
        hint = (f"its weights, gradients and optimizer state alone take {held:.1f} GiB per device: shard them over "
                f"more GPUs (--nproc)")
    elif t.activation_checkpointing and t.micro_batch == 1:
        hint = "even with activation checkpointing and one sequence per micro-batch; shorten data.seq_len"
    else:
        hint = ("set train.activation_checkpointing: auto (it turns checkpointing on and lowers train.micro_batch "
                "until the run fits)")
    where = f"{processes} x {device}" if processes > 1 else device
    return DoesNotFit(f"run {name}: predicted peak memory {m.peak / GIB:.1f} GiB does not fit {where} "
                      f"({result.limit / GIB:.1f} GiB usable of {result.limit / HEADROOM / GIB:.1f} GiB); {hint}")


def fit_run(cfg: RunConfig, device: torch.device, processes: int = 1, sharded: bool = False,
            quiet: bool = False) -> RunConfig:
    """The run config `ftlab train` trains: cfg fitted to the device it trains on (its memory read from CUDA; on
    the CPU nothing is checked), each choice printed; DoesNotFit when it cannot fit."""
    model = structure(cfg.model)
    if decoder_blocks(model) is None:  # the memory model counts per block (architectures.preflight says why)
        print("ftlab: memory not predicted: no list of decoder blocks found in this model; "
              "train.activation_checkpointing auto -> false", flush=True)
        checkpointing = cfg.train.activation_checkpointing is True
        return replace(cfg, train=replace(cfg.train, activation_checkpointing=checkpointing))
    gpu = local_gpu(device.index or 0) if device.type == "cuda" and torch.cuda.is_available() else None
    result = fit(cfg, model, architecture(model), device.type, gpu.memory if gpu else None, processes, sharded)
    if not quiet:
        for choice in result.choices:
            print(f"ftlab: {choice}", flush=True)
    if not result.fits:
        raise refusal(cfg.output.dir, result, gpu.name, processes)
    return result.cfg


def check_run(cfg: RunConfig, processes: int) -> None:
    """`ftlab train --nproc N` before torchrun starts: the run's inputs (ftlab.preflight) and its memory, sharded
    over `processes` on this machine's device."""
    from ftlab.model import resolve_device
    from ftlab.preflight import preflight_run

    preflight_run(cfg, sharded=True)
    fit_run(cfg, resolve_device(cfg.train.device), processes, sharded=True, quiet=True)
