"""The resumable state of a run, which only ftlab reads: everything needed to continue bit for bit.

    state/step-00000050/ and the pointer state/LATEST ({"dir": "step-00000050"}); kept/step-N/ (train.keep_states)

A state is in one of two layouts (progress.json's "layout"):
  whole    one unsharded process: trainable.safetensors, optimizer.safetensors, rng.safetensors, progress.json
  sharded  FSDP over N processes: sharded/ (each process's shards, ftlab.state_sharded), rng/rank-R.safetensors
           and rng/rank-R.json (each process's random generators), progress.json
and holds manifest.json, the size and sha256 of each of its other files. A state without "layout" is whole (written
before sharded states existed, by any number of processes). Either layout resumes on any number of processes.
Nothing is pickled. Every directory is written under a temporary name and renamed, and LATEST is replaced
atomically, so a kill at any moment leaves the previous state intact.

Damage after the fact (a truncated file, changed bytes, a bad LATEST) is found when a run resumes: each state is
checked against its manifest, and a damaged latest state falls back, with a message naming the damage, to the one
before it, which save_state keeps until a newer state is written and checked. A run so loses at most one resume
interval, and still ends at the weights of an uninterrupted run.
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ftlab import state_sharded
from ftlab.distributed import SINGLE, World, all_sum, barrier, like
from ftlab.errors import FtlabError
from ftlab.io import TMP_SUFFIX, copy_dir, damaged_files, file_digests, fresh_dir, publish_dir, read_json, write_json
from ftlab.rundir import STATE_PREFIX, state_name, state_step

CPU = torch.device("cpu")
WHOLE, SHARDED = "whole", "sharded"  # the layouts of a resumable state
LATEST = "LATEST"  # state/LATEST: which state/step-N is the latest
PROGRESS = "progress.json"
MANIFEST = "manifest.json"  # {"files": {path: {size, sha256}}}: every other file of the state, written last
MANIFEST_PARTS = "manifest.parts"  # under FSDP, each process's share of the manifest while the state is written


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


def rng_state(device: torch.device = CPU) -> tuple[dict[str, torch.Tensor], dict]:
    """This process's random generators: torch's CPU one, the CUDA one of the device it trains on (not every
    visible device's: a resume may see fewer), Python's and NumPy's."""
    tensors = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    np_state = np.random.get_state()
    meta = {"python": _jsonable(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict, device: torch.device = CPU) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = _saved_cuda_state(tensors, device)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
    random.setstate(_tupled(meta["python"]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def _saved_cuda_state(tensors: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor | None:
    """The saved CUDA generator for `device`, if there is one: "cuda" (the device the saving process trained on),
    or in states written before that, "cuda.I" of the same device index (one entry per device visible then).
    A CPU resume of a GPU state has no CUDA stream to continue."""
    if device.type != "cuda":
        return None
    if "cuda" in tensors:
        return tensors["cuda"]
    index = device.index if device.index is not None else torch.cuda.current_device()
    return tensors.get(f"cuda.{index}")  # absent when the state saw fewer devices: never index past them


def seed_rng(seed: int, rank: int, step: int) -> None:
    """Generators for a process the state holds none for: seeded from (run seed, rank, step), the same each time."""
    derived = int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)  # also every CUDA device's


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x


def _rng_files(directory: Path, rank: int) -> tuple[Path, Path]:
    """(tensors, JSON) of process `rank`'s generators in a sharded state."""
    stem = directory / "rng" / f"rank-{rank:05d}"
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_state(state_root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
               progress: dict, world: World = SINGLE, device: torch.device = CPU) -> None:
    """Everything needed to continue bit-for-bit from after `step`.

    One unsharded process writes the whole layout. Under FSDP every process writes its own shards and generators
    (nothing is gathered: ftlab.state_sharded), then rank 0 the progress record; all ranks call it. The files'
    checksums go into the state's manifest (every file synced and read back whole), and only then is the state
    published and LATEST pointed at it; of the older states, the one before it stays (resumable_state falls back
    to it when this one is found damaged), the others are removed."""
    final = state_root / state_name(step)
    if world.main:
        state_root.mkdir(parents=True, exist_ok=True)
        fresh_dir(final)
    tmp = final.with_name(final.name + TMP_SUFFIX)  # fresh_dir's, made by rank 0
    barrier(world)  # the temporary directory is fresh before any rank writes into it
    if world.distributed:
        tensors_path, meta_path = _rng_files(tmp, world.rank)
        tensors_path.parent.mkdir(exist_ok=True)
        rng_tensors, rng_meta = rng_state(device)
        save_file(rng_tensors, tensors_path)
        write_json(meta_path, rng_meta, indent=None)
        # a collective that returns once every rank's files are written, the generators' included
        opt_meta = state_sharded.save(tmp / "sharded", model, optimizer, world.size)
        record = {"layout": SHARDED, "processes": world.size, "optimizer": opt_meta}
    else:
        record = _save_whole(tmp, model, optimizer, device)
    digests = _digests(tmp, world)
    if not world.main:
        return
    write_json(tmp / PROGRESS, {"step": step, **progress, **record}, indent=None)
    write_json(tmp / MANIFEST, {"files": {**digests, **file_digests(tmp, [PROGRESS])}}, indent=None)
    publish_dir(tmp, final)
    write_json(state_root / LATEST, {"dir": final.name})
    _prune(state_root, step)


def _digests(tmp: Path, world: World) -> dict[str, dict]:
    """{file: {size, sha256}} of every file in the state being written (rank 0's; {} on the others). Under FSDP
    each process syncs and hashes its share of the files (r, r+N, ... in sorted order), which rank 0 gathers
    through small JSON files."""
    barrier(world)  # every process's files are written
    parts = tmp / MANIFEST_PARTS
    names = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file() and parts not in p.parents)
    if not world.distributed:
        return file_digests(tmp, names)
    parts.mkdir(exist_ok=True)
    write_json(parts / f"rank-{world.rank:05d}.json", file_digests(tmp, names[world.rank::world.size]), indent=None)
    barrier(world)
    if not world.main:
        return {}
    digests = {}
    for part in sorted(parts.glob("*.json")):
        digests.update(read_json(part, "state manifest part"))
    shutil.rmtree(parts)
    return digests


def _prune(state_root: Path, step: int) -> None:
    """Remove every state but the one of `step` and the newest before it: later ones (left behind by a fallback to
    an earlier state) and leftovers of killed saves too."""
    earlier = [s for s in map(state_step, (d.name for d in state_root.glob(f"{STATE_PREFIX}*"))) if s is not None
               and s < step]
    keep = {state_name(step)} | ({state_name(max(earlier))} if earlier else set())
    for old in state_root.glob(f"{STATE_PREFIX}*"):
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)


def _save_whole(tmp: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> dict:
    trainable = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, tmp / "trainable.safetensors")
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    rng_tensors, rng_meta = rng_state(device)
    save_file(rng_tensors, tmp / "rng.safetensors")
    return {"layout": WHOLE, "optimizer": opt_meta, "rng": rng_meta}


def keep_state(state_root: Path, kept_root: Path) -> Path:
    """Copy the latest state to kept_root/<its name>, where later saves do not remove it."""
    latest = latest_state(state_root)
    target = kept_root / latest.name
    if not target.exists():
        kept_root.mkdir(parents=True, exist_ok=True)
        copy_dir(latest, target)
    return target


def branch_state(kept: Path, state_root: Path) -> None:
    """Start a run from another run's kept state: it becomes this run's latest state (the run then resumes)."""
    if _candidates(state_root, quiet=True):
        return  # the branch has already started; its own latest state wins
    problems = damaged(kept)
    if problems:
        raise FtlabError(f"{problems[0]}: the kept state this run restarts from is damaged; delete the run that kept "
                         f"it ({kept.parent.parent}) and run the study again: it trains that run again")
    target = state_root / kept.name
    copy_dir(kept, target)
    write_json(state_root / LATEST, {"dir": target.name})


def latest_state(state_root: Path) -> Path | None:
    """The directory LATEST points at under `state_root` (None before the first save), unchecked: where this
    process's last save_state went. A run resumes from resumable_state."""
    pointer = state_root / LATEST
    if not pointer.exists():
        return None
    return state_root / read_json(pointer, "state pointer")["dir"]


def saved_step(state_root: Path) -> int | None:
    """The optimizer step after which the latest state was saved (where a run resumes, unless that state turns out
    damaged), or None; read from its progress record, its files unchecked."""
    for directory in _candidates(state_root, quiet=True):
        try:
            return read_json(directory / PROGRESS, "resumable state progress")["step"]
        except (FtlabError, KeyError):
            continue
    return None


def resumable_state(state_root: Path, world: World = SINGLE, device: torch.device = CPU) -> Path | None:
    """The newest intact state under `state_root` to resume from, or None when there is none (all ranks call it).

    The latest one (LATEST) first; when it is damaged (damaged()), a message names what is wrong with it and the
    one before it is tried, so a damaged state costs at most one resume interval. When every state is damaged, an
    FtlabError says so and what to do."""
    candidates = _candidates(state_root, quiet=not world.main)
    for i, directory in enumerate(candidates):
        problems = damaged(directory, world, device)
        if not problems:
            if i and world.main:
                print(f"ftlab: resuming from {directory}, the newest intact state", file=sys.stderr, flush=True)
            return directory
        if world.main or problems[0] != DAMAGED_ELSEWHERE:
            print(f"ftlab: the resumable state {directory} is damaged: {'; '.join(problems)}", file=sys.stderr,
                  flush=True)
    if candidates:
        raise FtlabError(f"{state_root}: no intact resumable state ({', '.join(d.name for d in candidates)} are "
                         f"damaged, as printed above); delete {state_root} and run the same command again: the run "
                         "starts over")
    return None


def _candidates(state_root: Path, quiet: bool = False) -> list[Path]:
    """The states under `state_root`, the one LATEST points at first, then the others newest first. A LATEST that
    cannot be read, or that points at no state, is noted (unless quiet) and left out of the order."""
    found = sorted((d for d in state_root.glob(f"{STATE_PREFIX}*") if d.is_dir() and state_step(d.name) is not None),
                   key=lambda d: state_step(d.name), reverse=True)
    pointer = state_root / LATEST
    if not pointer.exists():
        return found
    try:
        latest = state_root / read_json(pointer, "state pointer")["dir"]
        if latest not in found:
            raise FtlabError(f"{pointer}: points at {latest.name}, which is not there")
    except (FtlabError, KeyError, TypeError) as e:
        if not quiet:
            print(f"ftlab: {e}; the states are tried newest first", file=sys.stderr, flush=True)
        return found
    return [latest] + [d for d in found if d != latest]


DAMAGED_ELSEWHERE = "damaged files found by another process (see its message)"


def damaged(directory: Path, world: World = SINGLE, device: torch.device = CPU) -> list[str]:
    """What is wrong with the state in `directory` ([] when it is intact): files missing, of another size or with
    other bytes than its manifest records, or a manifest that cannot be read. Under FSDP each process checks its
    share of the files and all agree on the verdict (a collective: all ranks call it). A state written before
    states had manifests is checked by reading its progress record only."""
    problems = _own_share_damaged(directory, world)
    if world.distributed and all_sum(len(problems), world, device) and not problems:
        problems = [DAMAGED_ELSEWHERE]
    return problems


def _own_share_damaged(directory: Path, world: World) -> list[str]:
    if not (directory / MANIFEST).exists():
        try:
            read_json(directory / PROGRESS, "resumable state progress")
        except FtlabError as e:
            return [str(e)]
        return []
    try:
        files = read_json(directory / MANIFEST, "state manifest")["files"]
        names = sorted(files)
    except (FtlabError, KeyError, TypeError) as e:
        return [f"{directory / MANIFEST}: unreadable ({e})"]
    share = names[world.rank::world.size] if world.distributed else names
    return damaged_files(directory, {name: files[name] for name in share})


def load_state(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, world: World = SINGLE,
               device: torch.device = CPU, seed: int = 0) -> dict:
    """Restore weights, optimizer and random generators from `directory`, whatever number of processes wrote it
    (all ranks call it); returns its progress record (step, tokens, loader). `seed`: the run's train.seed."""
    progress = read_json(directory / PROGRESS, "resumable state progress")
    layout = progress.get("layout", WHOLE)
    if layout not in (WHOLE, SHARDED):
        raise FtlabError(f"{directory}: a resumable state in layout {layout!r}, which this version of ftlab cannot "
                         f"read (it reads {WHOLE!r} and {SHARDED!r}); resume it with the ftlab that wrote it")
    try:  # a state checked by resumable_state reads; one without a manifest (older ftlab) may be damaged
        if layout == SHARDED:
            state_sharded.load(directory / "sharded", model, optimizer, progress["optimizer"], world.distributed)
        else:
            _load_whole(directory, model, optimizer, progress["optimizer"])
        _restore_rng(directory, progress, world, device, seed)
    except SafetensorError as e:
        raise FtlabError(f"{directory}: a file of this resumable state is damaged ({e}); delete {directory} and run "
                         "the same command again: the run resumes from the state before it, if there is one, or "
                         "starts over") from None
    return progress


def _load_whole(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, opt_meta: dict) -> None:
    """Read the whole tensors one at a time; under FSDP each rank keeps its shard of each."""
    params = dict(model.named_parameters())
    with torch.no_grad(), safe_open(str(directory / "trainable.safetensors"), framework="pt") as f:
        for name in f.keys():
            params[name].copy_(like(f.get_tensor(name), params[name]))
    device = next(model.parameters()).device
    order = [p for group in optimizer.param_groups for p in group["params"]]  # state index -> parameter
    opt_tensors = {}
    with safe_open(str(directory / "optimizer.safetensors"), framework="pt") as f:
        for key in f.keys():
            value = f.get_tensor(key)
            if not key.endswith(".step"):
                param = order[int(key.split(".", 1)[0])]
                value = like(value.to(device), param) if value.shape == param.shape else value.to(device)
            opt_tensors[key] = value
    optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, opt_meta))


def _restore_rng(directory: Path, progress: dict, world: World, device: torch.device, seed: int) -> None:
    """Each process continues its own saved random stream. On another number of processes than saved, process r
    continues saved process r's stream if there was one and the others start from seed_rng; a note says so."""
    sharded = progress.get("layout") == SHARDED
    saved = progress["processes"] if sharded else 1
    if world.rank >= saved:
        seed_rng(seed, world.rank, progress["step"])
    elif sharded:
        tensors_path, meta_path = _rng_files(directory, world.rank)
        set_rng_state(load_file(tensors_path), read_json(meta_path, "random generator state"), device)
    else:
        set_rng_state(load_file(directory / "rng.safetensors"), progress["rng"], device)
    if saved != world.size and world.main:
        print(f"ftlab: the state was saved by {saved} process(es) and resumes on {world.size}: process r < "
              f"{min(saved, world.size)} continues saved process r's random stream, the others start one seeded "
              f"from (train.seed, rank, step); dropout masks differ from those of an uninterrupted run on {saved}",
              flush=True)
