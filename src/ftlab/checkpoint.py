"""The model checkpoints a run saves, which other tools load: LoRA -> a PEFT adapter directory
(`PeftModel.from_pretrained` loads it); full -> a Hugging Face model directory. Both in safetensors, with the
tokenizer and an `ftlab.json` saying where in the run it is (ftlab.rundir reads it) and recording every file's size
and sha256 (ftlab.weights checks them when it is loaded). A sharded (FSDP) model is
gathered to rank 0's CPU one tensor at a time and written by rank 0 alone. The resumable state, which only ftlab
reads, is ftlab.state.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ftlab.distributed import SINGLE, World, full
from ftlab.io import fresh_dir, publish_dir, write_json
from ftlab.rundir import INFO, base_reference
from ftlab.weights import manifest


def save_checkpoint(model: nn.Module, tokenizer, directory: Path, info: dict,
                    pissa_init: Path | None = None, world: World = SINGLE) -> None:
    """A loadable model (full) or adapter (LoRA) directory plus ftlab.json; PiSSA is converted to plain LoRA.

    A sharded (FSDP) model is gathered to rank 0 first (every rank takes part); rank 0 writes the single-process
    layout."""
    gathered = _gathered_state(model, world) if world.distributed else None
    if not world.main:
        return
    tmp = fresh_dir(directory)
    if gathered is not None:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=gathered)
    elif pissa_init is not None:
        # PiSSA changes the base weights; converting makes an adapter that applies to the original base.
        with warnings.catch_warnings():  # PEFT's advice to convert PiSSA to LoRA: this call is that conversion
            warnings.filterwarnings("ignore", message="PiSSA changes the base weights", category=UserWarning)
            model.save_pretrained(tmp, path_initial_model_for_weight_conversion=str(pissa_init))
    else:
        model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if info.get("base"):
        info = {**info, "base": base_reference(info["base"], directory)}  # found again after the run moves
    write_json(tmp / INFO, {**info, "files": manifest(tmp)})  # checked whenever it is loaded (ftlab.weights)
    publish_dir(tmp, directory)


def _gathered_state(model: nn.Module, world: World) -> dict[str, torch.Tensor]:
    """The unsharded state dict on rank 0's CPU ({} on the other ranks): every weight for a full model, the
    trainable ones for an adapter. One tensor at a time is whole on the devices; only rank 0 keeps a host copy.

    (DCP's get_model_state_dict(full_state_dict=True, cpu_offload=True) does the same, but gathers and keeps tied
    weights, the embeddings and the head, twice; HF's save_pretrained must see them as one tensor.)"""
    adapter = hasattr(model, "peft_config")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    gathered: dict[int, torch.Tensor] = {}  # tied weights (embeddings = head) stay one tensor, saved once
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if adapter and name not in trainable:
            continue
        if id(t) not in gathered:
            whole = full(t)  # a collective: every rank calls it for the same tensors, in order
            gathered[id(t)] = whole.detach().cpu() if world.main else None
            del whole
        if world.main:
            out[name] = gathered[id(t)]
    return out
