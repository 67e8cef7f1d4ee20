"""Steering forgetting without training: a checkpoint moved back toward its base, and forgetting read at matched
learning.

    interpolate(base, ckpt, a, out)         # full FT: W_base + a·ΔW for every weight; LoRA: the adapter scaled by a
    scale_intruders(base, ckpt, f, out)     # LoRA: W_ft with its intruder dimensions scaled by f, a merged model
    steer_into(base, ckpt, "interp", 0.5)   # either, into the run's steered/<ckpt>+interp-0.5 (kept when whole)
    at_learning(curve, level)               # a method's forgetting at a given learning, along its curve
    matched_learning(learning, forgetting)  # that against a reference model's own, with a bootstrap interval

Interpolation (WiSE-FT's weight averaging) is torch.lerp(W_base, W_ft, a) in fp32: exactly the base at a = 0 and
exactly the finetuned weights at a = 1. A LoRA adapter scaled by a is scale·(a·B)@A = a·ΔW: its lora_B tensors are
multiplied by a (DoRA, whose magnitude makes the change non-linear in B, is refused). Intruder dimensions are
PEFT's (reduce_intruder_dimension; ftlab.analysis.spectrum_math.intruders counts the same ones): among the top_k
left singular vectors of W_ft = W_base + ΔW, those whose largest |cos| with every left singular vector of W_base
is below epsilon. Scaling them by f is W_ft + (f - 1)·Σ_i σ_i u_i v_iᵀ over them (f = 1: W_ft, exactly), as PEFT's
mitigation_lambda; PEFT then refits a rank-r adapter to the result, ftlab writes the merged weights instead, so the
scaling is exact. Each output is an ordinary model or adapter directory with an ftlab.json recording its step, its
base, what steered it ("steer": {kind, factor, of}) and its files' checksums: `ftlab eval` measures it like any
checkpoint, and indexing stores it as a steered row (ftlab.results.study: Study.steered).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ftlab.analysis.spectrum_math import left_factors
from ftlab.analysis.spectrum_sources import open_checkpoint
from ftlab.analysis.statistics import LEVEL, N_BOOT, SEED, Interval
from ftlab.errors import ConfigError, FtlabError
from ftlab.io import fresh_dir, publish_dir, write_json
from ftlab.rundir import INFO, RunLayout, base_of, base_reference, is_adapter, read_info, run_root
from ftlab.weights import check_files, manifest

KINDS = ("interp", "intruders")
STEER = "steer"  # the key of ftlab.json saying what steered a checkpoint
TOP_K, EPSILON = 10, 0.5  # PEFT's reduce_intruder_dimension defaults (and ftlab spectrum's)


def check_factors(key: str, factors: list[float]) -> None:
    """Interpolation weights and intruder factors: numbers >= 0, each once; a ConfigError naming key[i] else."""
    for i, f in enumerate(factors):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not f >= 0:
            raise ConfigError(f"{key}[{i}]: expected a number >= 0, got {f!r}")
    if len(set(factors)) != len(factors):
        raise ConfigError(f"{key}: {factors} lists a value twice")


def steer_into(base: str | Path, ckpt: Path, kind: str, factor: float) -> Path:
    """The steered copy of a run's checkpoint, in <run>/steered/ (reused when whole: its files match their
    checksums and it records the same steer)."""
    root = run_root(ckpt)
    if root is None:
        raise FtlabError(f"{ckpt}: not a checkpoint of an ftlab run (final/ or checkpoints/<name> of a run directory)")
    out = RunLayout(root).steered_checkpoint(ckpt.name, kind, factor)
    if out.exists():
        try:
            check_files(out)
            if read_info(out).get(STEER) == steer_record(kind, factor, ckpt):
                return out
        except FtlabError:
            pass  # damaged or another steer: written again
    if kind == "interp":
        return interpolate(base, ckpt, factor, out)
    if kind == "intruders":
        return scale_intruders(base, ckpt, factor, out)
    raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")


def steer_record(kind: str, factor: float, ckpt: Path) -> dict:
    return {"kind": kind, "factor": float(factor), "of": ckpt.name}


@torch.no_grad()
def interpolate(base: str | Path, ckpt: str | Path, a: float, out: str | Path) -> Path:
    """`ckpt` moved a of the way from its base: full FT W_base + a·ΔW (torch.lerp, fp32, every weight the
    checkpoint holds), LoRA the adapter with lora_B scaled by a. Written to `out`."""
    ckpt, out = Path(ckpt), Path(out)
    source = open_checkpoint(base, ckpt)
    if source.kind == "dora":
        raise FtlabError(f"{ckpt}: a DoRA adapter's change is not linear in its B; interpolation reads plain LoRA "
                         "adapters and full models")
    scaled = {m.b for m in source.lora.values()}

    def change(name: str, tensor: torch.Tensor) -> torch.Tensor:
        if source.kind == "lora":
            return (tensor.float() * a).to(tensor.dtype) if name in scaled else tensor
        if name not in source.base_files:
            raise FtlabError(f"{ckpt} does not match the base {base}: {name}: the base has no such tensor")
        w_base = _raw(source.base_files.where[name], name)
        if w_base.shape != tensor.shape:
            raise FtlabError(f"{ckpt} does not match the base {base}: {name}: shape {list(tensor.shape)} here, "
                             f"{list(w_base.shape)} in the base")
        return torch.lerp(w_base.float(), tensor.float(), a).to(tensor.dtype)

    return _write(ckpt, out, steer_record("interp", a, ckpt), change)


@torch.no_grad()
def intruder_scaled(w_base: torch.Tensor, w_ft: torch.Tensor, factor: float, top_k: int = TOP_K,
                    epsilon: float = EPSILON) -> tuple[torch.Tensor, int]:
    """(W_ft with its intruder dimensions scaled by factor, how many there were); fp32, (m, n) each."""
    u_base, _ = left_factors(w_base)
    u, s, vh = torch.linalg.svd(w_ft.float(), full_matrices=False)  # (m, k), (k,), (k, n)
    cos = (u[:, :top_k].T @ u_base).abs().max(dim=1).values  # (top_k,)
    found = torch.nonzero(cos < epsilon).flatten()
    part = (u[:, found] * s[found]) @ vh[found]  # (m, n): Σ σ_i u_i v_iᵀ over the intruders
    return w_ft + (factor - 1) * part, len(found)


@torch.no_grad()
def scale_intruders(base: str | Path, ckpt: str | Path, factor: float, out: str | Path) -> Path:
    """A LoRA checkpoint merged into its base, each adapted weight's intruder dimensions scaled by `factor`; a full
    model directory at `out` (the base's files, the checkpoint's tokenizer)."""
    ckpt, out = Path(ckpt), Path(out)
    if not is_adapter(ckpt):
        raise FtlabError(f"{ckpt}: intruder dimensions are scaled on LoRA adapters; this is a full model")
    source = open_checkpoint(base, ckpt)
    if source.base_4bit is not None:
        raise FtlabError(f"{ckpt}: a QLoRA adapter's base is 4-bit; merging intruder-scaled weights into it is not "
                         "supported")
    counts: dict[str, int] = {}

    def change(name: str, tensor: torch.Tensor) -> torch.Tensor:
        if name not in source.lora:
            return tensor
        w_base, w_ft, _ = source.load(name)
        w, counts[name] = intruder_scaled(w_base, w_ft, factor)
        return (w.T if source.layers[name].transposed else w).contiguous().to(tensor.dtype)

    model = fresh_dir(out)
    for name in _model_files(Path(source.base)):
        if name.endswith(".safetensors"):
            _transform(Path(source.base) / name, model / name, change)
        elif not (name.startswith("tokenizer") or name in ("special_tokens_map.json", "chat_template.jinja")):
            _copy(Path(source.base) / name, model / name)
    for name in _model_files(ckpt):  # the tokenizer the run saved
        if name.startswith("tokenizer") or name in ("special_tokens_map.json", "chat_template.jinja"):
            _copy(ckpt / name, model / name)
    info = _info(ckpt, out, steer_record("intruders", factor, ckpt))
    info[STEER]["intruders"] = sum(counts.values())
    write_json(model / INFO, {**info, "files": manifest(model)})
    publish_dir(model, out)
    return out


def _write(ckpt: Path, out: Path, steer: dict, change) -> Path:
    """`ckpt`'s files into `out`, each safetensors tensor through change(name, tensor); with its ftlab.json."""
    model = fresh_dir(out)
    for name in _model_files(ckpt):
        if name.endswith(".safetensors"):
            _transform(ckpt / name, model / name, change)
        else:
            _copy(ckpt / name, model / name)
    write_json(model / INFO, {**_info(ckpt, out, steer), "files": manifest(model)})
    publish_dir(model, out)
    return out


