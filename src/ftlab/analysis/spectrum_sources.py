"""Where a spectrum's matrices come from: a finetuned checkpoint against its base, read one tensor at a time.

A checkpoint is a full model directory (W_ft is read; ΔW = W_ft - W_base) or a PEFT LoRA adapter directory
(ΔW = scale · B @ A with scale = alpha/r, or alpha/sqrt(r) with rsLoRA, rank_pattern/alpha_pattern resolved as PEFT
does; W_ft = W_base + ΔW). DoRA adapters are supported by the same streaming: PEFT's merge is
W_ft = (m / ||W_base + scale·B@A||_row) · (W_base + scale·B@A), with m the saved magnitude vector.

Which matrices: every linear layer of the base architecture except the output head (q, k, v, o, gate, up, down for
Llama; nn.Linear and transformers' Conv1D, ftlab.architectures.linear_layers), found by building the model from its
config.json on the meta device (no memory); for an adapter, those of them it adapts (the others have ΔW = 0). LoRA
on embeddings is not analysed.

A QLoRA adapter (its ftlab.json records a 4-bit base: ftlab.model.nf4_dtype) trained on the NF4 rounding of the
base, not on the base itself: its W_base is the base weight quantized as the run loaded it and dequantized
(ftlab.model.dequantized_nf4, in fp32), W_ft = that + ΔW. ΔW itself is the adapter's, as for LoRA.

Every matrix is read as (out, in), nn.Linear's layout: a Conv1D (GPT-2) stores (in, out) and is transposed as it
is read, so shapes, singular vectors and intruder dimensions (left singular vectors: the output space) mean the
same on every architecture. PEFT adapts a Conv1D with fan_in_fan_out: its A is (r, in) and B (out, r) as on a
Linear, and the merged weight in the stored layout is W + scale·(B @ A)ᵀ, so in the (out, in) layout
ΔW = scale·B @ A on both (DoRA's magnitude rescales the rows of that (out, in) matrix on both, as PEFT does).

Everything is checked before anything is computed: `open_checkpoint` reads only safetensors headers (and, for a
directory ftlab wrote, every file's recorded checksum) and fails with an FtlabError that names both directories and
the first mismatching tensor, or the damaged file.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ftlab.architectures import is_conv1d, linear_layers, module_label
from ftlab.errors import FtlabError
from ftlab.io import read_json
from ftlab.model import dequantized_nf4, nf4_dtype
from ftlab.rundir import is_adapter, read_info, weights_remedy
from ftlab.weights import check_files, check_tensor, safetensors_keys

ADAPTER_PREFIX = "base_model.model."  # PEFT's prefix on saved adapter tensors
ADAPTER_ROLES = {"lora_A.weight": "A", "lora_B.weight": "B", "lora_magnitude_vector": "magnitude"}
IGNORED_ADAPTER_PARTS = ("lora_B.bias", "lora_embedding_A", "lora_embedding_B")  # biases, embedding LoRA
# LoRA variants whose weight change is not (magnitude-rescaled) scale·B@A: refused rather than misread.
UNSUPPORTED_ADAPTER_KEYS = ("modules_to_save", "target_parameters", "use_qalora", "use_bdlora",
                            "kasa_config", "velora_config", "arrow_config", "monteclora_config", "layer_replication")


class TensorFiles:
    """The tensors of a directory's *.safetensors files by name: shapes from the headers, values one at a time. The
    directory's files are checked first (ftlab.weights.check_files: checksums recorded in its ftlab.json, readable
    headers); where no checksums vouch for them, each tensor is checked finite as it is read."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        self.verified = check_files(self.directory)  # checksums matched: the bytes ftlab wrote, all finite
        index = self.directory / "model.safetensors.index.json"
        if index.exists():
            weight_map = read_json(index, "safetensors index", fix=weights_remedy(self.directory)).get("weight_map")
            if not isinstance(weight_map, dict):
                raise FtlabError(f"{index}: no weight_map; {weights_remedy(self.directory)}")
            self.where = {k: self.directory / f for k, f in weight_map.items()}
            for f in sorted(set(self.where.values())):
                safetensors_keys(f)  # a damaged header is named here, before anything is computed
        else:
            self.where = {}
            for f in sorted(self.directory.glob("*.safetensors")):
                self.where.update({k: f for k in safetensors_keys(f)})
        if not self.where:
            raise FtlabError(f"{self.directory}: no *.safetensors weights")

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def keys(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        from safetensors import safe_open

        with safe_open(self.where[name], framework="pt") as handle:
            return tuple(handle.get_slice(name).get_shape())

    def read(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """One tensor in fp32 on `device`; one holding nan or inf (in files without checksums) is an FtlabError
        naming its file."""
        from safetensors import safe_open

        with safe_open(self.where[name], framework="pt") as handle:
            tensor = handle.get_tensor(name).to(device=device, dtype=torch.float32)
        return tensor if self.verified else check_tensor(self.where[name], name, tensor)


@dataclass(frozen=True)
class Layer:
    """One linear layer of the base architecture, as the spectrum reads it."""

    module: str  # its name in method.targets terms: q_proj, attn.c_proj (ftlab.architectures.module_label)
    transposed: bool  # stored as (in, out) (transformers' Conv1D: GPT-2); read as its transpose, (out, in)


def linear_weights(model_dir: Path) -> dict[str, Layer]:
    """Weight name -> Layer for every linear layer but the output head, in model order, from config.json alone."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise FtlabError(f"{model_dir}: cannot read the model's config.json: {e}; {weights_remedy(model_dir)}") \
            from None
    with torch.device("meta"):  # shapes and names only: no memory, no initialisation
        model = AutoModelForCausalLM.from_config(config)
    return {f"{name}.weight": Layer(module_label(config.model_type, name), is_conv1d(m))
            for name, m in linear_layers(model).items()}


@dataclass
class LoraModule:
    """One adapted linear layer: its saved tensors and PEFT's scaling."""

    a: str  # tensor name of lora_A, (r, n)
    b: str  # tensor name of lora_B, (m, r)
    magnitude: str | None  # DoRA's magnitude vector, (m,)
    rank: int
    scale: float


@dataclass
class Checkpoint:
    """A finetuned checkpoint against its base: which matrices to analyse and how to read each."""

    base: Path
    path: Path
    kind: str  # "full", "lora" or "dora"
    names: list[str]  # weight names, model order
    shapes: dict[str, tuple[int, int]]  # (out, in), whatever the stored layout
    layers: dict[str, Layer]  # the base's linear layers by weight name
    info: dict  # the checkpoint's ftlab.json ({} if none): step, tokens
    base_files: TensorFiles
    ft_files: TensorFiles
    lora: dict[str, LoraModule] = field(default_factory=dict)  # by weight name; adapters only
    base_4bit: torch.dtype | None = None  # QLoRA: W_base is the NF4 rounding of the base from this dtype

    @property
    def base_key(self) -> str:
        """What names W_base for caching its factors (BaseFactors): the base directory, and the NF4 rounding of it
        a QLoRA adapter trained on."""
        key = str(Path(self.base).resolve())
        return key if self.base_4bit is None else f"{key} (NF4 from {str(self.base_4bit).removeprefix('torch.')})"

    def read(self, files: TensorFiles, name: str, device: torch.device | str) -> torch.Tensor:
        """One weight as (out, in), fp32 on `device` (a Conv1D's stored (in, out) transposed); the base's of a QLoRA
        adapter NF4-quantized in its stored layout, as the run loaded it, and dequantized."""
        w = files.read(name, device)
        if files is self.base_files and self.base_4bit is not None:
            w = dequantized_nf4(w, self.base_4bit)
        return w.T.contiguous() if self.layers[name].transposed else w

    @torch.no_grad()
    def load(self, name: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W_base, W_ft, ΔW) of one weight, each (m, n) = (out, in), fp32 on `device`."""
        w_base = self.read(self.base_files, name, device)
        if self.kind == "full":
            w_ft = self.read(self.ft_files, name, device)
            return w_base, w_ft, w_ft - w_base
        mod = self.lora[name]
        a, b = self.ft_files.read(mod.a, device), self.ft_files.read(mod.b, device)  # (r, n), (m, r)
        delta = (b @ a) * mod.scale  # (m, n): PEFT's get_delta_weight, same operations (before its fan_in_fan_out ᵀ)
        w_ft = w_base + delta
        if mod.magnitude is not None:  # DoRA: PEFT's merge rescales every row of W_base + ΔW to the magnitude
            norm = torch.linalg.norm(w_ft, dim=1)  # (m,)
            w_ft = (self.ft_files.read(mod.magnitude, device) / norm).view(-1, 1) * w_ft
            delta = w_ft - w_base
        return w_base, w_ft, delta


def open_checkpoint(base: Path | str, path: Path | str, base_names: dict[str, Layer] | None = None) -> Checkpoint:
    """Check `path` (a full model or adapter directory) against `base` from headers alone; raise FtlabError naming
    both directories and the first mismatching tensor."""
    base, path = Path(base), Path(path)
    if not (base / "config.json").exists():
        raise FtlabError(f"{base}: the base must be a local model directory with config.json and *.safetensors")
    base_names = base_names if base_names is not None else linear_weights(base)
    if not is_adapter(path) and not (path / "config.json").exists():
        raise FtlabError(f"{path}: not a model directory (config.json) or an adapter directory (adapter_config.json)")
    base_files, ft_files = TensorFiles(base), TensorFiles(path)  # both checked before anything more is read
    info = read_info(path)
    if is_adapter(path):
        return _open_adapter(base, path, base_names, base_files, ft_files, info)
    ft_names = linear_weights(path)

    def mismatch(name: str, what: str) -> FtlabError:
        return FtlabError(f"{path} does not match the base {base}: {name}: {what}")

    for name in base_names:
        if name not in ft_names:
            raise mismatch(name, "the finetuned architecture has no such layer")
    for name in ft_names:
        if name not in base_names:
            raise mismatch(name, "the base architecture has no such layer")
    shapes = {}
    for name in base_names:
        for directory, files in ((base, base_files), (path, ft_files)):
            if name not in files:
                raise mismatch(name, f"missing from the safetensors files of {directory}")
        shape, ft_shape = base_files.shape(name), ft_files.shape(name)
        if shape != ft_shape or len(shape) != 2:
            raise mismatch(name, f"shape {list(ft_shape)} here, {list(shape)} in the base")
        shapes[name] = _out_in(shape, base_names[name])
    return Checkpoint(base, path, "full", list(base_names), shapes, base_names, info, base_files, ft_files)


def _out_in(stored: tuple[int, ...], layer: Layer) -> tuple[int, int]:
    """A weight's (out, in) from its stored shape."""
    return (stored[1], stored[0]) if layer.transposed else (stored[0], stored[1])


def _open_adapter(base: Path, path: Path, base_names: dict[str, Layer], base_files: TensorFiles,
                  ft_files: TensorFiles, info: dict) -> Checkpoint:
    config = read_json(path / "adapter_config.json", "adapter config", fix=weights_remedy(path))
    if config.get("peft_type", "LORA") != "LORA":
        raise FtlabError(f"{path}: a {config.get('peft_type')} adapter; ftlab spectrum reads LoRA and DoRA adapters")
    for key in UNSUPPORTED_ADAPTER_KEYS:
        if config.get(key):
            raise FtlabError(f"{path}: adapter_config.json sets {key}={config[key]!r}, which ftlab spectrum does "
                             "not support (it reads plain LoRA, rsLoRA and DoRA adapters on linear layers)")
    parts: dict[str, dict[str, str]] = {}  # module name -> role -> tensor name
    for key in ft_files.keys():
        body = key.removeprefix(ADAPTER_PREFIX)
        suffix = next((s for s in ADAPTER_ROLES if body.endswith("." + s)), None)
        if suffix is not None:
            parts.setdefault(body[:-len(suffix) - 1], {})[ADAPTER_ROLES[suffix]] = key
        elif not any(f".{p}" in body for p in IGNORED_ADAPTER_PARTS):
            raise FtlabError(f"{path}: adapter tensor {key} is not a LoRA A, B or DoRA magnitude; "
                             "ftlab spectrum reads plain LoRA, rsLoRA and DoRA adapters")
    dora = bool(config.get("use_dora"))
    lora, shapes = {}, {}
    order = {name: i for i, name in enumerate(base_names)}  # check in model order: the first mismatch is reported
    for module, roles in sorted(parts.items(), key=lambda item: order.get(f"{item[0]}.weight", len(order))):
        name = f"{module}.weight"

        def mismatch(what: str) -> FtlabError:
            return FtlabError(f"{path} does not match the base {base}: {name}: {what}")

        if "A" not in roles or "B" not in roles or dora != ("magnitude" in roles):
            raise mismatch(f"the adapter has {sorted(roles)} of lora_A, lora_B" + (", magnitude" if dora else ""))
        if name not in base_files:
            raise mismatch("the base has no such weight")
        if name not in base_names:
            print(f"ftlab spectrum: {path.name}: {name} is adapted but is not a block linear layer; not analysed",
                  file=sys.stderr)
            continue
        a_shape, b_shape, stored = ft_files.shape(roles["A"]), ft_files.shape(roles["B"]), base_files.shape(name)
        shape = _out_in(stored, base_names[name]) if len(stored) == 2 else stored
        if len(shape) != 2 or (b_shape[0], a_shape[1]) != shape or a_shape[0] != b_shape[1]:
            raise mismatch(f"lora_B @ lora_A is {[b_shape[0], a_shape[1]]} (rank {a_shape[0]}), "
                           f"the base weight {list(shape)}")
        if dora and ft_files.shape(roles["magnitude"]) != shape[:1]:
            raise mismatch(f"DoRA magnitude {list(ft_files.shape(roles['magnitude']))}, the base weight {list(shape)}")
        rank = a_shape[0]
        scale = _scale(config, module, rank, path)
        lora[name] = LoraModule(roles["A"], roles["B"], roles.get("magnitude"), rank, scale)
        shapes[name] = shape
    if not lora:
        raise FtlabError(f"{path}: the adapter adapts none of the base's linear layers ({base})")
    names = [n for n in base_names if n in lora]
    return Checkpoint(base, path, "dora" if dora else "lora", names, shapes, base_names, info, base_files, ft_files,
                      lora, nf4_dtype(path))


def _scale(config: dict, module: str, rank: int, path: Path) -> float:
    """PEFT's scaling of one module: alpha/r (rsLoRA: alpha/sqrt(r)), with rank_pattern and alpha_pattern."""
    from peft.utils.other import get_pattern_key

    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    r = rank_pattern.get(get_pattern_key(rank_pattern.keys(), module), config["r"])
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config["lora_alpha"])
    if r != rank:
        raise FtlabError(f"{path}: {module} has rank {rank} in its tensors but {r} in adapter_config.json")
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
