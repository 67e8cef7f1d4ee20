"""What a run writes: model checkpoints other tools load, and the resumable state only ftlab reads.

Checkpoints: LoRA -> a PEFT adapter directory (`PeftModel.from_pretrained` loads it); full -> a Hugging Face
model directory. Both in safetensors, with the tokenizer and an `ftlab.json` saying where in the run it is.

Resumable state (state/step-N/ and the pointer state/LATEST): trainable weights, optimizer tensors (safetensors),
RNG states and loader position (JSON + safetensors). Nothing is pickled. Every directory is written under a
temporary name and renamed, and LATEST is replaced atomically, so a kill at any moment leaves the previous
state intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import logging as hf_logging

from ftlab.distributed import SINGLE, World, full, like

hf_logging.disable_progress_bar()  # our own bar is the progress; per-save shard bars are noise


def _fresh_tmp(directory: Path) -> Path:
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, directory: Path) -> None:
    if directory.exists():  # a kill after a rename but before the state that records it: rewrite identically
        shutil.rmtree(directory)
    os.replace(tmp, directory)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def save_checkpoint(model: nn.Module, tokenizer, directory: Path, info: dict,
                    pissa_init: Path | None = None, world: World = SINGLE) -> None:
    """A loadable model (full) or adapter (LoRA) directory plus ftlab.json; PiSSA is converted to plain LoRA.

    Sharded (FSDP) models are gathered first, by every rank; rank 0 writes the single-process layout."""
    gathered = _gathered_state(model) if world.distributed else None
    if not world.main:
        return
    tmp = _fresh_tmp(Path(directory))
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
    (tmp / "ftlab.json").write_text(json.dumps(info, indent=2))
    _publish(tmp, Path(directory))


def _gathered_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on the CPU: every weight for a full model, the trainable ones for an adapter."""
    adapter = hasattr(model, "peft_config")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    gathered: dict[int, torch.Tensor] = {}  # tied weights (embeddings = head) stay one tensor, saved once
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if not adapter or name in trainable:
            if id(t) not in gathered:
                gathered[id(t)] = full(t).detach().cpu()
            out[name] = gathered[id(t)]
    return out


# ----------------------------------------------------------------------------- resumable state


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """torch optimizer state_dict -> (tensors for safetensors, the rest as JSON)."""
    tensors, scalars = {}, {}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = flat.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    np_state = np.random.get_state()
    meta = {"python": _jsonable(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(_tupled(meta["python"]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x


def save_state(state_root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
               progress: dict, world: World = SINGLE) -> None:
    """Everything needed to continue bit-for-bit from after `step`; previous states are removed after.

    Sharded tensors are written whole (every rank gathers, rank 0 writes): the same files as one process writes."""
    trainable = {n: full(p).detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    opt_state = optimizer.state_dict()
    if world.distributed:
        opt_state = {**opt_state, "state": {i: {k: full(v) if isinstance(v, torch.Tensor) else v
                                                for k, v in slots.items()} for i, slots in opt_state["state"].items()}}
    if not world.main:
        return
    state_root.mkdir(parents=True, exist_ok=True)
    final = state_root / f"step-{step:08d}"
    tmp = _fresh_tmp(final)
    save_file(trainable, tmp / "trainable.safetensors")
    opt_tensors, opt_meta = _flatten_optimizer(opt_state)
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    rng_tensors, rng_meta = rng_state()
    save_file(rng_tensors, tmp / "rng.safetensors")
    (tmp / "progress.json").write_text(json.dumps({"step": step, **progress, "optimizer": opt_meta, "rng": rng_meta}))
    _publish(tmp, final)
    write_json_atomic(state_root / "LATEST", {"dir": final.name})
    for old in state_root.glob("step-*"):
        if old.name != final.name:
            shutil.rmtree(old, ignore_errors=True)


def keep_state(state_root: Path, kept_root: Path) -> Path:
    """Copy the latest state to kept_root/<its name>, where later saves do not remove it."""
    latest = latest_state(state_root)
    target = kept_root / latest.name
    if not target.exists():
        kept_root.mkdir(parents=True, exist_ok=True)
        tmp = _fresh_tmp(target)
        shutil.rmtree(tmp)
        shutil.copytree(latest, tmp)
        _publish(tmp, target)
    return target


def branch_state(kept: Path, state_root: Path) -> None:
    """Start a run from another run's kept state: it becomes this run's latest state (the run then resumes)."""
    if latest_state(state_root) is not None:
        return  # the branch has already started; its own latest state wins
    target = state_root / kept.name
    tmp = _fresh_tmp(target)
    shutil.rmtree(tmp)
    shutil.copytree(kept, tmp)
    _publish(tmp, target)
    write_json_atomic(state_root / "LATEST", {"dir": target.name})


def latest_state(state_root: Path) -> Path | None:
    pointer = state_root / "LATEST"
    if not pointer.exists():
        return None
    return state_root / json.loads(pointer.read_text())["dir"]


def load_state(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore weights, optimizer and RNG from `directory`; returns its progress record (step, tokens, loader)."""
    progress = json.loads((directory / "progress.json").read_text())
    weights = load_file(directory / "trainable.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(like(value, params[name]))  # a shard of it under FSDP
    device = next(model.parameters()).device
    order = [p for group in optimizer.param_groups for p in group["params"]]  # state index -> parameter
    opt_tensors = {}
    for key, value in load_file(directory / "optimizer.safetensors").items():
        if not key.endswith(".step"):
            param = order[int(key.split(".", 1)[0])]
            value = like(value.to(device), param) if value.shape == param.shape else value.to(device)
        opt_tensors[key] = value
    optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, progress["optimizer"]))
    set_rng_state(load_file(directory / "rng.safetensors"), progress["rng"])
    return progress
