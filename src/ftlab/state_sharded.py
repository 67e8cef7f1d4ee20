"""The resumable state of a sharded (FSDP) run: each process writes, and reads back, only its own shards.

Written with PyTorch's own tool, torch.distributed.checkpoint (DCP), through its Hugging Face storage: every
process writes safetensors files holding its shard of each tensor, and each file's header records (as JSON) where
those shards sit in the whole tensors. Nothing is gathered to write it, and nothing is pickled: DCP's default
storage keeps its index in a pickled `.metadata` file, while this one rebuilds the index from the safetensors
headers, so reading it loads no pickle. Reading reshards: any number of processes, or one process without a
process group, reads the parts of the saved shards that overlap what it holds.

    sharded/shard-00002-model-00001-of-00003.safetensors    process 1's shards of the tensors in file group 1

The tensors are the trainable parameters and the optimizer's tensors, by parameter name; the optimizer's
non-tensor part (param_groups, scalar slots) goes to the caller as JSON.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import torch
from torch import nn

# About this much of one process's shards goes in each of its files. safetensors serializes a file in memory, so
# saving takes a few times this in host memory per process, whatever the model's size (a 7B full finetuning's
# AdamW state, 84 GB, on 8 processes: about 40 files each).
FILE_BYTES = 256 << 20


def available() -> bool:
    """True when this torch's DCP has the safetensors storage that writes one file set per process."""
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    return "save_distributed" in inspect.signature(HuggingFaceStorageWriter).parameters


def save(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, processes: int) -> dict:
    """Every process writes its shards into `directory` (a collective); returns the optimizer's JSON part."""
    import torch.distributed.checkpoint as dcp

    weights, slots, rest = _state(model, optimizer)
    tensors = _flat(weights, slots)
    writer = dcp.HuggingFaceStorageWriter(str(directory), fqn_to_index_mapping=_file_groups(tensors, processes),
                                          save_distributed=True)
    dcp.save(tensors, storage_writer=writer)
    return rest


def load(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rest: dict, distributed: bool) -> None:
    """Read into this process's shards (all of each tensor on one unsharded process) what any number wrote."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    weights, slots, _ = _state(model, optimizer)  # the tensors as they are now: DCP reads into them in place
    with warnings.catch_warnings():  # DCP warns that it loads in a single process when asked to (no_dist)
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load(_flat(weights, slots), storage_reader=dcp.HuggingFaceStorageReader(str(directory)),
                 no_dist=not distributed)
    for name, scalars in rest["scalars"].items():
        slots.setdefault(name, {}).update(scalars)
    # strict=False: the frozen weights are not in a state; every trainable one was read above (DCP fails on a miss)
    set_state_dict(model, optimizer, model_state_dict=weights,
                   optim_state_dict={"state": slots, "param_groups": rest["param_groups"]},
                   options=StateDictOptions(ignore_frozen_params=True, strict=False))


def _state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict, dict]:
    """(trainable weights, optimizer slots {param: {slot: tensor}}, the JSON rest), keyed by parameter name, as this
    process holds them: DTensor shards under FSDP. An optimizer without state yet gets it (DCP's zero-lr step)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    weights, optim = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}  # tied weights: one name, saved once
    weights = {n: t for n, t in weights.items() if n in trainable}  # buffers are rebuilt with the model
    slots, scalars = {}, {}
    for name, state in optim["state"].items():
        slots[name] = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        scalars[name] = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    return weights, slots, {"param_groups": optim["param_groups"], "scalars": {n: s for n, s in scalars.items() if s}}


def _flat(weights: dict, slots: dict) -> dict[str, torch.Tensor]:
    """One key per tensor, as DCP and the safetensors files name them."""
    flat = {f"weights/{name}": t for name, t in weights.items()}
    for name, state in slots.items():
        flat.update({f"optimizer/{name}/{slot}": t for slot, t in state.items()})
    return flat


def _file_groups(tensors: dict[str, torch.Tensor], processes: int) -> dict[str, int]:
    """key -> file group (1, 2, ...): consecutive tensors while one process's share stays under FILE_BYTES.

    The same on every process (DCP takes rank 0's): sizes are of whole tensors (a DTensor's numel is the whole)."""
    groups, group, size = {}, 1, 0
    for key, t in tensors.items():
        share = t.numel() * t.element_size() // processes
        if size and size + share > FILE_BYTES:
            group, size = group + 1, 0
        groups[key] = group
        size += share
    return groups
