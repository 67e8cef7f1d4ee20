"""What ftlab knows per architecture: the layers `method.targets` names, where the decoder blocks are, and what a
model cannot do with a run's settings, refused before the run starts.

TARGETS maps transformers' `config.model_type` to the block layers of `attn` and `mlp`, written as PEFT's
target_modules matches them: a name selects every module whose name is it or ends with "." + it. A layer name that
occurs twice in a block is qualified with its parent (GPT-2's c_proj is attn.c_proj and mlp.c_proj).

    model_type                                          attn                         mlp
    llama, mistral, qwen2, qwen3, gemma, gemma2, olmo2  q_proj k_proj v_proj o_proj  gate_proj up_proj down_proj
    phi3                                                qkv_proj o_proj              gate_up_proj down_proj
    gpt_neox                                            query_key_value dense        dense_h_to_4h dense_4h_to_h
    gpt2                                                attn.c_attn attn.c_proj      mlp.c_fc mlp.c_proj

`all` is attn + mlp: every linear layer of every block (tests/test_architectures.py checks each entry against a
model of that architecture). On a model_type not in the table, `all` is PEFT's "all-linear" (every linear layer
but the output head) and `attn`/`mlp` are refused, naming the model's block linear layers so they can be listed.

Linear layers are nn.Linear and transformers' Conv1D (GPT-2), which stores its weight as (in, out), the transpose
of nn.Linear's (out, in); PEFT adapts it with fan_in_fan_out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ftlab import loss
from ftlab.builtin import BUILTIN_PREFIX, builtin_model_dir
from ftlab.config import ModelConfig, RunConfig
from ftlab.errors import ConfigError
from ftlab.model import build_tiny, model_config


@dataclass(frozen=True)
class Targets:
    """The attention and MLP linear layers of one architecture's decoder block, as PEFT target names."""

    attn: tuple[str, ...]
    mlp: tuple[str, ...]


_LLAMA = Targets(("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj"))
TARGETS: dict[str, Targets] = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA, "gemma": _LLAMA, "gemma2": _LLAMA,
    "olmo2": _LLAMA,
    "phi3": Targets(("qkv_proj", "o_proj"), ("gate_up_proj", "down_proj")),
    "gpt_neox": Targets(("query_key_value", "dense"), ("dense_h_to_4h", "dense_4h_to_h")),
    "gpt2": Targets(("attn.c_attn", "attn.c_proj"), ("mlp.c_fc", "mlp.c_proj")),
}


