"""Run by torchrun (2 processes, gloo) from tests/test_resume_state.py: the host memory each process takes to save
a sharded resumable state, and the whole tensors it holds, for the test to compare a one-process read with.

    torchrun --standalone --nproc_per_node 2 tests/fsdp_state_worker.py OUT
"""

import gc
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from ftlab import checkpoint, distributed, state, state_sharded
from ftlab.config import TinyModelConfig
from ftlab.model import build_tiny

# 3.5M weights (13.9 MB): the AdamW state (weights + 2 moments) is 42 MB whole, 21 MB per process; the largest
# tensor, a (771, 256) MLP projection, is 0.8 MB. 771 rows and the 259-token vocabulary split unevenly over 2.
SHAPE = TinyModelConfig(hidden_size=256, layers=4, heads=4, kv_heads=4, intermediate_size=771, max_position=64)
FILE_BYTES = 1 << 20  # per process and file: 1/20 of a process's share here, as the default is of a 7B model's


def memory_kb(field: str) -> int:
    """VmRSS (resident now) or VmHWM (the peak since the last reset) of this process, in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_increase(save) -> int:
    """Bytes by which this process's peak resident memory during save() exceeds its resident memory before."""
    gc.collect()
    before = memory_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
    save()
    return (memory_kb("VmHWM") - before) * 1024


def trained(world, device):
    """The model sharded over the processes and an AdamW that has taken one step (its moments exist)."""
    model, tokenizer = build_tiny(SHAPE)
    model = distributed.shard(model, device, world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 259, (2, 16), generator=torch.Generator().manual_seed(world.rank))  # (B, T)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, tokenizer, optimizer


def main(out: Path) -> None:
    world, device = distributed.init("cpu")
    model, tokenizer, optimizer = trained(world, device)
    names = {p: n for n, p in model.named_parameters()}
    tensors = {f"weights/{names[p]}": p for p in names}
    tensors.update({f"optimizer/{names[p]}/{k}": v for p, s in optimizer.state.items() for k, v in s.items()})
    shard = sum(distributed_local(t).nbytes for t in tensors.values())  # what this process holds of the state
    largest = max(t.numel() * t.element_size() for t in tensors.values())  # one whole tensor

    state_sharded.FILE_BYTES = FILE_BYTES
    increase = peak_increase(lambda: state.save_state(out / "state", 1, model, optimizer,
                                                      {"tokens": 0, "loader": {}}, world))
    # the final weights as a Hugging Face directory, gathered to rank 0
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # whole
    checkpoint_increase = peak_increase(lambda: checkpoint.save_checkpoint(model, tokenizer, out / "final", {},
                                                                           world=world))
    (out / f"memory-{world.rank}.json").write_text(json.dumps({
        "increase": increase, "shard": shard, "largest": largest,
        "checkpoint_increase": checkpoint_increase, "weights": weights}))
    whole = {k: distributed.full(t).detach().contiguous() for k, t in tensors.items()}  # after the measurement
    if world.main:
        save_file(whole, out / "reference.safetensors")
    distributed.barrier(world)
    distributed.close()


def distributed_local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


if __name__ == "__main__":
    main(Path(sys.argv[1]))
