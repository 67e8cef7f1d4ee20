"""Full finetuning versus LoRA: the only place the two methods differ is which parameters train.

LoRA comes from PEFT, so its adapters are the ecosystem's standard format; which layers it adapts
(method.targets) is ftlab.architectures' table per architecture. `delta_weights()` yields the
weight change of every linear layer in fp32 for either method by one code path:

    ΔW = (W_layer - W_base) + ΔW_adapter

For full FT the adapter term is absent; for LoRA the first term is zero (or PiSSA's residual change) and the
adapter term is PEFT's own scaling·B@A (DoRA: the merged weight minus the base layer's).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from ftlab.architectures import check_rank, is_conv1d, target_modules, targeted_layers  # per architecture
from ftlab.config import RunConfig


@dataclass
class ParamCounts:
    trainable: int
    frozen: int

    def __str__(self) -> str:
        total = self.trainable + self.frozen
        return (f"trainable {self.trainable:,} ({100 * self.trainable / max(total, 1):.2f}%) | "
                f"frozen {self.frozen:,} | total {total:,}")


def apply_method(model: nn.Module, cfg: RunConfig) -> nn.Module:
    """Return the model to train: the same model with chosen parameters trainable (full) or a PeftModel."""
    m = cfg.method
    if m.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        if m.freeze_embeddings:
            for module in (model.get_input_embeddings(), model.get_output_embeddings()):
                if module is not None:
                    for p in module.parameters():
                        p.requires_grad_(False)
        return model

    from peft import LoraConfig, get_peft_model

    targets = target_modules(model, m.targets)
    check_rank(model, targets, m.rank)
    lora = LoraConfig(
        r=m.rank,
        lora_alpha=cfg.lora_alpha(),
        lora_dropout=m.dropout,
        target_modules=targets,
        # GPT-2's Conv1D stores its weight as (in, out): PEFT needs to know (it would warn and set it itself)
        fan_in_fan_out=any(is_conv1d(layer) for layer in targeted_layers(model, targets).values()),
        use_rslora=m.rslora,
        use_dora=m.dora,
        init_lora_weights={"default": True, "gaussian": "gaussian", "pissa": "pissa"}[m.init],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def count_params(model: nn.Module) -> ParamCounts:
    trainable = frozen = 0
    for p in model.parameters():  # parameters() yields tied weights once
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return ParamCounts(trainable, frozen)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, PEFT LoRA layer) for every adapted linear layer; name is the base model's module name."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield _base_name(name), module


def param_groups(model: nn.Module, cfg: RunConfig) -> list[dict]:
    """Optimizer groups: one for all trainable parameters, or LoRA+'s two (B at loraplus_ratio x the LR)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    ratio = cfg.method.loraplus_ratio
    if cfg.method.name != "lora" or ratio is None:
        return [{"params": trainable, "lr": cfg.train.lr}]
    b_ids = {id(p) for _, layer in lora_layers(model) for b in layer.lora_B.values() for p in b.parameters()}
    a_rest = [p for p in trainable if id(p) not in b_ids]
    b = [p for p in trainable if id(p) in b_ids]
    return [{"params": a_rest, "lr": cfg.train.lr}, {"params": b, "lr": cfg.train.lr * ratio}]


def _base_name(name: str) -> str:
    """Strip PEFT's wrapper prefix so names match the base checkpoint: base_model.model.X -> X."""
    prefix = "base_model.model."
    return name[len(prefix):] if name.startswith(prefix) else name


def _adapter_delta(layer: nn.Module) -> torch.Tensor:
    """ΔW of every active adapter of one PEFT LoRA layer, (out, in), fp32, exactly as PEFT would merge it."""
    base = layer.get_base_layer().weight
    total = torch.zeros(base.shape, dtype=torch.float32, device=base.device)
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        if layer.use_dora.get(adapter, False):
            merged = copy.deepcopy(layer)  # DoRA rescales columns: merge a copy, never the live layer
            merged.merge(adapter_names=[adapter])
            total += merged.get_base_layer().weight.float() - base.float()
        else:
            total += layer.get_delta_weight(adapter).float()  # scaling · B @ A
    return total


@torch.no_grad()
def delta_weights(model: nn.Module, base: Callable[[str], torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (weight name, ΔW in fp32, shape (out, in)) for every linear layer but the head, for either method.

    base(name) returns that weight of the original base model (e.g. read lazily from its safetensors), so a
    full model's worth of base weights is never held at once.
    """
    adapted = dict(lora_layers(model))
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.get_output_embeddings()
    for name, module in inner.named_modules():
        name = _base_name(name)
        if name in adapted:
            layer = adapted[name]
            weight = layer.get_base_layer().weight
            delta = weight.float() - base(f"{name}.weight").to(weight.device).float()
            yield f"{name}.weight", delta + _adapter_delta(layer)
        elif isinstance(module, nn.Linear) and module is not head and not _inside_lora(name, adapted):
            yield f"{name}.weight", module.weight.float() - base(f"{name}.weight").to(module.weight.device).float()


def _inside_lora(name: str, adapted: dict) -> bool:
    """The lora_A/lora_B/base_layer linears that live inside an adapted layer are parts of it, not layers."""
    return any(name.startswith(parent + ".") for parent in adapted)


def base_reader(model_dir: str) -> Callable[[str], torch.Tensor]:
    """base(name) -> tensor, read one tensor at a time from a model directory's safetensors files."""
    import json
    from pathlib import Path

    from safetensors import safe_open

    directory = Path(model_dir)
    index = directory / "model.safetensors.index.json"
    if index.exists():
        where = {k: directory / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    else:
        where = {}
        for f in sorted(directory.glob("*.safetensors")):
            with safe_open(f, framework="pt") as handle:
                where.update({k: f for k in handle.keys()})

    def read(name: str) -> torch.Tensor:
        if name not in where:
            raise KeyError(f"{name} is not in the base model at {model_dir}")
        with safe_open(where[name], framework="pt") as handle:
            return handle.get_tensor(name)

    return read