def _inner(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_type(model: nn.Module) -> str:
    return getattr(_inner(model).config, "model_type", "")


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a linear layer whose weight is stored as (in, out)."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def in_out(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of an nn.Linear (bitsandbytes' 4-bit one included: its weight is stored packed) or a
    Conv1D."""
    if is_conv1d(module):
        return tuple(module.weight.shape)
    return module.in_features, module.out_features


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every nn.Linear and Conv1D but the output head, by module name, in model order (a model not yet wrapped by
    PEFT; on a wrapped one LoRA's own A and B layers would be listed too)."""
    head = model.get_output_embeddings()
    return {name: m for name, m in model.named_modules()
            if (isinstance(m, nn.Linear) or is_conv1d(m)) and m is not head}


def matches(name: str, target: str) -> bool:
    """PEFT's rule for a target_modules list entry: the module's name is it or ends with "." + it."""
    return name == target or name.endswith("." + target)


def module_label(kind: str, name: str) -> str:
    """The name method.targets uses for the layer `name` (a module name) of a `kind` model: the table's entry it
    matches (q_proj, attn.c_proj), else its last component."""
    table = TARGETS.get(kind)
    found = [t for t in (table.attn + table.mlp if table else ()) if matches(name, t)]
    return found[0] if found else name.rsplit(".", 1)[-1]


def block_names(names) -> list[str]:
    """The distinct names of layers within a block (the part after the block index), sorted: attn.c_proj, ..."""
    return sorted({re.sub(r"^.*?\.\d+\.", "", name) for name in names})


def target_modules(model: nn.Module, targets: str | list[str]) -> list[str] | str:
    """method.targets -> PEFT's target_modules: the table's names for all/attn/mlp, or the list given; every name
    must match a linear layer of the model."""
    layers = linear_layers(model)
    if isinstance(targets, list):
        names = list(targets)
    else:
        kind = model_type(model)
        table = TARGETS.get(kind)
        if table is None:
            if targets == "all":
                return "all-linear"  # PEFT: every linear layer but the output head
            raise ConfigError(f"method.targets: {targets!r} is defined per architecture, and {kind or 'this model'} "
                              f"is not in ftlab's table (src/ftlab/architectures.py); list the module names instead, "
                              f"from its block linear layers: {block_names(layers)}")
        names = list({"attn": table.attn, "mlp": table.mlp, "all": table.attn + table.mlp}[targets])
    missing = [t for t in names if not any(matches(name, t) for name in layers)]
    if missing:
        raise ConfigError(f"method.targets: {missing} match no linear layer of this model; its block linear layers: "
                          f"{block_names(layers)}")
    return names


def targeted_layers(model: nn.Module, targets: list[str] | str) -> dict[str, nn.Module]:
    """The linear layers PEFT adapts for target_modules (a list of names, or "all-linear"), by module name."""
    return {name: m for name, m in linear_layers(model).items()
            if targets == "all-linear" or any(matches(name, t) for t in targets)}


def check_rank(model: nn.Module, targets: list[str] | str, rank: int) -> None:
    """A LoRA rank larger than min(in, out) of a target layer is impossible."""
    for name, m in targeted_layers(model, targets).items():
        limit = min(in_out(m))
        if rank > limit:
            raise ConfigError(f"method.rank: {rank} is larger than {name} allows (min(in, out) = {limit})")


def decoder_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The model's list of decoder blocks: the one nn.ModuleList whose items are all of the classes transformers
    names in `_no_split_modules` (the units it never splits across devices). None when there is not exactly one
    (an architecture without `_no_split_modules`, or several such lists)."""
    inner = _inner(model)
    units = set(getattr(inner, "_no_split_modules", None) or ())
    found = [m for m in inner.modules()
             if isinstance(m, nn.ModuleList) and len(m) > 0 and all(type(b).__name__ in units for b in m)]
    return found[0] if len(found) == 1 else None


def preflight(cfg: RunConfig, sharded: bool = False) -> None:
    """Refuse, with a ConfigError naming the key, what this model's architecture cannot do with cfg: targets and
    rank (LoRA), the chunked loss, torch.compile per block, FSDP sharding (sharded=True: under torchrun).

    Reads the model's config.json only and builds its structure on the meta device: no weights, no memory."""
    model = structure(cfg.model)
    positions = max_positions(model.config)
    if positions is not None and cfg.data.seq_len > positions:
        raise ConfigError(f"data.seq_len: {cfg.data.seq_len} tokens, but this model has {positions} positions "
                          f"({type(model.config).__name__}'s max_position_embeddings); set data.seq_len <= {positions}")
    if cfg.method.adapter:
        check_rank(model, target_modules(model, cfg.method.targets), cfg.method.rank)
    if cfg.train.loss == "chunked":
        reason = loss.unsupported(model)
        if reason is not None:
            raise ConfigError(f"train.loss: chunked needs logits = lm_head(last hidden state), but {reason}; "
                              "use train.loss=full (or auto)")
    if decoder_blocks(model) is None:
        why = (f"no single list of decoder blocks was found in {type(model).__name__} (an nn.ModuleList of its "
               f"_no_split_modules: {sorted(getattr(model, '_no_split_modules', None) or [])})")
        if cfg.train.compile:
            raise ConfigError(f"train.compile: ftlab compiles each decoder block, but {why}; set train.compile=false")
        if sharded:
            raise ConfigError(f"--nproc: FSDP shards each decoder block, but {why}; train on one process")


def max_positions(config) -> int | None:
    """How many positions the model was built for (max_position_embeddings; GPT-2's n_positions), if it says."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def structure(cfg: ModelConfig) -> nn.Module:
    """The model `cfg` names, built on the meta device from its config alone (the tiny model: from model.tiny,
    with the byte tokenizer's vocabulary; no check depends on the vocabulary)."""
    from transformers import AutoModelForCausalLM

    if cfg.name == "tiny":
        with torch.device("meta"):
            return build_tiny(cfg.tiny)[0]
    name = str(builtin_model_dir(cfg.name)) if cfg.name.startswith(BUILTIN_PREFIX) else cfg.name
    config = model_config(name, cfg)
    with torch.device("meta"):  # shapes and names only: no memory, no initialisation
        return AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
