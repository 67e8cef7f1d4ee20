"""One run on several processes: PyTorch FSDP2 (fully_shard), started by torchrun.

    torchrun --nproc_per_node 4 -m ftlab train CONFIG --out DIR      # or: ftlab train CONFIG --out DIR --nproc 4

Rank 0 reads the weights on the CPU, the other processes build the same model on the meta device, and all read
the same data in the same seeded order; each decoder block and then the whole model are sharded with fully_shard
and rank 0's weights broadcast into the shards (under bf16 precision, the default on CUDA: bf16 parameters and
fp32 gradient reduction), so every process holds 1/N of the weights, gradients and optimizer state. A step's
micro-batches are dealt out across processes without overlap (process r takes micro-batches r, r+N, ...), and
the loss stays normalised by the whole global batch, so the gradient is the one a single process would compute.
Every micro-batch's gradients are reduce-scattered as its backward ends, so a process never holds more than its
shard of the gradients (accumulating unsharded gradients over a step's micro-batches would hold the whole model's
in fp32 on every GPU: +25 GiB at 7B). Rank 0 alone writes the run directory, the metrics and the progress; the
others wait for it in collectives bounded by train.collective_timeout_min.

Checkpoints are gathered to rank 0 one tensor at a time and written in exactly the single-process format (a
Hugging Face directory or a PEFT adapter; ftlab.checkpoint). The resumable state is written sharded, each process
its own part (ftlab.state_sharded, with torch.distributed.checkpoint), and read back resharded, so a run resumes on
any number of processes (ftlab.state). Only rank 0 prints: the CLI (ftlab.cli.main) silences the others' stdout.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ftlab import state_sharded
from ftlab.architectures import decoder_blocks
from ftlab.config import TrainConfig
from ftlab.errors import ConfigError, FtlabError


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes (rank 0 of 1 and not distributed when not launched by
    torchrun).

    Under torchrun the run is distributed, its model sharded, even with one process (FSDP's own overhead can be
    measured so)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    distributed: bool = False  # in a process group, the model sharded with FSDP

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def launched() -> bool:
    """True when torchrun (or another launcher setting RANK and WORLD_SIZE) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_command(nproc: int, config: str, overrides: list[str], out: str) -> list[str]:
    """`ftlab train` under torchrun on this machine with nproc processes (ftlab train --nproc, ftlab run --nproc)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "ftlab", "train", config, *overrides, "--out", out]


def check_supported(cfg) -> None:
    """What a sharded run cannot do, refused before anything is launched or written (cfg: a RunConfig)."""
    if cfg.method.name == "qlora":
        raise ConfigError("method.name: qlora trains on one process (FSDP does not shard bitsandbytes' 4-bit "
                          "weights here); train it without --nproc")
    if cfg.method.adapter and cfg.method.init == "pissa":
        raise ConfigError("method.init: pissa is not supported with several processes; train it on one")
    if not state_sharded.available():
        raise ConfigError("several processes save their resumable state with torch.distributed.checkpoint's "
                          f"safetensors storage, which this torch ({torch.__version__}) lacks (2.11 and 2.13 have it)")


def init(device_name: str, timeout_min: float = TrainConfig.collective_timeout_min) -> tuple[World, torch.device]:
    """Join the process group torchrun set up: NCCL on CUDA, gloo on the CPU; returns (world, this rank's device).

    timeout_min: how long a collective waits for the slowest process before the run fails (torch's default, 10
    minutes, is shorter than rank 0 takes to write a 7B checkpoint to shared storage while the others wait)."""
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")),
                  distributed=True)
    cuda = torch.cuda.is_available() and device_name != "cpu"
    if cuda:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None,
                                timeout=timedelta(minutes=timeout_min))
    return world, device


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


@contextlib.contextmanager
def main_first(world: World):
    """Rank 0 runs the block first (it writes files: the tiny base, built-in data), the others once it is done (they
    find the files written)."""
    if not world.main:
        barrier(world)
    yield
    if world.main:
        barrier(world)


def shard(model: nn.Module, device: torch.device, world: World,
          param_dtype: torch.dtype | None = None) -> nn.Module:
    """fully_shard each decoder block, then the root (embeddings, final norm and head stay in the root's unit).

    param_dtype bf16 (train.precision bf16-autocast, auto on CUDA): FSDP's mixed precision, each block's weights
    gathered and computed in bf16 and the gradients reduced in fp32; None: everything in the weights' own dtype.

    Only rank 0 holds real weights (on the CPU); the other ranks built the model on the meta device. After
    sharding, rank 0's weights are broadcast into every rank's shards, and its buffers (rotary tables) copied."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    whole = model.state_dict() if world.main else {}  # the full tensors, before fully_shard replaces them

    policy = MixedPrecisionPolicy()
    if param_dtype is not None:
        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = decoder_blocks(inner)
    if blocks is None:  # architectures.preflight refuses this before a run starts
        raise FtlabError("distributed training needs the model's list of decoder blocks to shard; none was found")
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    # the root (embeddings, final norm, head) stays gathered from its forward to the end of the backward: the
    # chunked loss (ftlab.loss) calls the head after the forward
    fully_shard(model, mp_policy=policy, reshard_after_forward=False)
    if not world.main:
        model.to_empty(device=device)  # meta -> uninitialised memory for this rank's shards and the buffers
    set_model_state_dict(model, whole, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.device != device:
                module._buffers[name] = buffer = buffer.to(device)
            dist.broadcast(buffer, src=0)
    return model


def my_share(micro: list, world: World) -> list[tuple[dict, float]]:
    """(micro-batch, weight) this rank runs: r, r+N, ... padded with weight-0 repeats so every rank runs as many
    forward/backward passes as the others (each pass is a collective under FSDP)."""
    mine = [(b, 1.0) for b in micro[world.rank::world.size]]
    rounds = -(-len(micro) // world.size)
    while len(mine) < rounds:
        mine.append((micro[0], 0.0))
    return mine


def all_sum(value: float, world: World, device: torch.device) -> float:
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def all_sum_(t: torch.Tensor, world: World) -> torch.Tensor:
    """t summed over processes, in place, on its device (no host sync)."""
    if world.distributed:
        dist.all_reduce(t)
    return t


def agree(flag: bool, world: World, device: torch.device) -> bool:
    """Rank 0's flag on every rank (a collective): a decision one clock makes for all, such as when to save."""
    if not world.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a shard (a collective: every rank calls it for the same tensors, in order)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A full tensor laid out as `param` is (sharded the same way when param is a DTensor)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
    return value

