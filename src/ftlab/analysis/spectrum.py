"""`ftlab spectrum`: the singular-value spectrum of the weight change ΔW = W_ft - W_base, per layer and module.

    ftlab spectrum runs/full --out full.json              # every checkpoint of a run, on the base the run names
    ftlab spectrum runs/lora/final --out lora.json        # a LoRA/DoRA adapter, on the base its config names
    ftlab spectrum BASE FINETUNED --out ft.json           # a full model directory against BASE
    ftlab spectrum BASE runs/lora --out lora.json         # BASE overrides the base a run or adapter names
      [--singular-values 'model.layers.0.self_attn.q_proj.weight'] [--top-k 10] [--epsilon 0.5]
      [--method auto|svd|gram] [--device auto|cpu|cuda]

The positional form is `[BASE] FINETUNED`: BASE may be left out when FINETUNED is a run or an adapter.
For every linear layer of every block (q, k, v, o, gate, up, down; not embeddings or the head; for an adapter, the
layers it adapts; "module" is the layer's method.targets name, e.g. q_proj or GPT-2's attn.c_proj; "shape" is
(out, in) on every architecture, GPT-2's Conv1D included) it records k50/k90/k99, k90/min(m, n), stable rank,
effective rank and ||·||_F of ΔW, W_base, W_ft and a Gaussian matrix of the same shape (definitions in
spectrum_math.py), ||ΔW||_F / ||W_base||_F, and the number of intruder dimensions (PEFT's definition; --top-k 0
skips them, as they need two full SVDs per matrix and dominate the time: the fields are then null). What the base
contributes (σ(W_base), and W_base's left singular vectors for intruders) is computed once per matrix and reused by
every checkpoint analysed against that base (`BaseFactors`: one per `ftlab spectrum` call, one per study).
--singular-values NAME_GLOB (repeatable) adds every singular value of ΔW, W_base and W_ft of the matching matrices.
Matrices are streamed from safetensors one at a time in fp32, so memory stays at a few matrices whatever the model
size.

Output (--out), version 1; for a run, each checkpoint's entry is also written to <checkpoint>/spectrum.json as a
document of the same form with one checkpoint, and a checkpoint whose spectrum.json has the same base and settings
is not recomputed:
    {"version": 1, "base": str, "settings": {"top_k", "epsilon", "method": "svd"|"gram", "singular_values"},
     "checkpoints": [{"path", "name", "step", "tokens", "kind": "full"|"lora"|"dora",
                      "base_weights": "fp" | "nf4-dequantized" (a QLoRA adapter: W_base is the NF4 rounding of the
                      base it trained on, spectrum_sources.py),
                      "matrices": [{"name", "layer", "module", "shape", "delta", "base", "finetuned", "gaussian",
                                    "rel_change", "intruders", "lora_rank", ["singular_values"]}],
                      "summary": {"k90_mean", "k90_frac_mean", "rel_change_mean", "intruders_total"}}]}
with "delta"/"base"/"finetuned"/"gaussian" = {"k50", "k90", "k99", "k90_frac", "stable_rank", "effective_rank", "fro"}.
"""

from __future__ import annotations

import json
import re
import sys
from fnmatch import fnmatch
from pathlib import Path

import torch

from ftlab.analysis.spectrum_math import (frobenius, gaussian_stats, intruders, k_values, left_factors,
                                         matrix_stats, resolve_method, singular_values)
from ftlab.analysis.spectrum_sources import Checkpoint, linear_weights, open_checkpoint
from ftlab.errors import FtlabError
from ftlab.evaluate.targets import resolve
from ftlab.io import write_json
from ftlab.model import resolve_device
from ftlab.progress import Progress
from ftlab.rundir import SPECTRUM

__all__ = ["k_values", "matrix_stats", "singular_values", "left_factors", "intruders", "gaussian_stats",
           "spectrum_of", "spectrum_into", "spectrum_target", "resolve_spectrum_target", "analyse", "settings_of",
           "document", "BaseFactors"]

VERSION = 1
RESULTS = SPECTRUM  # a checkpoint's spectrum.json (ftlab.rundir names every artefact)