def _model_files(directory: Path) -> list[str]:
    """The files of a model or adapter directory as saved: those its ftlab.json records, else every file but what
    evaluation and analysis wrote beside them."""
    recorded = read_info(directory).get("files")
    if recorded:
        return sorted(recorded)
    return sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != INFO
                  and (p.suffix == ".safetensors" or p.name.startswith(("config", "generation_config", "tokenizer",
                                                                         "special_tokens", "chat_template",
                                                                         "adapter_config", "model.safetensors"))))


def _info(ckpt: Path, out: Path, steer: dict) -> dict:
    info = {k: v for k, v in read_info(ckpt).items() if k != "files"}
    if info.get("base"):
        info["base"] = base_reference(base_of(ckpt), out)
    return {**info, STEER: steer}


def _raw(path: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        return handle.get_tensor(name)


def _transform(src: Path, dst: Path, change) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(src, framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: change(name, handle.get_tensor(name)).contiguous() for name in handle.keys()}
    save_file(tensors, dst, metadata=metadata)


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


# ----------------------------------------------------------------------------- forgetting at matched learning


@dataclass(frozen=True)
class Point:
    """A model on the learning-forgetting plane."""

    learning: float
    forgetting: float


def at_learning(curve: list[Point], level: float) -> float | None:
    """The forgetting of a curve (its points in the order they were made: the base, then the model moved further
    along the curve) at learning `level`: linear between the first two consecutive points whose learning brackets
    it; None where the curve never reaches it."""
    for p, q in zip(curve, curve[1:]):
        lo, hi = sorted((p.learning, q.learning))
        if lo <= level <= hi:
            if q.learning == p.learning:
                return min(p.forgetting, q.forgetting)
            t = (level - p.learning) / (q.learning - p.learning)
            return p.forgetting + t * (q.forgetting - p.forgetting)
    return None


Parts = list[tuple[np.ndarray, np.ndarray | None]]  # per task: values (models, n) on shared documents, weights (n,)


def _levels(parts: Parts, draws: list[np.ndarray] | None = None) -> np.ndarray:
    """Each model's level: the mean over tasks of its (weighted) mean over documents, (models,); or per replicate,
    (R, models), with draws[i] (R, n_i) the documents each replicate takes of task i."""
    out = 0.0
    for i, (values, weights) in enumerate(parts):
        if draws is None:
            w = np.ones(values.shape[1]) if weights is None else weights
            out = out + (values * w).sum(axis=1) / w.sum()
        else:
            idx = draws[i]  # (R, n)
            v = values[:, idx]  # (models, R, n)
            w = np.ones(idx.shape) if weights is None else weights[idx]  # (R, n)
            out = out + ((v * w).sum(axis=2) / w.sum(axis=1)).T  # (R, models)
    return out / len(parts)


def _at_each(learning: np.ndarray, forgetting: np.ndarray) -> np.ndarray:
    """Per replicate (rows of (R, models) arrays; model 0 the reference, 1.. the curve): the curve's forgetting at
    the reference's learning minus the reference's (nan where the curve does not reach it)."""
    out = np.full(len(learning), np.nan)
    for r in range(len(learning)):
        curve = [Point(float(x), float(y)) for x, y in zip(learning[r, 1:], forgetting[r, 1:])]
        read = at_learning(curve, float(learning[r, 0]))
        if read is not None:
            out[r] = read - forgetting[r, 0]
    return out


def matched_learning(learning: Parts, forgetting: Parts, n_boot: int = N_BOOT, seed: int = SEED) -> Interval | None:
    """A reference model (row 0 of every part) against a curve of models (rows 1.., in curve order) at matched
    learning: the curve's forgetting read at the reference's learning (at_learning) minus the reference's own, with
    a bootstrap interval that resamples the documents of both instruments (so the learning level read at moves
    too). None where the curve does not reach the reference's learning. Replicates where it does not are left out
    of the interval; `n` counts the documents."""
    estimate = _at_each(_levels(learning)[None], _levels(forgetting)[None])[0]
    if np.isnan(estimate):
        return None
    rng = np.random.default_rng(seed)
    draw = [rng.integers(0, v.shape[1], size=(n_boot, v.shape[1])) for v, _ in learning]
    draw_f = [rng.integers(0, v.shape[1], size=(n_boot, v.shape[1])) for v, _ in forgetting]
    diffs = _at_each(_levels(learning, draw), _levels(forgetting, draw_f))
    diffs = diffs[~np.isnan(diffs)]
    if len(diffs) < 2:
        return None
    low, high = np.quantile(diffs, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    p = min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean())))
    n = sum(v.shape[1] for v, _ in learning + forgetting)
    return Interval(float(estimate), float(low), float(high), float(diffs.std(ddof=1)), n, 1, p)