class BaseFactors:
    """What the spectrum needs of each base matrix, computed once and reused for every checkpoint analysed against
    the same base: σ(W_base) (by the settings' method), and with intruder dimensions W_base's left singular vectors
    and σ from its SVD. Pass one to every call that should share it (a study passes one for all its checkpoints).

    Held in host memory, fp32: with intruders, the left singular vectors of every base matrix (Llama-2-7B's 224
    matrices: about 22 GB), which spares one of the two full SVDs per matrix of every later checkpoint."""

    def __init__(self):
        self._sigma: dict[tuple[str, str, str], torch.Tensor] = {}  # (base, matrix, method) -> σ (s,)
        self._svd: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}  # (base, matrix) -> (U, σ)
        self.computed = 0  # base matrices factored so far

    def sigma(self, base: str, name: str, w_base: torch.Tensor, method: str) -> torch.Tensor:
        """σ(W_base), float64 on the CPU; base: the Checkpoint's base_key."""
        key = (base, name, method)
        if key not in self._sigma:
            self._sigma[key], self.computed = singular_values(w_base, method).cpu(), self.computed + 1
        return self._sigma[key]

    def svd(self, base: str, name: str, w_base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(left singular vectors (m, s) on w_base's device, σ float64 on the CPU) of W_base by an fp32 SVD; base:
        the Checkpoint's base_key."""
        key = (base, name)
        if key not in self._svd:
            u, s = left_factors(w_base)
            self._svd[key], self.computed = (u.cpu(), s.cpu()), self.computed + 1
        u, s = self._svd[key]
        return u.to(w_base.device), s


def settings_of(top_k: int = 10, epsilon: float = 0.5, method: str = "auto",
                singular_values: tuple[str, ...] | list[str] = ()) -> dict:
    """The settings a spectrum records (and a rerun must match to reuse it); method resolved to svd or gram."""
    if top_k < 0:
        raise FtlabError(f"--top-k must be >= 0 (0 skips intruder dimensions), not {top_k}")
    return {"top_k": top_k, "epsilon": epsilon, "method": resolve_method(method),
            "singular_values": list(singular_values)}


def spectrum_of(base: str | Path, finetuned: str | Path, *, top_k: int = 10, epsilon: float = 0.5,
                method: str = "auto", singular_values: tuple[str, ...] | list[str] = (),
                device: str = "auto", factors: BaseFactors | None = None) -> dict:
    """The spectrum entry of one checkpoint (a full model or adapter directory) against `base`; `factors` holds
    what earlier checkpoints computed of the base (a new one when None)."""
    ckpt = open_checkpoint(base, finetuned)
    settings = settings_of(top_k, epsilon, method, singular_values)
    units = Progress(len(ckpt.names), unit="matrix")
    entry = analyse(ckpt, settings, resolve_device(device), units, factors)
    units.close()
    return entry


def spectrum_target(finetuned: str | Path, base: str | Path | None = None, *, out: str | Path | None = None,
                    top_k: int = 10, epsilon: float = 0.5, method: str = "auto",
                    singular_values: tuple[str, ...] | list[str] = (), device: str = "auto") -> dict:
    """The spectrum document of everything `finetuned` stands for (a run, an adapter or a model directory).

    All checkpoints are checked against the base before any is analysed; for a run each checkpoint's entry is
    written to <checkpoint>/spectrum.json (reused on a rerun with the same base and settings); `out` gets the
    whole document, atomically.
    """
    base_dir, paths, is_run = resolve_spectrum_target(finetuned, base)
    settings = settings_of(top_k, epsilon, method, singular_values)
    base_names = linear_weights(base_dir)
    ckpts = [open_checkpoint(base_dir, p, base_names) for p in paths]
    base_str = str(base_dir.resolve())
    done = {c.path: _reusable(c.path / RESULTS, base_str, settings) if is_run else None for c in ckpts}
    units = Progress(sum(len(c.names) for c in ckpts if done[c.path] is None), unit="matrix")
    dev, factors = resolve_device(device), BaseFactors()
    entries = []
    for ckpt in ckpts:
        entry = done[ckpt.path]
        if entry is None:
            entry = analyse(ckpt, settings, dev, units, factors)
            if is_run:
                write_json(ckpt.path / RESULTS, document(base_str, settings, [entry]))
        print(_line(entry) + (" (reused)" if done[ckpt.path] is not None else ""), file=sys.stderr)
        entries.append(entry)
    units.close()
    doc = document(base_str, settings, entries)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(out), doc)
    return doc


def spectrum_into(base: str | Path, finetuned: str | Path, *, singular_values: tuple[str, ...] | list[str] = (),
                  device: str = "auto", factors: BaseFactors | None = None) -> dict:
    """The spectrum entry of one checkpoint against `base` with the default settings, also written to
    <finetuned>/spectrum.json as `ftlab spectrum` writes a run's (a document with this one checkpoint); one already
    there with the same base and settings is reused. `factors`: shared by the calls of a study."""
    base_str, settings = str(Path(base).resolve()), settings_of(singular_values=singular_values)
    entry = _reusable(Path(finetuned) / RESULTS, base_str, settings)
    if entry is None:
        entry = spectrum_of(base, finetuned, singular_values=singular_values, device=device, factors=factors)
        write_json(Path(finetuned) / RESULTS, document(base_str, settings, [entry]))
    return entry


def resolve_spectrum_target(finetuned: str | Path, base: str | Path | None) -> tuple[Path, list[Path], bool]:
    """(base directory, checkpoint directories, whether `finetuned` is a run) for `[BASE] FINETUNED`."""
    target = resolve(str(finetuned), None if base is None else str(base))
    is_run = target.base_results is not None
    if is_run and not target.checkpoints:
        raise FtlabError(f"{finetuned}: a run with no finished checkpoint; nothing to analyse yet")
    if target.checkpoints:
        paths = target.checkpoints
    elif base is None:
        raise FtlabError(f"{finetuned}: a full model directory needs its base: ftlab spectrum BASE {finetuned}")
    else:
        paths = [Path(finetuned)]
    base_dir = Path(target.base if target.checkpoints else base)
    if not base_dir.is_dir():
        raise FtlabError(f"{base_dir}: the base is not a local model directory (spectrum reads its safetensors); "
                         f"pass it as ftlab spectrum BASE {finetuned}")
    return base_dir, paths, is_run


@torch.no_grad()
def analyse(ckpt: Checkpoint, settings: dict, device: torch.device, units: Progress | None = None,
            factors: BaseFactors | None = None) -> dict:
    """The spectrum entry of one opened checkpoint: every matrix streamed, computed and dropped in turn."""
    factors = factors if factors is not None else BaseFactors()
    matrices = []
    for name in ckpt.names:
        matrices.append(_matrix(ckpt, name, settings, device, factors))
        if units is not None:
            units.update(checkpoint=ckpt.path.name, matrix=name)
    k90 = [m["delta"]["k90"] for m in matrices]
    rel = [m["rel_change"] for m in matrices if m["rel_change"] is not None]
    intruders = [m["intruders"] for m in matrices]
    summary = {"k90_mean": sum(k90) / len(k90), "k90_frac_mean": sum(m["delta"]["k90_frac"] for m in matrices)
               / len(matrices), "rel_change_mean": sum(rel) / len(rel) if rel else None,
               "intruders_total": None if settings["top_k"] == 0 else sum(intruders)}
    return {"path": str(ckpt.path), "name": ckpt.path.name, "step": ckpt.info.get("step"),
            "tokens": ckpt.info.get("tokens"), "kind": ckpt.kind, "matrices": matrices, "summary": summary,
            "base_weights": "fp" if ckpt.base_4bit is None else "nf4-dequantized"}


def _matrix(ckpt: Checkpoint, name: str, settings: dict, device: torch.device, factors: BaseFactors) -> dict:
    w_base, w_ft, delta = ckpt.load(name, device)  # each (m, n) fp32
    method, top_k = settings["method"], settings["top_k"]
    s_delta = singular_values(delta, method)
    if top_k > 0:  # the intruder SVDs give σ(W_base) and σ(W_ft) as well
        u_base, s_base = factors.svd(ckpt.base_key, name, w_base)
        u_ft, s_ft = left_factors(w_ft)
        found = intruders(u_base, u_ft, top_k, settings["epsilon"])
    else:
        found = None
        s_base, s_ft = factors.sigma(ckpt.base_key, name, w_base, method), singular_values(w_ft, method)
    fro_base, fro_delta = frobenius(w_base), frobenius(delta)
    layer = re.search(r"\.(\d+)\.", name)
    entry = {"name": name, "layer": int(layer.group(1)) if layer else None, "module": ckpt.layers[name].module,
             "shape": list(ckpt.shapes[name]), "delta": matrix_stats(s_delta, fro_delta),
             "base": matrix_stats(s_base, fro_base), "finetuned": matrix_stats(s_ft, frobenius(w_ft)),
             "gaussian": gaussian_stats(ckpt.shapes[name], method, device),
             "rel_change": fro_delta / fro_base if fro_base > 0 else None, "intruders": found,
             "lora_rank": ckpt.lora[name].rank if name in ckpt.lora else None}
    if any(fnmatch(name, pattern) for pattern in settings["singular_values"]):
        entry["singular_values"] = {"delta": s_delta.tolist(), "base": s_base.tolist(), "finetuned": s_ft.tolist()}
    return entry


def _line(entry: dict) -> str:
    s = entry["summary"]
    rel = "n/a" if s["rel_change_mean"] is None else f"{s['rel_change_mean']:.3g}"
    return (f"ftlab spectrum: {entry['name']}: {len(entry['matrices'])} matrices, k90 mean {s['k90_mean']:.1f} "
            f"({s['k90_frac_mean']:.3f} of min(m, n)), ||ΔW||/||W_base|| mean {rel}, intruders {s['intruders_total']}")


def document(base: str, settings: dict, entries: list[dict]) -> dict:
    """A spectrum document (the module docstring's "Output") of these checkpoint entries against `base`."""
    return {"version": VERSION, "base": base, "settings": settings, "checkpoints": entries}


def _reusable(path: Path, base: str, settings: dict) -> dict | None:
    """The entry of an existing spectrum.json made with the same base and settings, else None."""
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict):
        print(f"ftlab spectrum: {path} is damaged (not a JSON object); recomputing it", file=sys.stderr)
        return None
    same = doc.get("version") == VERSION and doc.get("base") == base and doc.get("settings") == settings
    return doc["checkpoints"][0] if same and len(doc.get("checkpoints", [])) == 1 else None
